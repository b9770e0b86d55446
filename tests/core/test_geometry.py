"""Position map -> mesh, UVs, landmarks, ICT resampling, decimation, normals."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from prn_blender.core.frames import photo_to_blender
from prn_blender.core.geometry import (
    bilinear_sample,
    decimate_triangles,
    ict_vertices_from_position_map,
    landmarks_from_position_map,
    mesh_uvs,
    position_map_from_mesh,
    position_map_to_vertices,
    vertex_normals,
)
from prn_blender.core.render import rasterize
from tests.core.conftest import SYNTH_EYE_ROW, pose_ict_neutral


def _texel_coordinate_map(layout) -> np.ndarray:
    """(R, R, 3) map whose value at texel (row, col) is (col, row, 0)."""
    r = layout.resolution
    rows, cols = np.mgrid[0:r, 0:r].astype(np.float32)
    return np.stack([cols, rows, np.zeros_like(cols)], -1)


def _hole_texels(mask: np.ndarray) -> np.ndarray:
    """(M, 2) (x, y) texels outside `mask` that are enclosed by it (eyes, mouth)."""


    outside = (~mask).astype(np.uint8)
    _, labels = cv2.connectedComponents(outside, connectivity=4)
    border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    holes = (labels > 0) & ~np.isin(labels, border)
    rows, cols = np.nonzero(holes)
    return np.stack([cols, rows], 1)


def test_vertices_are_the_mesh_texels_in_face_texel_order(any_layout):
    pm = _texel_coordinate_map(any_layout)
    vertices = position_map_to_vertices(pm, any_layout)
    rows, cols = np.divmod(any_layout.face_texels, any_layout.resolution)
    assert vertices.shape == (any_layout.mesh_mask.sum(), 3)
    assert vertices.dtype == np.float32
    np.testing.assert_array_equal(vertices[:, 0], cols)
    np.testing.assert_array_equal(vertices[:, 1], rows)


def test_ict_neutral_gives_one_finite_vertex_per_mesh_texel(ict_layout):
    face = pose_ict_neutral(ict_layout, yaw_deg=10.0)
    vertices = position_map_to_vertices(face.position_map, ict_layout)
    assert vertices.shape == (int(ict_layout.mesh_mask.sum()), 3)
    assert np.isfinite(vertices).all()


def test_mesh_uvs_are_texel_centres_with_v_up(any_layout):
    r = any_layout.resolution
    uvs = mesh_uvs(any_layout)
    rows, cols = np.divmod(any_layout.face_texels, r)
    np.testing.assert_allclose(uvs[:, 0], (cols + 0.5) / r, atol=1e-6)
    np.testing.assert_allclose(uvs[:, 1], 1.0 - (rows + 0.5) / r, atol=1e-6)


def test_bilinear_sample_is_exact_on_a_linear_field():
    rows, cols = np.mgrid[0:8, 0:8].astype(np.float32)
    grid = np.stack([2 * cols + 3 * rows, -cols], -1)
    points = np.array([[1.25, 2.5], [6.9, 0.1], [3.0, 4.0]])
    expected = np.stack([2 * points[:, 0] + 3 * points[:, 1], -points[:, 0]], 1)
    np.testing.assert_allclose(bilinear_sample(grid, points), expected, atol=1e-5)


def test_bilinear_sample_next_to_one_hole_texel_is_exact_on_a_linear_field_and_ignores_nan():
    rows, cols = np.mgrid[0:4, 0:4].astype(np.float32)
    grid = (2 * cols + 3 * rows)[:, :, None]
    mask = np.ones((4, 4), dtype=bool)
    points = np.array([[1.5, 1.5], [1.9, 1.2], [1.1, 1.9], [2.0, 1.0]])
    for hole in [(1, 1), (1, 2), (2, 1), (2, 2)]:  # each corner of the block (row, col)
        m, g = mask.copy(), grid.copy()
        m[hole], g[hole] = False, np.nan  # e.g. an eye-hole texel
        value = bilinear_sample(g, points, m)
        np.testing.assert_allclose(value[:, 0], 2 * points[:, 0] + 3 * points[:, 1], atol=1e-4)


def test_bilinear_sample_renormalises_when_two_texels_are_outside():
    grid = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    mask = np.ones((4, 4), dtype=bool)
    mask[2, 1:3] = False  # the lower row of the block at (x, y) = (1..2, 1..2)
    grid[2, 1:3] = np.nan
    value = bilinear_sample(grid, np.array([[1.25, 1.5]]), mask)
    expected = 0.75 * grid[1, 1, 0] + 0.25 * grid[1, 2, 0]  # linear along the upper edge
    np.testing.assert_allclose(value[0, 0], expected, atol=1e-5)


def test_position_map_from_mesh_reproduces_linear_functions_and_is_nan_outside(any_layout):
    # A mesh whose "positions" are its own texel coordinates rasterises to the texel grid
    # (within 0.005 texel: the layout stores barycentric weights to 5 decimals).
    texels = any_layout.ict_vertex_texels.astype(np.float64)
    mesh = np.column_stack([texels, np.zeros(len(texels))])
    pm = position_map_from_mesh(mesh, any_layout)
    mask = any_layout.face_mask
    np.testing.assert_allclose(pm[mask], _texel_coordinate_map(any_layout)[mask], atol=5e-3)
    assert np.isnan(pm[~mask]).all()


def test_ict_landmarks_land_on_the_posed_ict_landmark_vertices(ict_layout):
    """At 12 px/cm (outer eye corners about 107 px apart): mean 0.2 px, all within 2 px.

    The two outer eye corners (36, 45) are the worst (1.8 px = 1.3 texels): the ICT surface
    folds sharply there, and a bilinear read of texel-centre samples cuts the fold."""
    face = pose_ict_neutral(ict_layout, yaw_deg=15.0, pitch_deg=-10.0, roll_deg=5.0)
    kept = np.searchsorted(ict_layout.ict_vertex_ids, ict_layout.ict_landmark_vertices)
    expected = face.ict_vertices_px[kept]
    landmarks = landmarks_from_position_map(face.position_map, ict_layout, which="ict")
    error_px = np.linalg.norm(landmarks - expected, axis=1)
    assert landmarks.shape == (68, 3)
    assert error_px.mean() < 0.2
    assert error_px.max() < 2.0
    assert np.sum(error_px < 0.5) >= 64


def test_calibrated_landmarks_are_read_at_the_calibrated_texels(any_layout):
    """Exact on a linear map, except eyelid points right over the one-texel eye holes (both
    texels of one row missing: renormalised along the other row), within 0.35 texel."""
    pm = _texel_coordinate_map(any_layout)
    landmarks = landmarks_from_position_map(pm, any_layout)  # default: calibrated
    error = np.linalg.norm(landmarks[:, :2] - any_layout.landmark_texels, axis=1)
    assert np.sum(error < 1e-3) >= 62  # 6 eyelid points border the eye slits
    assert error.max() < 0.35


def test_ict_vertices_resampled_from_the_map_match_the_mesh(ict_layout):
    """At 12 px/cm, on vertices whose bilinear footprint is on the face: median under 0.1 px,
    90 % within 0.5 px. The rest is mostly inside the nostrils, which ICT packs into a few
    texels (up to 8 px off): a 256 map cannot resolve them."""
    face = pose_ict_neutral(ict_layout, yaw_deg=-20.0)
    resampled = ict_vertices_from_position_map(face.position_map, ict_layout)
    assert resampled.shape == face.ict_vertices_px.shape
    x0 = np.floor(ict_layout.ict_vertex_texels).astype(int)
    m = ict_layout.face_mask
    r = ict_layout.resolution
    x0 = np.clip(x0, 0, r - 2)
    whole = m[x0[:, 1], x0[:, 0]] & m[x0[:, 1], x0[:, 0] + 1]
    whole &= m[x0[:, 1] + 1, x0[:, 0]] & m[x0[:, 1] + 1, x0[:, 0] + 1]
    error_px = np.linalg.norm(resampled - face.ict_vertices_px, axis=1)[whole]
    assert whole.mean() > 0.9
    assert np.median(error_px) < 0.1
    assert np.mean(error_px < 0.5) > 0.9


def _covered_texels(layout, vertex_indices, triangles) -> np.ndarray:
    """Texel-space coverage of a (sub)mesh: rasterise it with texel coordinates as positions."""
    rows, cols = np.divmod(layout.face_texels[vertex_indices], layout.resolution)
    texel_xyz = np.stack([cols, rows, np.zeros_like(cols)], 1).astype(np.float64)
    return rasterize(texel_xyz, triangles, (layout.resolution, layout.resolution)).mask


@pytest.mark.parametrize("stride", [2, 3])
def test_decimated_mesh_keeps_one_texel_eye_holes_open(synthetic_layout, stride):
    layout = synthetic_layout
    vertex_indices, triangles = decimate_triangles(layout, stride)
    covered = _covered_texels(layout, vertex_indices, triangles)
    assert not covered[SYNTH_EYE_ROW][~layout.mesh_mask[SYNTH_EYE_ROW]].any()
    assert not (covered & ~layout.mesh_mask).any()
    # Coarse: about stride^2 fewer triangles, still most of the face.
    assert len(triangles) < len(layout.triangles) / (stride * stride) * 1.1
    assert covered.sum() > 0.7 * layout.mesh_mask.sum()


def test_decimated_ict_mesh_covers_no_hole_and_keeps_the_winding(ict_layout):
    vertex_indices, triangles = decimate_triangles(ict_layout, 2)
    covered = _covered_texels(ict_layout, vertex_indices, triangles)
    holes = _hole_texels(ict_layout.mesh_mask)
    assert len(holes) > 0
    assert not covered[holes[:, 1], holes[:, 0]].any()
    assert covered.sum() > 0.85 * ict_layout.mesh_mask.sum()
    # Same winding as the full mesh: signed texel-space areas all have the full mesh's sign.
    full_sign = _signed_texel_areas(ict_layout, np.arange(ict_layout.vertex_count),
                                    ict_layout.triangles)
    coarse_sign = _signed_texel_areas(ict_layout, vertex_indices, triangles)
    assert np.all(np.sign(coarse_sign) == np.sign(full_sign[0]))
    assert np.all(np.sign(full_sign) == np.sign(full_sign[0]))


def _signed_texel_areas(layout, vertex_indices, triangles) -> np.ndarray:
    rows, cols = np.divmod(layout.face_texels[vertex_indices], layout.resolution)
    p = np.stack([cols, rows], 1).astype(np.float64)[triangles]
    a, b = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    return a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]


def test_decimate_with_stride_one_is_the_full_mesh(any_layout):
    vertex_indices, triangles = decimate_triangles(any_layout, 1)
    np.testing.assert_array_equal(vertex_indices, np.arange(any_layout.vertex_count))
    np.testing.assert_array_equal(triangles, any_layout.triangles)


def test_ellipsoid_apex_normal_points_out_of_the_face_in_blender(synthetic_layout):
    """Frontal ellipsoid: the apex normal in the Blender frame is -Y (towards the camera)."""
    face = pose_ict_neutral(synthetic_layout, scale_px_per_cm=10.0)
    vertices = position_map_to_vertices(face.position_map, synthetic_layout)
    normals = vertex_normals(photo_to_blender(vertices, 0.001), synthetic_layout.triangles)
    apex = np.argmax(vertices[:, 2])
    np.testing.assert_allclose(normals[apex], [0.0, -1.0, 0.0], atol=0.05)
    # Everywhere on the frontal face the normal faces the camera (-Y).
    assert (normals[:, 1] < 0).mean() > 0.99


def test_ict_nose_tip_normal_points_out_of_the_face_in_blender(ict_layout):
    face = pose_ict_neutral(ict_layout)
    vertices = position_map_to_vertices(face.position_map, ict_layout)
    normals = vertex_normals(photo_to_blender(vertices, 0.001), ict_layout.triangles)
    nose_tip = landmarks_from_position_map(face.position_map, ict_layout)[30]
    nearest = np.argmin(np.linalg.norm(vertices - nose_tip, axis=1))
    assert normals[nearest, 1] < -0.9
    assert np.isclose(np.linalg.norm(normals[nearest]), 1.0, atol=1e-5)


def test_geometry_functions_do_not_modify_their_inputs(synthetic_layout):
    face = pose_ict_neutral(synthetic_layout, yaw_deg=5.0)
    pm = face.position_map.copy()
    vertices = position_map_to_vertices(pm, synthetic_layout)
    before = vertices.copy()
    vertex_normals(vertices, synthetic_layout.triangles)
    landmarks_from_position_map(pm, synthetic_layout)
    np.testing.assert_array_equal(vertices, before)
    np.testing.assert_array_equal(pm, face.position_map)


def test_smoothing_keeps_planes_inside_the_mask_removes_noise_and_leaves_the_outside_alone():
    from prn_blender.core.geometry import smooth_position_map

    r = 64
    rows, cols = np.mgrid[0:r, 0:r].astype(np.float32)
    plane = np.stack([2 * cols + 5, 3 * rows - 1, cols + rows], axis=-1)
    mask = np.zeros((r, r), bool)
    mask[8:56, 8:56] = True
    mask[30:32, 20:40] = False  # a slit, like an eye hole
    pm = np.where(mask[..., None], plane, np.nan).astype(np.float32)
    smoothed = smooth_position_map(pm, mask, 1.0)
    interior = np.zeros_like(mask)
    interior[12:52, 12:52] = True
    interior[26:36, 16:44] = False  # 3 sigma away from every edge
    np.testing.assert_allclose(smoothed[interior], plane[interior], atol=1e-3)
    assert np.isnan(smoothed[~mask]).all() and np.isfinite(smoothed[mask]).all()
    noise = np.random.default_rng(0).normal(0, 4.0, plane.shape).astype(np.float32)
    rough = np.where(mask[..., None], plane + noise, np.nan)
    residual = smooth_position_map(rough, mask, 1.0)[interior] - plane[interior]
    # white noise through a unit-sum 2D Gaussian of sigma 1: std x 1 / (2 sqrt(pi)) = 0.28
    assert residual.std() == pytest.approx(4.0 * 0.28, rel=0.1)
    np.testing.assert_array_equal(smooth_position_map(rough, mask, 0.0), rough)
    # A NaN inside the mask is skipped, not spread.
    holed = pm.copy()
    holed[20, 20] = np.nan
    out = smooth_position_map(holed, mask, 1.0)
    assert np.isnan(out[20, 20]).all() and np.isfinite(out[mask]).sum() == mask.sum() * 3 - 3
    # At the border the one-sided average pulls a slope inwards; smoothing the difference to
    # a base surface with the same slope keeps the border where it is.
    edge = mask & ~np.pad(mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                          & mask[1:-1, :-2] & mask[1:-1, 2:], 1)
    shifted = np.abs(smooth_position_map(pm, mask, 2.0)[edge] - plane[edge]).max()
    assert shifted > 1.0  # px (the plane's slope is 2-3 px per texel)
    kept = smooth_position_map(pm, mask, 2.0, base=plane)[edge] - plane[edge]
    np.testing.assert_allclose(kept, 0.0, atol=1e-4)


def test_face_smoothing_removes_noise_and_keeps_the_outline(ict_layout):
    from prn_blender.core.geometry import position_map_to_vertices
    from prn_blender.core.pose import smooth_face_map

    face = pose_ict_neutral(ict_layout, 20.0, -10.0, 5.0)
    clean = position_map_to_vertices(face.position_map, ict_layout)
    rng = np.random.default_rng(1)
    noisy_map = face.position_map + rng.normal(0, 2.0, face.position_map.shape).astype(
        np.float32)
    smoothed = position_map_to_vertices(smooth_face_map(noisy_map, ict_layout, 1.5), ict_layout)
    noisy = position_map_to_vertices(noisy_map, ict_layout)
    error_before = np.linalg.norm(noisy - clean, axis=1)
    error_after = np.linalg.norm(smoothed - clean, axis=1)
    assert np.median(error_after) < 0.4 * np.median(error_before)
    # The outline: the mesh's bounding box in the photo stays put (within 1 px of ~250 px).
    np.testing.assert_allclose(np.nanmin(smoothed[:, :2], 0), np.nanmin(clean[:, :2], 0),
                               atol=1.0)
    np.testing.assert_allclose(np.nanmax(smoothed[:, :2], 0), np.nanmax(clean[:, :2], 0),
                               atol=1.0)


def test_displacement_moves_the_controls_and_fades_away_from_them():
    from prn_blender.core.geometry import displace_position_map

    r = 64
    rows, cols = np.mgrid[0:r, 0:r].astype(np.float32)
    plane = np.stack([2 * cols + 5, 3 * rows - 1, cols + rows], axis=-1)
    pm = plane.copy()
    pm[0, :8] = np.nan
    controls = np.array([[20.0, 20.0], [30.0, 22.0], [25.0, 35.0]])
    offsets = np.array([[3.0, -2.0], [1.0, 4.0], [-2.0, 0.5]])
    out = displace_position_map(pm, controls, offsets, sigma_texels=4.0, ridge=0.0)
    for (x, y), offset in zip(controls.astype(int), offsets, strict=True):
        np.testing.assert_allclose(out[y, x, :2] - plane[y, x, :2], offset, atol=1e-4)
    np.testing.assert_array_equal(out[..., 2], pm[..., 2])  # only the given channels move
    far = np.hypot(cols - 25, rows - 25) > 30  # > 5 sigma from every control
    np.testing.assert_allclose(out[far & np.isfinite(pm[..., 0])],
                               pm[far & np.isfinite(pm[..., 0])], atol=1e-3)
    assert np.isnan(out[0, :8]).all()
    # A ridge shrinks an isolated control's move by 1 / (1 + ridge).
    lone = displace_position_map(plane, controls[:1], offsets[:1], 4.0, ridge=0.25)
    np.testing.assert_allclose(lone[20, 20, :2] - plane[20, 20, :2], offsets[0] / 1.25,
                               atol=1e-4)
    np.testing.assert_array_equal(displace_position_map(pm, np.zeros((0, 2)),
                                                        np.zeros((0, 2)), 4.0), pm)


def test_surface_roughness_is_zero_on_planes_and_sees_a_checkerboard():
    from prn_blender.core.geometry import surface_roughness

    r = 32
    rows, cols = np.mgrid[0:r, 0:r].astype(np.float64)
    plane = np.stack([2 * cols + 5, 3 * rows - 1, cols + rows], axis=-1)
    mask = np.ones((r, r), bool)
    assert surface_roughness(plane, mask) == pytest.approx(0.0, abs=1e-9)
    rough = plane.copy()
    rough[..., 2] += 0.5 * (-1.0) ** (rows + cols)  # +-0.5 px in depth
    # |d2| = 4 x 0.5 in z along both u and v, 0 in x and y: mean over 3 channels = 2 / 3.
    assert surface_roughness(rough, mask) == pytest.approx(2.0 / 3.0)
    # Texels outside the mask (or NaN) never enter.
    rough[:, :16] = np.nan
    mask[:, 16:18] = False
    rough[:, 16:18] = 1e6
    assert surface_roughness(rough, mask) == pytest.approx(2.0 / 3.0)
