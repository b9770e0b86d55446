"""Fixtures for core tests: a small synthetic layout of known geometry, the real ICT layout
(skipped while its file is missing), and position maps of the ICT neutral at known poses.

Synthetic layout (R = 64): an "ICT" mesh of 16 x 16 vertices on the texel grid (x, y in
2, 6, ..., 62), kept where a quad lies inside an ellipse; its vertices sit on an ellipsoid
(semi-axes 8 x 8.5 x 5 cm, ICT axes: +Y up, +Z towards the viewer, 0.25 cm per texel). Two
eye slits one texel tall are cut out of the face, and the neck (rows >= 56) out of the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from prn_blender.core.geometry import position_map_from_mesh
from prn_blender.core.layout import UVLayout, load_layout
from prn_blender.core.pose import rotation_from_angles
from prn_blender.errors import LayoutError

SYNTH_R = 64
SYNTH_STEP = 4  # texels between synthetic "ICT" vertices
SYNTH_CM_PER_TEXEL = 0.25
SYNTH_SEMI_AXES_CM = (8.0, 8.5, 5.0)
SYNTH_EYE_ROW = 24
SYNTH_EYE_COLS = ((16, 27), (37, 48))
SYNTH_NECK_ROW = 56


def grid_triangles(mask: np.ndarray, texel_index: np.ndarray) -> np.ndarray:
    """Two triangles per 2x2 block of mask texels, the layout's winding (p00, p10, p01),
    (p01, p10, p11) with p10 one row down (outward in the Blender frame)."""
    full = mask[:-1, :-1] & mask[:-1, 1:] & mask[1:, :-1] & mask[1:, 1:]
    rows, cols = np.nonzero(full)
    p00, p01 = texel_index[rows, cols], texel_index[rows, cols + 1]
    p10, p11 = texel_index[rows + 1, cols], texel_index[rows + 1, cols + 1]
    tri = np.stack([np.stack([p00, p10, p01], 1), np.stack([p01, p10, p11], 1)], 1)
    return tri.reshape(-1, 3).astype(np.int32)


def ellipsoid_z_cm(x_cm: np.ndarray, y_cm: np.ndarray) -> np.ndarray:
    a, b, c = SYNTH_SEMI_AXES_CM
    return c * np.sqrt(np.clip(1.0 - (x_cm / a) ** 2 - (y_cm / b) ** 2, 0.0, None))


def build_synthetic_layout() -> UVLayout:
    r, step = SYNTH_R, SYNTH_STEP
    n = (r - 4) // step + 1  # 16 vertices per side, texel coordinates 2 .. 62
    gy, gx = np.mgrid[0:n, 0:n]
    vert_texels = np.stack([2.0 + step * gx, 2.0 + step * gy], -1).reshape(-1, 2)
    vid = np.arange(n * n).reshape(n, n)  # [j (row), i (col)]
    # Quads kept where all four corners are inside the face ellipse.
    inside_v = (((vert_texels[:, 0] - 32) / 29) ** 2 + ((vert_texels[:, 1] - 32) / 30) ** 2) < 1
    inside_v = inside_v.reshape(n, n)
    keep_q = inside_v[:-1, :-1] & inside_v[:-1, 1:] & inside_v[1:, :-1] & inside_v[1:, 1:]
    qj, qi = np.nonzero(keep_q)
    p00, p01 = vid[qj, qi], vid[qj, qi + 1]
    p10, p11 = vid[qj + 1, qi], vid[qj + 1, qi + 1]
    tris_all = np.stack([np.stack([p00, p10, p01], 1), np.stack([p01, p10, p11], 1)], 1)
    tris_all = tris_all.reshape(-1, 3)
    quad_index = np.full((n - 1, n - 1), -1, dtype=np.int64)
    quad_index[qj, qi] = np.arange(len(qj))

    # Texel-centre rasterisation of the regular grid, analytically.
    ty, tx = np.mgrid[0:r, 0:r].astype(np.float64)
    ci = np.clip(np.floor((tx - 2) / step), 0, n - 2).astype(int)
    cj = np.clip(np.floor((ty - 2) / step), 0, n - 2).astype(int)
    fx, fy = (tx - 2) / step - ci, (ty - 2) / step - cj
    in_grid = (fx >= 0) & (fx <= 1) & (fy >= 0) & (fy <= 1)
    quad = np.where(in_grid, quad_index[cj, ci], -1)
    upper = fx + fy <= 1  # triangle (p00, p10, p01)
    texel_triangle = np.where(quad >= 0, 2 * quad + np.where(upper, 0, 1), -1)
    bary = np.where(
        upper[..., None],
        np.stack([1 - fx - fy, fy, fx], -1),
        np.stack([1 - fy, 1 - fx, fx + fy - 1], -1),
    )
    eye = np.zeros((r, r), dtype=bool)
    for c0, c1 in SYNTH_EYE_COLS:
        eye[SYNTH_EYE_ROW, c0:c1] = True
    texel_triangle[eye] = -1
    face_mask = texel_triangle >= 0
    bary = np.where(face_mask[..., None], bary, 0.0)

    kept, ict_triangles = np.unique(tris_all, return_inverse=True)
    ict_triangles = ict_triangles.reshape(-1, 3).astype(np.int32)
    x_cm = (vert_texels[kept, 0] - 32) * SYNTH_CM_PER_TEXEL
    y_cm = -(vert_texels[kept, 1] - 32) * SYNTH_CM_PER_TEXEL
    ict_neutral = np.stack([x_cm, y_cm, ellipsoid_z_cm(x_cm, y_cm)], 1)

    mesh_mask = face_mask.copy()
    mesh_mask[SYNTH_NECK_ROW:] = False
    face_texels = np.flatnonzero(mesh_mask.reshape(-1)).astype(np.int64)
    texel_index = np.full((r, r), -1, dtype=np.int64)
    texel_index.reshape(-1)[face_texels] = np.arange(len(face_texels))
    triangles = grid_triangles(mesh_mask, texel_index)

    flat_tri = texel_triangle.reshape(-1)[face_texels]
    flat_bary = bary.reshape(-1, 3)[face_texels]
    neutral_at_texels = (ict_neutral[ict_triangles[flat_tri]] * flat_bary[:, :, None]).sum(1)
    canonical = neutral_at_texels * np.array([1.0, -1.0, 1.0])

    rng = np.random.default_rng(0)
    mesh_rows, mesh_cols = np.divmod(face_texels, r)
    interior = (mesh_rows > 8) & (mesh_rows < 50) & (mesh_cols > 8) & (mesh_cols < 56)
    picks = rng.choice(np.flatnonzero(interior), 68, replace=False)
    offsets = rng.uniform(0.0, 0.9, (68, 2))
    landmark_texels = np.stack([mesh_cols[picks], mesh_rows[picks]], 1) + offsets
    kept_texels = vert_texels[kept]
    central = np.flatnonzero(np.hypot(kept_texels[:, 0] - 32, kept_texels[:, 1] - 32) < 20)
    ict_lm = np.sort(rng.choice(central, 68, replace=False))

    weight = np.where(face_mask, 3.0, 0.0)
    weight[~mesh_mask] = 0.0
    arrays = {
        "face_mask": face_mask,
        "mesh_mask": mesh_mask,
        "face_texels": face_texels,
        "triangles": triangles,
        "weight_mask": weight.astype(np.float32),
        "landmark_texels": landmark_texels.astype(np.float32),
        "ict_landmark_texels": kept_texels[ict_lm].astype(np.float32),
        "ict_landmark_vertices": kept[ict_lm].astype(np.int32),
        "canonical_vertices": canonical.astype(np.float32),
        "ict_vertex_ids": kept.astype(np.int32),
        "ict_vertex_texels": kept_texels.astype(np.float32),
        "ict_triangles": ict_triangles,
        "ict_neutral": ict_neutral.astype(np.float32),
        "texel_triangle": texel_triangle.astype(np.int32),
        "texel_barycentric": bary.astype(np.float32),
    }
    for value in arrays.values():
        value.setflags(write=False)
    return UVLayout(layout_id="synthetic-ellipsoid-64", resolution=r, **arrays)


@pytest.fixture(scope="session")
def synthetic_layout() -> UVLayout:
    return build_synthetic_layout()


@pytest.fixture(scope="session")
def ict_layout() -> UVLayout:
    try:
        return load_layout()
    except LayoutError as error:
        pytest.skip(f"ICT layout not available: {error}")


@pytest.fixture(scope="session", params=["synthetic", "ict"])
def any_layout(request: pytest.FixtureRequest) -> UVLayout:
    """Each layout-generic test runs on both layouts."""
    if request.param == "synthetic":
        return request.getfixturevalue("synthetic_layout")
    return request.getfixturevalue("ict_layout")


@dataclass(frozen=True)
class PosedFace:
    """The layout's ICT neutral moved into a photo by a known similarity."""

    position_map: np.ndarray
    """(R, R, 3) float32 photo px, NaN outside the face mask."""
    ict_vertices_px: np.ndarray
    """(K, 3) the kept ICT vertices in photo px."""
    rotation: np.ndarray
    scale_px_per_cm: float
    translation_px: np.ndarray


def pose_ict_neutral(
    layout: UVLayout, yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0,
    scale_px_per_cm: float = 12.0, translation_px: tuple[float, float, float] = (320, 240, 200),
) -> PosedFace:
    """ICT neutral (cm, Y up) -> position-map axes (x, -y, z) -> s R p + t -> rasterised."""
    canonical_cm = layout.ict_neutral.astype(np.float64) * np.array([1.0, -1.0, 1.0])
    rotation = rotation_from_angles(yaw_deg, pitch_deg, roll_deg)
    t = np.asarray(translation_px, dtype=np.float64)
    vertices_px = scale_px_per_cm * canonical_cm @ rotation.T + t
    return PosedFace(
        position_map_from_mesh(vertices_px, layout), vertices_px, rotation, scale_px_per_cm, t
    )
