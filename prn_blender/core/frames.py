"""Coordinate frames and their conversions: each convention has exactly one home here.

Frames:
* photo: x right, y down (image rows), z = depth towards the camera; pixels.
* crop: the same axes in the 256 x 256 network crop; crop pixels.
* uv: u right, v up, in [0, 1]; texel (row, col) has its centre at
  u = (col + 0.5) / R, v = 1 - (row + 0.5) / R (the face is upright in the map).
* blender: Z up, the face looks along -Y, metres. photo x -> X, photo y (down) -> -Z,
  depth (towards the camera) -> -Y. Note this map is a reflection (det -1): the photo
  frame is left-handed, so triangle winding must be defined in the Blender frame.
"""

from __future__ import annotations

import numpy as np

# Assumed adult face: outer eye corners (landmarks 36 and 45) 9.0 cm apart (DESIGN.md section 3).
OUTER_EYE_DISTANCE_M = 0.09


def texel_to_uv(texels_xy: np.ndarray, resolution: int) -> np.ndarray:
    """(N, 2) continuous texel coordinates (x = col, y = row; centres at integers) -> (N, 2) UV."""
    texels_xy = np.asarray(texels_xy, dtype=np.float64)
    u = (texels_xy[..., 0] + 0.5) / resolution
    v = 1.0 - (texels_xy[..., 1] + 0.5) / resolution
    return np.stack([u, v], axis=-1).astype(np.float32)


def uv_to_texel(uv: np.ndarray, resolution: int, dtype: type = np.float32) -> np.ndarray:
    """Inverse of `texel_to_uv`: (..., 2) UV -> (..., 2) continuous texel coordinates (x, y),
    computed in float64 and returned as `dtype` (float64 where rasterising needs it)."""
    uv = np.asarray(uv, dtype=np.float64)
    x = uv[..., 0] * resolution - 0.5
    y = (1.0 - uv[..., 1]) * resolution - 0.5
    return np.stack([x, y], axis=-1).astype(dtype, copy=False)


def photo_to_blender(points_px: np.ndarray, metres_per_px: float) -> np.ndarray:
    """(N, 3) photo-frame points (x right, y down, z towards camera; px) -> Blender (m, Z up).

    X = x * s, Y = -z * s, Z = -y * s, with s = metres_per_px. No origin shift."""
    p = np.asarray(points_px, dtype=np.float64)
    out = np.empty(p.shape, dtype=np.float64)
    out[..., 0] = p[..., 0]
    out[..., 1] = -p[..., 2]
    out[..., 2] = -p[..., 1]
    return (out * metres_per_px).astype(np.float32)


def blender_to_photo(points_m: np.ndarray, metres_per_px: float) -> np.ndarray:
    """Inverse of `photo_to_blender`."""
    p = np.asarray(points_m, dtype=np.float64) / metres_per_px
    out = np.empty(p.shape, dtype=np.float64)
    out[..., 0] = p[..., 0]
    out[..., 1] = -p[..., 2]
    out[..., 2] = -p[..., 1]
    return out.astype(np.float32)


def metres_per_pixel(landmarks_px: np.ndarray) -> float:
    """Scale that puts the outer eye corners (36, 45) `OUTER_EYE_DISTANCE_M` apart (3D distance)."""
    lm = np.asarray(landmarks_px, dtype=np.float64)
    eye_distance_px = float(np.linalg.norm(lm[45] - lm[36]))
    if not np.isfinite(eye_distance_px) or eye_distance_px <= 0:
        raise ValueError(f"outer eye corners coincide (distance {eye_distance_px} px)")
    return OUTER_EYE_DISTANCE_M / eye_distance_px
