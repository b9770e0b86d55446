"""Our rasteriser and the preview image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from prn_blender.core.geometry import landmarks_from_position_map, position_map_to_vertices
from prn_blender.core.render import (
    AMBIENT,
    LIGHT_DIRECTION_PHOTO,
    draw_landmarks,
    rasterize,
    render_preview,
    shade_mesh,
)
from tests.core.conftest import pose_ict_neutral

TRIANGLE = np.array([[2.0, 2.0, 10.0], [12.0, 2.0, 10.0], [2.0, 12.0, 0.0]])  # photo px


def test_rasterize_covers_the_pixel_centres_inside_a_triangle_with_interpolated_depth():
    raster = rasterize(TRIANGLE, np.array([[0, 1, 2]]), (16, 16))
    rows, cols = np.mgrid[0:16, 0:16]
    inside = (cols >= 2) & (rows >= 2) & (cols + rows <= 14)
    np.testing.assert_array_equal(raster.mask, inside)
    assert inside.sum() == 66
    np.testing.assert_allclose(raster.depth[inside], (12.0 - rows)[inside], atol=1e-5)
    assert np.isneginf(raster.depth[~inside]).all()
    np.testing.assert_allclose(raster.barycentric[inside].sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("near_first", [True, False])
def test_the_closest_triangle_wins_whatever_the_order(near_first):
    near = TRIANGLE + np.array([0.0, 0.0, 20.0])  # larger z = closer to the camera
    vertices = np.concatenate([near, TRIANGLE] if near_first else [TRIANGLE, near])
    triangles = np.array([[0, 1, 2], [3, 4, 5]])
    raster = rasterize(vertices, triangles, (16, 16))
    assert (raster.triangle[raster.mask] == (0 if near_first else 1)).all()
    assert raster.depth[5, 5] == pytest.approx(12.0 - 5 + 20.0)


def test_a_plane_facing_the_camera_gets_the_lambert_value_of_its_normal():
    vertices = np.array([[0.0, 0.0, 5.0], [30.0, 0.0, 5.0], [0.0, 30.0, 5.0], [30, 30, 5.0]])
    triangles = np.array([[0, 2, 1], [1, 2, 3]])  # layout winding (inward in photo axes)
    intensity, mask = shade_mesh(vertices, triangles, (32, 32))
    expected = AMBIENT + (1 - AMBIENT) * LIGHT_DIRECTION_PHOTO[2]  # normal = +z
    np.testing.assert_allclose(intensity[mask], expected, atol=1e-5)
    assert mask.sum() == 31 * 31


def _projected_face_mask(vertices_px, triangles, shape) -> np.ndarray:
    """Independent reference: OpenCV's polygon filler on every triangle (x, y only)."""
    mask = np.zeros(shape, np.uint8)
    polys = np.round(vertices_px[:, :2][triangles] * 16).astype(np.int32)
    cv2.fillPoly(mask, list(polys), 1, cv2.LINE_8, shift=4)
    return mask > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(("photo_shape", "max_side", "panel_shape"),
                         [((480, 640), 1024, (480, 640)), ((1500, 2000), 1024, (768, 1024))])
def test_preview_draws_the_face_where_it_projects(ict_layout, photo_shape, max_side,
                                                  panel_shape):
    k = panel_shape[0] / photo_shape[0]
    face = pose_ict_neutral(ict_layout, 25.0, -5.0, 10.0, scale_px_per_cm=12.0 / k,
                            translation_px=(0.45 * photo_shape[1], 0.5 * photo_shape[0], 0))
    vertices = position_map_to_vertices(face.position_map, ict_layout)
    landmarks = landmarks_from_position_map(face.position_map, ict_layout)
    photo = np.zeros((*photo_shape, 3), np.uint8)
    preview = render_preview(vertices, ict_layout.triangles, photo, landmarks, max_side)
    ph, pw = panel_shape
    assert preview.shape == (ph, 3 * pw, 3) and preview.dtype == np.uint8
    assert not preview[:, :pw].any()  # panel 1: the (black) photo
    drawn = preview[:, pw : 2 * pw].any(axis=2)
    scaled = vertices * k
    scaled[:, :2] += 0.5 * k - 0.5
    expected = _projected_face_mask(scaled, ict_layout.triangles, panel_shape)
    assert expected.sum() > 30_000
    assert _iou(drawn, expected) > 0.98
    # Panel 3: a dot on every landmark, nothing far from them.
    dots = preview[:, 2 * pw :, 1] > 100
    lm = np.round(landmarks[:, :2] * k + 0.5 * k - 0.5).astype(int)
    assert dots[lm[:, 1], lm[:, 0]].all()
    not_landmark = np.ones(panel_shape, np.uint8)
    not_landmark[lm[:, 1], lm[:, 0]] = 0
    distance_px = cv2.distanceTransform(not_landmark, cv2.DIST_L2, 5)
    radius_px = max(1, round(0.004 * max(panel_shape)))
    assert distance_px[dots].max() < radius_px + 1.5


def test_preview_without_landmarks_has_two_panels_and_keeps_the_photo(ict_layout):
    face = pose_ict_neutral(ict_layout)
    vertices = position_map_to_vertices(face.position_map, ict_layout)
    photo = np.full((480, 640, 3), 90, np.uint8)
    preview = render_preview(vertices, ict_layout.triangles, photo)
    assert preview.shape == (480, 1280, 3)
    assert (photo == 90).all()
    assert (preview[:, :640] == 90).all()


def test_draw_landmarks_returns_a_copy_with_dots():
    image = np.zeros((100, 100, 3), np.uint8)
    out = draw_landmarks(image, np.array([[20.0, 30.0], [70.5, 60.0]]), (255, 0, 0), 2)
    assert not image.any()
    assert out[30, 20, 0] == 255 and out[60, 70, 0] > 128
    assert out[5, 5].sum() == 0


def test_rasterize_skips_triangles_with_nan_corners_and_accepts_no_triangles():
    vertices = np.concatenate([TRIANGLE, [[np.nan, 0.0, 0.0]]])
    raster = rasterize(vertices, np.array([[0, 1, 3], [0, 1, 2]]), (16, 16))
    assert (raster.triangle[raster.mask] == 1).all() and raster.mask.sum() == 66
    assert not rasterize(vertices, np.zeros((0, 3), int), (16, 16)).mask.any()
