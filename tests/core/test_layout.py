"""The committed ICT UV layout (model_weights/uv_layout_ict256.npz): counts, mesh, winding,
landmarks, weight mask, raster table, and byte-for-byte regeneration from ../shared."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from prn_blender.core.frames import photo_to_blender
from prn_blender.core.layout import UVLayout, load_layout
from tests.conftest import SHARED, SHARED_DATA, needs_shared

R = 256
INNER_UPPER_LIP, INNER_LOWER_LIP = [61, 62, 63], [65, 66, 67]
ICT_TO_PM = np.array([1.0, -1.0, 1.0])  # ICT (+Y up) -> position-map axes (y down)


@pytest.fixture(scope="module")
def layout() -> UVLayout:
    return load_layout()


def position_map(layout: UVLayout, per_vertex: np.ndarray) -> np.ndarray:
    """(R, R, C) map holding `per_vertex` (N, C) at the mesh texels, NaN elsewhere."""
    pm = np.full((R * R, per_vertex.shape[1]), np.nan)
    pm[layout.face_texels] = per_vertex
    return pm.reshape(R, R, -1)


def bilinear_in_mask(pm: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear read at continuous texel coords (x = col, y = row), renormalised over the
    non-NaN texels of the 2x2 neighbourhood (DESIGN.md section 8: landmarks next to holes)."""
    x0, y0 = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
    fx, fy = xy[:, 0] - x0, xy[:, 1] - y0
    total = np.zeros((len(xy), pm.shape[2]))
    weight_sum = np.zeros((len(xy), 1))
    for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)),
                      (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        value = pm[y0 + dy, x0 + dx]
        valid = ~np.isnan(value).any(axis=1)
        w = np.where(valid, w, 0.0)[:, None]
        total += w * np.nan_to_num(value)
        weight_sum += w
    return total / weight_sum


def grid_normals_blender(layout: UVLayout) -> np.ndarray:
    """(T, 3) unnormalised normals of the layout's triangles on the canonical face, in the
    Blender frame (the canonical face is frontal: x right, y down, z towards the viewer)."""
    vertices = photo_to_blender(layout.canonical_vertices, 0.01).astype(np.float64)
    corners = vertices[layout.triangles]
    return np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])


def nearest_texels(xy: np.ndarray) -> np.ndarray:
    """(P, 2) int (col, row) of the texels whose centres are nearest to `xy`."""
    return np.round(xy).astype(int)


def test_layout_identity_and_shapes(layout: UVLayout) -> None:
    assert layout.layout_id == "ict-face-256-v1"
    assert layout.resolution == R
    n, k, f = layout.vertex_count, len(layout.ict_vertex_ids), len(layout.ict_triangles)
    assert layout.face_mask.shape == layout.mesh_mask.shape == (R, R)
    assert layout.canonical_vertices.shape == (n, 3)
    assert layout.landmark_texels.shape == layout.ict_landmark_texels.shape == (68, 2)
    assert layout.ict_vertex_texels.shape == (k, 2)
    assert layout.ict_neutral.shape == (k, 3)
    assert layout.texel_triangle.shape == (R, R)
    assert layout.texel_barycentric.shape == (R, R, 3)
    # ICT's face region: vertices 0-9408, 9230 quads -> 18460 triangles.
    np.testing.assert_array_equal(layout.ict_vertex_ids, np.arange(9409))
    assert f == 18460


def test_face_mask_is_ict_face_polygons_at_texel_centres(layout: UVLayout) -> None:
    assert int(layout.face_mask.sum()) == 62_712  # DESIGN.md section 1: 95.7 % of the tile
    assert not (layout.mesh_mask & ~layout.face_mask).any()
    np.testing.assert_array_equal(layout.texel_triangle >= 0, layout.face_mask)


def test_mesh_vertices_are_mesh_mask_texels_in_ascending_order(layout: UVLayout) -> None:
    np.testing.assert_array_equal(layout.face_texels, np.flatnonzero(layout.mesh_mask))
    assert layout.vertex_count == int(layout.mesh_mask.sum())
    assert layout.face_texels.dtype == np.int64


def test_triangles_are_two_per_full_2x2_block_of_mesh_texels(layout: UVLayout) -> None:
    mask = layout.mesh_mask
    full_blocks = mask[:-1, :-1] & mask[:-1, 1:] & mask[1:, :-1] & mask[1:, 1:]
    tri = layout.triangles
    assert tri.dtype == np.int32
    assert len(tri) == 2 * int(full_blocks.sum())
    assert tri.min() >= 0 and tri.max() < layout.vertex_count
    # No degenerate triangles, no duplicates.
    assert (tri[:, 0] != tri[:, 1]).all() and (tri[:, 1] != tri[:, 2]).all()
    assert len(np.unique(np.sort(tri, axis=1), axis=0)) == len(tri)


def test_no_triangle_spans_a_hole(layout: UVLayout) -> None:
    texels = layout.face_texels[layout.triangles]  # (T, 3) flat texel indices
    rows, cols = texels // R, texels % R
    assert (rows.max(1) - rows.min(1) <= 1).all()
    assert (cols.max(1) - cols.min(1) <= 1).all()
    assert layout.mesh_mask.reshape(-1)[texels].all()


def test_nose_tip_normal_points_to_minus_y_in_blender(layout: UVLayout) -> None:
    col, row = nearest_texels(layout.landmark_texels[30:31])[0]
    vertex = int(np.searchsorted(layout.face_texels, row * R + col))
    assert layout.face_texels[vertex] == row * R + col
    normals = grid_normals_blender(layout)
    around = normals[(layout.triangles == vertex).any(axis=1)]
    assert len(around) == 6  # interior grid vertex
    normal = around.sum(axis=0)
    normal /= np.linalg.norm(normal)
    assert normal[1] < -0.9


def test_triangle_normals_agree_with_ict_outward_surface_normals(layout: UVLayout) -> None:
    # ICT's own (outward) normals, interpolated at each mesh texel through the raster table.
    corners = layout.ict_neutral[layout.ict_triangles].astype(np.float64)
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert (face_normals[:, 2] > 0).mean() > 0.8  # ICT winding: the front faces the viewer
    vertex_normals = np.zeros(layout.ict_neutral.shape)
    for k in range(3):
        np.add.at(vertex_normals, layout.ict_triangles[:, k], face_normals)
    tri = layout.texel_triangle.reshape(-1)[layout.face_texels]
    bary = layout.texel_barycentric.reshape(-1, 3)[layout.face_texels].astype(np.float64)
    texel_normals = (vertex_normals[layout.ict_triangles[tri]] * bary[:, :, None]).sum(1)
    # ICT axes -> Blender: X = X, Y = -Z (depth towards the viewer -> -Y), Z = Y.
    texel_normals_blender = texel_normals[:, [0, 2, 1]] * [1.0, -1.0, 1.0]
    reference = texel_normals_blender[layout.triangles].sum(axis=1)
    agree = (grid_normals_blender(layout) * reference).sum(axis=1) > 0
    assert agree.mean() > 0.95


def test_calibrated_landmarks_sit_on_distinct_mesh_texels(layout: UVLayout) -> None:
    texels = nearest_texels(layout.landmark_texels)
    assert len({tuple(t) for t in texels}) == 68
    assert layout.mesh_mask[texels[:, 1], texels[:, 0]].all()
    gaps = np.linalg.norm(layout.landmark_texels[:, None] - layout.landmark_texels[None], axis=2)
    assert gaps[~np.eye(68, dtype=bool)].min() > 0.7


def test_ict_own_landmarks_are_their_vertex_uvs_inside_the_mesh(layout: UVLayout) -> None:
    rows = np.searchsorted(layout.ict_vertex_ids, layout.ict_landmark_vertices)
    np.testing.assert_array_equal(layout.ict_vertex_ids[rows], layout.ict_landmark_vertices)
    np.testing.assert_array_equal(layout.ict_landmark_texels, layout.ict_vertex_texels[rows])
    texels = nearest_texels(layout.ict_landmark_texels)
    assert layout.mesh_mask[texels[:, 1], texels[:, 0]].all()
    # CONTENTS.md: ICT nose tip 30 at (0, 0.41, 13.07) cm.
    nose = layout.ict_neutral[rows[30]]
    assert nose[2] == pytest.approx(13.07, abs=0.01) and abs(nose[0]) < 0.01


def test_inner_lower_lip_landmarks_lie_below_inner_upper_lip(layout: UVLayout) -> None:
    pm = position_map(layout, layout.canonical_vertices.astype(np.float64))
    points = bilinear_in_mask(pm, layout.landmark_texels.astype(np.float64))
    # Position-map axes: y grows downwards.
    assert (points[INNER_LOWER_LIP, 1] > points[INNER_UPPER_LIP, 1] + 0.1).all()
    assert points[57, 1] > points[66, 1] > points[62, 1] > points[51, 1]
    # In UV too (rows grow downwards): 65-67 below 61-63.
    assert (layout.landmark_texels[INNER_LOWER_LIP, 1]
            > layout.landmark_texels[INNER_UPPER_LIP, 1]).all()


def test_canonical_map_reproduces_ict_neutral_at_ict_landmarks(layout: UVLayout) -> None:
    pm = position_map(layout, layout.canonical_vertices.astype(np.float64))
    sampled = bilinear_in_mask(pm, layout.ict_landmark_texels.astype(np.float64))
    rows = np.searchsorted(layout.ict_vertex_ids, layout.ict_landmark_vertices)
    error_cm = np.abs(sampled - layout.ict_neutral[rows] * ICT_TO_PM).max(axis=1)
    # ICT's outer eye corners 36 and 45 sit at the end of the one-texel eye slit, where the
    # 2x2 read mixes the upper and lower lid (measured 0.14 cm); everywhere else < 0.03 cm.
    corners = [36, 45]
    assert np.delete(error_cm, corners).max() < 0.05
    assert error_cm[corners].max() < 0.2


def test_canonical_vertices_are_the_raster_table_applied_to_ict_neutral(
    layout: UVLayout,
) -> None:
    tri = layout.texel_triangle.reshape(-1)[layout.face_texels]
    bary = layout.texel_barycentric.reshape(-1, 3)[layout.face_texels].astype(np.float64)
    corners = layout.ict_neutral[layout.ict_triangles[tri]].astype(np.float64)
    expected = (corners * bary[:, :, None]).sum(axis=1) * ICT_TO_PM
    np.testing.assert_allclose(layout.canonical_vertices, expected, atol=2e-4)


def test_raster_table_weights_put_each_texel_centre_in_its_triangle(layout: UVLayout) -> None:
    bary = layout.texel_barycentric[layout.face_mask].astype(np.float64)
    np.testing.assert_allclose(bary.sum(axis=1), 1.0, atol=1e-4)
    assert bary.min() >= -1e-5 and bary.max() <= 1 + 1e-5
    assert not layout.texel_barycentric[~layout.face_mask].any()
    # Interpolating the corner texel positions lands on the texel centre, except in the few
    # triangles at the UV seam (ict_vertex_texels keeps a seam vertex's first UV only).
    tri = layout.texel_triangle[layout.face_mask]
    corners = layout.ict_vertex_texels[layout.ict_triangles[tri]].astype(np.float64)
    rows, cols = np.nonzero(layout.face_mask)
    error = np.linalg.norm((corners * bary[:, :, None]).sum(1) - np.stack([cols, rows], 1), axis=1)
    assert (error < 0.01).mean() > 0.97  # barycentrics are stored rounded to 1e-5


def test_neck_below_the_jaw_is_cut_from_the_mesh(layout: UVLayout) -> None:
    neck = layout.face_mask & ~layout.mesh_mask
    assert 5_000 < int(neck.sum()) < 12_000
    pm = position_map(layout, layout.canonical_vertices.astype(np.float64))
    chin_y = bilinear_in_mask(pm, layout.landmark_texels[:17].astype(np.float64))[:, 1].max()
    # Every mesh vertex is at most 1 cm below the lowest jaw landmark (y down, cm).
    assert layout.canonical_vertices[:, 1].max() <= chin_y + 1.0 + 1e-3
    # The neck lies at the bottom of the map.
    assert np.nonzero(neck)[0].min() > layout.landmark_texels[8, 1]


def test_weight_mask_regions(layout: UVLayout) -> None:
    weight = layout.weight_mask
    assert weight.dtype == np.float32
    assert set(np.unique(weight).tolist()) == {0.0, 3.0, 4.0, 16.0}
    assert not weight[~layout.face_mask].any()
    assert not weight[layout.face_mask & ~layout.mesh_mask].any()  # neck
    base = np.floor(layout.landmark_texels).astype(int)
    for dy in (0, 1):
        for dx in (0, 1):
            r, c = base[:, 1] + dy, base[:, 0] + dx
            inside = layout.face_mask[r, c]
            assert (weight[r[inside], c[inside]] == 16).all()
    assert int((weight == 16).sum()) <= 4 * 68
    # Feature regions: the eyes, the nose tip and the lips are 4 (or 16), cheeks and brow 3.
    for lm in (37, 44, 30, 51, 57):
        c, r = nearest_texels(layout.landmark_texels[lm : lm + 1])[0]
        assert weight[r, c] in (4.0, 16.0)
    assert weight[int(layout.landmark_texels[2, 1]), int(layout.landmark_texels[2, 0]) + 10] == 3
    assert 2_000 < int((weight == 4).sum()) < 8_000


@needs_shared
def test_calibrated_landmarks_match_prnet_bfm_landmarks_after_similarity() -> None:
    from prn_blender.core.pose import umeyama_similarity
    from prn_blender.training.make_layout import bfm68_canonical

    layout = load_layout()
    pm = position_map(layout, layout.canonical_vertices.astype(np.float64))
    ours = bilinear_in_mask(pm, layout.landmark_texels.astype(np.float64))  # cm, y down
    bfm = bfm68_canonical(SHARED) * ICT_TO_PM  # canonical units, y down again
    scale, rot, trans = umeyama_similarity(bfm, ours)
    residual_cm = np.linalg.norm(scale * bfm @ rot.T + trans - ours, axis=1)
    assert np.linalg.det(rot) > 0
    assert 11.0 < 1.0 / scale < 13.0  # canonical units per ICT cm
    assert residual_cm.mean() < 0.12 and residual_cm.max() < 0.3


@needs_shared
def test_ict_loader_gives_the_model_and_triangulated_face_polygons() -> None:
    from prn_blender.training.ict import load_ict

    ict = load_ict(str(SHARED))
    v = 26_719
    assert ict.neutral.shape == (v, 3) and ict.neutral.dtype == np.float32
    assert ict.identity.shape == (100, v, 3) and ict.identity.dtype == np.float32
    assert ict.expression.shape == (53, v, 3) and ict.expression.dtype == np.float32
    assert len(ict.expression_names) == 53 and ict.expression_names[0] == "browDown_L"
    assert ict.face_triangles.shape == ict.face_triangle_uvs.shape == (18_460, 3)
    assert ict.face_triangles.max() == 9408
    # CONTENTS.md: nose tip 30 at (0, 0.41, 13.07), chin 8 at (0, -7.57, 10.43), cm.
    np.testing.assert_allclose(ict.neutral[ict.landmark_vertices[30]], [0, 0.41, 13.07],
                               atol=0.01)
    np.testing.assert_allclose(ict.neutral[ict.landmark_vertices[8]], [0, -7.57, 10.43],
                               atol=0.01)
    # 138 face vertices carry two UVs (a seam inside tile 0).
    pairs = np.unique(np.stack([ict.face_triangles.ravel(), ict.face_triangle_uvs.ravel()], 1),
                      axis=0)
    assert int((np.bincount(pairs[:, 0]) == 2).sum()) == 138
    # Quads split as (a, b, c), (a, c, d): consecutive triangles share corners a and c.
    first, second = ict.face_triangles[0::2], ict.face_triangles[1::2]
    np.testing.assert_array_equal(first[:, [0, 2]], second[:, [0, 1]])


@needs_shared
@pytest.mark.slow
def test_regenerating_the_layout_gives_identical_bytes(tmp_path) -> None:
    from prn_blender.core.layout import find_data_file
    from prn_blender.training.make_layout import main

    assert SHARED_DATA.is_dir()
    out = tmp_path / "uv_layout_ict256.npz"
    assert main(["--shared", str(SHARED), "--out", str(out), "--no-png"]) == 0
    committed = find_data_file("uv_layout_ict256.npz")
    assert out.read_bytes() == committed.read_bytes()


def test_ict_layout_columns_are_mirror_pairs(layout: UVLayout) -> None:
    """Column c and R-1-c hold mirror points of the ICT neutral (what mirror averaging and
    mirror augmentation rely on); a layout shifted by one column is not symmetric."""
    assert layout.is_mirror_symmetric
    assert layout.mirror_error_cm < 0.07  # measured 0.067 cm at worst; a texel is ~0.11 cm
    shifted = dataclasses.replace(
        layout, face_mask=np.roll(layout.face_mask, 1, axis=1),
        texel_triangle=np.roll(layout.texel_triangle, 1, axis=1),
        texel_barycentric=np.roll(layout.texel_barycentric, 1, axis=1))
    assert not shifted.is_mirror_symmetric
    nose = layout.ict_neutral[:, 2].argmax()  # the nose tip lies on the symmetry plane
    assert abs(layout.ict_neutral[nose, 0]) < 0.01
