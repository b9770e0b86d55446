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
    """Bilinear read of an (R, R, C) grid at (M, 2) continuous texel positions (x, y); texel
    centres at integers. Returns (M, C) float32.

    With `mask` ((R, R) bool), only in-mask texels are read (DESIGN.md section 8: eye and
    inner-lip landmarks sit next to UV holes whose texels hold no face, or NaN):
    * one of the four texels outside: it is replaced by its parallelogram extrapolation from
      the other three (v_missing = v_side1 + v_side2 - v_opposite), so linear fields are
      still read exactly (plain renormalisation would be off by up to 0.3 texel there);
    * two or three outside: the weights are renormalised over the in-mask texels;
    * all four outside: the plain bilinear read (NaN if the grid holds NaN there)."""
    r_h, r_w = grid.shape[:2]
    xy = np.asarray(texels_xy, dtype=np.float64)
    x0 = np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, r_w - 2)
    y0 = np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, r_h - 2)
    fx = np.clip(xy[:, 0] - x0, 0.0, 1.0)
    fy = np.clip(xy[:, 1] - y0, 0.0, 1.0)
    # Corners 0..3 = (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1).
    ys = np.stack([y0, y0, y0 + 1, y0 + 1], axis=1)
    xs = np.stack([x0, x0 + 1, x0, x0 + 1], axis=1)
    w = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=1)
    use = np.ones_like(w, dtype=bool)
    if mask is not None:
        use = np.asarray(mask, dtype=bool)[ys, xs]
        n_in = use.sum(axis=1)
        one_out = n_in == 3
        if one_out.any():
            missing = np.argmax(~use[one_out], axis=1)
            w_missing = w[one_out, missing]
            rows = np.flatnonzero(one_out)
            w[rows[:, None], _SIDES[missing]] += w_missing[:, None]
            w[rows, 3 - missing] -= w_missing  # the diagonally opposite corner
            w[rows, missing] = 0.0
        renorm = (n_in == 1) | (n_in == 2)
        w_r = w[renorm] * use[renorm]
        total = w_r.sum(axis=1, keepdims=True)
        equal = use[renorm] / use[renorm].sum(axis=1, keepdims=True)  # on a zero-weight edge
        w[renorm] = np.where(total > 0, w_r / np.where(total > 0, total, 1.0), equal)
        use[n_in == 0] = True
    values = grid[ys, xs].astype(np.float64)  # (M, 4, C)
    # Out-of-mask texels may hold NaN (targets): they carry zero weight, so drop them.
    values = np.where(use[:, :, None], values, 0.0)
    return (values * w[:, :, None]).sum(axis=1).astype(np.float32)


_SIDES = np.array([[1, 2], [0, 3], [0, 3], [1, 2]])
"""The two corners sharing an edge with each corner of a 2x2 block (0 = top left)."""


def smooth_position_map(
    position_map: np.ndarray, mask: np.ndarray, sigma_texels: float,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """Gaussian smoothing of a position map over the finite texels in `mask` only (normalised
    by the smoothed mask, so holes and NaN never leak in). Linear, so it commutes with the
    crop -> photo mapping. Texels outside `mask` (or not finite) are returned unchanged.

    Near the mask's border the average is one-sided, which pulls a sloped surface inwards
    (about half a texel at sigma 1). With `base` ((R, R, C), a smooth surface close to the
    map, e.g. the posed mean face) only `position_map - base` is smoothed, whose slope is
    small, so the border stays in place.

    position_map: (R, R, C) float; mask: (R, R) bool; sigma_texels <= 0 returns a copy."""
    pm = np.asarray(position_map, dtype=np.float32)
    if sigma_texels <= 0:
        return pm.copy()
    offset = np.zeros_like(pm) if base is None else np.asarray(base, dtype=np.float32)
    inside = (np.asarray(mask, dtype=bool) & np.isfinite(pm).all(axis=-1)
              & np.isfinite(offset).all(axis=-1))
    radius = max(1, int(np.ceil(3.0 * sigma_texels)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma_texels) ** 2).astype(np.float32)
    weight = inside.astype(np.float32)
    values = np.where(inside[..., None], pm - offset, 0.0).astype(np.float32)

    def blur(a: np.ndarray) -> np.ndarray:  # separable, zero padding, axes 0 then 1
        for axis in (0, 1):
            pad = [(0, 0)] * a.ndim
            pad[axis] = (radius, radius)
            padded = np.pad(a, pad)
            n = a.shape[axis]
            a = sum(k * np.take(padded, np.arange(i, i + n), axis=axis)
                    for i, k in enumerate(kernel))
        return a

    num = blur(values)
    den = blur(weight)
    out = pm.copy()
    out[inside] = num[inside] / den[inside][:, None] + offset[inside]
    return out


def displace_position_map(
    position_map: np.ndarray, control_texels: np.ndarray, offsets: np.ndarray,
    sigma_texels: float, ridge: float = 0.05,
) -> np.ndarray:
    """Add a smooth displacement field that moves the map by `offsets` at `control_texels`.

    The field is a Gaussian radial-basis interpolant over UV (texel) space: weights solve
    (K + ridge I) w = offsets with K_ij = exp(-|t_i - t_j|^2 / 2 sigma^2), so the field is
    close to `offsets` at the controls (exact for ridge 0), smooth between them, and fades to
    zero a few sigma away. Used to pull fitted training targets onto hand labels: the fit's
    landmarks are limited by the face model; the labels are the reference the dev NME uses.

    position_map: (R, R, C) float, any frame; control_texels: (K, 2) texel (x = column,
    y = row; centres at integers); offsets: (K, D) with D <= C, in the map's units, added to
    the first D channels. NaN texels stay NaN. K = 0 returns a copy."""
    pm = np.array(position_map, dtype=np.float32)
    controls = np.asarray(control_texels, dtype=np.float64).reshape(-1, 2)
    if len(controls) == 0:
        return pm
    offsets = np.asarray(offsets, dtype=np.float64).reshape(len(controls), -1)
    inv = -0.5 / sigma_texels**2
    gram = np.exp(inv * ((controls[:, None] - controls[None]) ** 2).sum(-1))
    weights = np.linalg.solve(gram + ridge * np.eye(len(controls)), offsets)
    rows, cols = np.nonzero(np.isfinite(pm).all(axis=-1))
    texels = np.stack([cols, rows], axis=1).astype(np.float64)
    squared = ((texels**2).sum(1)[:, None] + (controls**2).sum(1)[None]
               - 2.0 * texels @ controls.T)
    basis = np.exp(inv * np.maximum(squared, 0.0))
    pm[rows, cols, : offsets.shape[1]] += (basis @ weights).astype(np.float32)
    return pm


def surface_roughness(position_map: np.ndarray, mask: np.ndarray) -> float:
    """Mean |second difference| between neighbouring texels (along u and along v, over x, y
    and z) of a position map, in its units, over runs of three finite texels inside `mask`.
    A smooth face's map is about 0.1-0.2 px at 256 px per crop; texel ripples (the network's
    checkerboard) raise it. For evaluation and benchmarks."""
    pm = np.asarray(position_map, dtype=np.float64)
    ok = np.asarray(mask, dtype=bool) & np.isfinite(pm).all(axis=-1)
    total, count = 0.0, 0
    for axis in (0, 1):
        n = pm.shape[axis]
        a, b, c = (np.take(pm, np.arange(i, n - 2 + i), axis=axis) for i in range(3))
        valid = (np.take(ok, np.arange(0, n - 2), axis=axis)
                 & np.take(ok, np.arange(1, n - 1), axis=axis)
                 & np.take(ok, np.arange(2, n), axis=axis))
        total += float(np.abs(a - 2 * b + c)[valid].sum())
        count += int(valid.sum()) * pm.shape[-1]
    return total / max(count, 1)


def landmarks_from_position_map(
    position_map: np.ndarray, layout: UVLayout,
    which: Literal["calibrated", "ict"] = "calibrated",
    texels: np.ndarray | None = None,
) -> np.ndarray:
    """(68, 3) landmarks read from the position map (iBUG order). "calibrated" = the
    benchmark-compatible set the product reports; "ict" = ICT's own 68 vertices; `texels`
    (68, 2), when given, overrides both (a weights file's fitted readout,
    `WeightsInfo.landmark_texels`)."""
    if texels is None:
        texels = layout.landmark_texels if which == "calibrated" else layout.ict_landmark_texels
    return bilinear_sample(position_map, texels, layout.face_mask)


def ict_vertices_from_position_map(position_map: np.ndarray, layout: UVLayout) -> np.ndarray:
    """(K, 3) positions of the kept ICT vertices (ICT topology output for artists)."""
    return bilinear_sample(position_map, layout.ict_vertex_texels, layout.face_mask)


def position_map_from_mesh(mesh_vertices: np.ndarray, layout: UVLayout) -> np.ndarray:
    """Rasterise an ICT-topology mesh into the layout: a gather plus a weighted sum.

    mesh_vertices: (K, 3) positions of the kept ICT vertices (`layout.ict_vertex_ids` order,
    so a full ICT mesh is restricted with `full[layout.ict_vertex_ids]`), any frame.
    Returns (R, R, 3) float32: per `face_mask` texel, the barycentric blend
    (`texel_barycentric`) of its ICT triangle's (`texel_triangle`, `ict_triangles`) corners;
    NaN outside the face mask. Linear functions of the vertices are reproduced exactly."""
    r = layout.resolution
    tri = layout.texel_triangle.reshape(-1)
    inside = tri >= 0
    corners = layout.ict_triangles[tri[inside]]
    bary = layout.texel_barycentric.reshape(-1, 3)[inside].astype(np.float64)
    values = (np.asarray(mesh_vertices, np.float64)[corners] * bary[:, :, None]).sum(axis=1)
    out = np.full((r * r, 3), np.nan, dtype=np.float32)
    out[inside] = values
    return out.reshape(r, r, 3)


def decimate_triangles(layout: UVLayout, stride: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A coarser grid mesh: every `stride`-th texel in rows and columns (texels whose row and
    column are multiples of `stride`), two triangles per coarse quad.

    A coarse quad is kept only where its whole (stride + 1) x (stride + 1) block of texels is
    in `layout.mesh_mask`, so holes one texel tall (the eyes) stay open (DESIGN.md section 3);
    the price is a border up to stride - 1 texels narrower than the full mesh.
    Winding as `layout.triangles` (outward in the Blender frame).

    Returns (vertex_indices (M,) int64 indices into the full mesh's vertices, ascending;
    triangles (T, 3) int32 indices into vertex_indices). stride = 1 gives the full mesh."""
    if stride < 1:
        raise ValueError(f"stride must be a positive number of texels, got {stride}")
    r = layout.resolution
    mask = np.asarray(layout.mesh_mask, dtype=bool)
    # Integral image: number of mask texels in every (stride + 1)^2 block, by top-left corner.
    integral = np.zeros((r + 1, r + 1), dtype=np.int64)
    integral[1:, 1:] = mask.cumsum(axis=0).cumsum(axis=1)
    n = r - stride  # top-left corners whose block fits in the grid
    block = stride + 1
    counts = (integral[block:, block:] - integral[:n, block:] - integral[block:, :n]
              + integral[:n, :n])
    full = counts == block * block
    rows, cols = np.nonzero(full[::stride, ::stride])
    rows, cols = rows * stride, cols * stride
    texel_index = np.full(r * r, -1, dtype=np.int64)
    texel_index[layout.face_texels] = np.arange(layout.face_texels.shape[0])
    texel_index = texel_index.reshape(r, r)
    p00 = texel_index[rows, cols]
    p01 = texel_index[rows, cols + stride]
    p10 = texel_index[rows + stride, cols]
    p11 = texel_index[rows + stride, cols + stride]
    full_tris = np.stack([np.stack([p00, p10, p01], 1), np.stack([p01, p10, p11], 1)], 1)
    full_tris = full_tris.reshape(-1, 3)
    vertex_indices, compact = np.unique(full_tris, return_inverse=True)
    return vertex_indices.astype(np.int64), compact.reshape(-1, 3).astype(np.int32)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(N, 3) float32 unit area-weighted vertex normals, in the frame of `vertices`.

    The direction follows the winding: layout triangles give outward normals in the Blender
    frame, hence *inward* ones for photo-frame vertices (that map is a reflection). Vertices
    in no triangle get a zero normal."""
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(triangles, dtype=np.int64)
    face_n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])  # |n| = 2 x area
    idx = t.reshape(-1)
    weights = np.repeat(face_n, 3, axis=0)
    normals = np.stack(
        [np.bincount(idx, weights=weights[:, k], minlength=v.shape[0]) for k in range(3)], 1
    )
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return (normals / np.where(length > 0, length, 1.0)).astype(np.float32)
