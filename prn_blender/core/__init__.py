"""Blender-free, torch-free core: numpy (+ OpenCV where noted).

In: position maps (R x R x 3, photo or crop pixels) and photos (HWC uint8 RGB).
Out: UV layout, meshes, landmarks, pose, textures, crops, exported files.
`layout`, `frames` and `geometry` need numpy only (the Blender side imports them);
`crop`, `texture`, `export` and `render` may use OpenCV.
"""
