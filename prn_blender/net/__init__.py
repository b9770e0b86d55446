"""PyTorch layer: the PRN network (Feng et al., ECCV 2018), weights I/O, device choice.

In: (N, 3, 256, 256) RGB crops in [0, 1]. Out: (N, 3, 256, 256) position maps in crop pixels
(x right, y down, z towards the camera). Imports torch and `core` (for data-file lookup), never
bpy; `tf_index` needs only the standard library and numpy. Submodules are imported explicitly
(`from prn_blender.net.prnet import PRNet`) so that importing this package stays cheap.
"""
