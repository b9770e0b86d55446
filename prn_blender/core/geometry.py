"""Position map -> mesh, landmarks and resampling. numpy only (the Blender side imports it).

A position map is (R, R, 3) float32: for each texel, the (x, y, z) of that surface point in
photo (or crop) pixels, x right, y down, z towards the camera. See core.layout for texel
coordinates (x = col, y = row, centres at integers).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .frames import texel_to_uv
from .layout import UVLayout


def position_map_to_vertices(position_map: np.ndarray, layout: UVLayout) -> np.ndarray:
    """One vertex per mesh texel (`layout.face_texels`: flat indices into the R x R grid).

    position_map: (R, R, 3) float32, x right, y down, z towards the camera, photo pixels.
    Returns (N, 3) float32 in the same frame."""
    return np.ascontiguousarray(position_map.reshape(-1, 3)[layout.face_texels], dtype=np.float32)


def mesh_uvs(layout: UVLayout) -> np.ndarray:
    """(N, 2) float32 UV of each mesh vertex (v up)."""
    r = layout.resolution
    rows, cols = np.divmod(layout.face_texels, r)
    return texel_to_uv(np.stack([cols, rows], axis=1), r)


def bilinear_sample(
    grid: np.ndarray, texels_xy: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Bilinear read of an (R, R, C) grid at (M, 2) continuous texel positions (x, y).

    With `mask`, the four weights are renormalised over in-mask texels only: eye and inner-lip
    landmarks sit next to UV holes whose texels hold no face (DESIGN.md section 8)."""
    r_h, r_w = grid.shape[:2]
    xy = np.asarray(texels_xy, dtype=np.float64)
    x0 = np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, r_w - 2)
    y0 = np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, r_h - 2)
    fx = np.clip(xy[:, 0] - x0, 0.0, 1.0)
    fy = np.clip(xy[:, 1] - y0, 0.0, 1.0)
    ys = np.stack([y0, y0, y0 + 1, y0 + 1], axis=1)
    xs = np.stack([x0, x0 + 1, x0, x0 + 1], axis=1)
    w = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=1)
    if mask is not None:
        w = w * mask[ys, xs]
        total = w.sum(axis=1, keepdims=True)
        w = np.where(total > 0, w / np.where(total > 0, total, 1.0), 0.25)
    values = grid[ys, xs].astype(np.float64)  # (M, 4, C)
    # Out-of-mask texels may hold NaN (targets): they carry zero weight, so drop them.
    values = np.where(w[:, :, None] > 0, values, 0.0)
    return (values * w[:, :, None]).sum(axis=1).astype(np.float32)


def landmarks_from_position_map(
    position_map: np.ndarray, layout: UVLayout,
    which: Literal["calibrated", "ict"] = "calibrated",
) -> np.ndarray:
    """(68, 3) landmarks read from the position map (iBUG order). "calibrated" = the
    benchmark-compatible set the product reports; "ict" = ICT's own 68 vertices."""
    texels = layout.landmark_texels if which == "calibrated" else layout.ict_landmark_texels
    return bilinear_sample(position_map, texels, layout.face_mask)


def ict_vertices_from_position_map(position_map: np.ndarray, layout: UVLayout) -> np.ndarray:
    """(K, 3) positions of the kept ICT vertices (ICT topology output for artists)."""
    return bilinear_sample(position_map, layout.ict_vertex_texels, layout.face_mask)


def position_map_from_mesh(mesh_vertices: np.ndarray, layout: UVLayout) -> np.ndarray:
    """Rasterise an ICT-topology mesh (K kept vertices, (K, 3), any frame) into the layout:
    per face texel, the barycentric blend of its ICT triangle's corners. NaN outside."""
    r = layout.resolution
    tri = layout.texel_triangle.reshape(-1)
    inside = tri >= 0
    corners = layout.ict_triangles[tri[inside]]
    bary = layout.texel_barycentric.reshape(-1, 3)[inside].astype(np.float64)
    values = (np.asarray(mesh_vertices, np.float64)[corners] * bary[:, :, None]).sum(axis=1)
    out = np.full((r * r, 3), np.nan, dtype=np.float32)
    out[inside] = values
    return out.reshape(r, r, 3)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(N, 3) unit area-weighted vertex normals, in the frame of `vertices`."""
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(triangles)
    face_n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    normals = np.zeros_like(v)
    for k in range(3):
        np.add.at(normals, t[:, k], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return (normals / np.where(length > 0, length, 1.0)).astype(np.float32)
