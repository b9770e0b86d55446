"""Crop similarity: conventions, pixel centres, round trips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from prn_blender.core.crop import (
    LANDMARK_BOX,
    OFFICIAL_DLIB,
    OFFICIAL_LANDMARKS,
    crop_from_box,
    crop_from_similarity,
    crop_points,
    official_crop_from_box,
    rotated_crop,
    uncrop_points,
    uncrop_position_map,
    warp_photo_to_crop,
)

BOX = (100.0, 60.0, 260.0, 240.0)  # x0, y0, x1, y1: 160 x 180 px, centre (180, 150)


def test_landmark_box_crop_centres_the_box_with_one_and_a_half_its_mean_side():
    transform = crop_from_box(BOX, LANDMARK_BOX)
    side_px = 1.5 * (160 + 180) / 2  # 255 photo px
    assert transform.scale == pytest.approx(256 / side_px)
    assert transform.resolution == 256
    centre = crop_points(np.array([[180.0, 150.0]]), transform)
    np.testing.assert_allclose(centre, [[127.5, 127.5]], atol=1e-4)
    # The crop square's outer edges [c - S/2, c + S/2] map onto [-0.5, 255.5].
    corners = crop_points(np.array([[180 - side_px / 2, 150 - side_px / 2],
                                    [180 + side_px / 2, 150 + side_px / 2]]), transform)
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [255.5, 255.5]], atol=1e-4)


def test_official_crops_follow_the_prnet_code():
    """api.PRN.process: size = int(1.6 x mean side) (1.58 and centre + 0.14 x mean side for
    dlib boxes); corners (cx -+ size/2, cy -+ size/2) -> 0 and 255."""
    mean_side = (160 + 180) / 2
    for convention, shift in [(OFFICIAL_LANDMARKS, 0.0), (OFFICIAL_DLIB, 0.14)]:
        transform = official_crop_from_box(BOX, convention)
        size = int(convention.side_scale * mean_side)
        cx, cy = 180.0, 150.0 + shift * mean_side
        corners = np.array([[cx - size / 2, cy - size / 2], [cx - size / 2, cy + size / 2],
                            [cx + size / 2, cy - size / 2]])
        np.testing.assert_allclose(crop_points(corners, transform),
                                   [[0, 0], [0, 255], [255, 0]], atol=1e-6)
        assert transform.scale == pytest.approx(255 / size)


def test_positive_angle_turns_the_crop_content_counter_clockwise():
    transform = crop_from_similarity((50.0, 50.0), 100.0, angle_deg=90.0, resolution=100)
    # A point to the right of the centre in the photo appears above the centre in the crop.
    point = crop_points(np.array([[60.0, 50.0]]), transform)[0]
    np.testing.assert_allclose(point, [49.5, 39.5], atol=1e-4)


def test_rotated_crop_is_the_same_crop_taken_at_the_added_angle():
    """Turning the axis-aligned crop of a box about its centre equals taking it at that angle,
    and keeps its scale; turning back restores it."""
    plain = crop_from_similarity((180.0, 150.0), 240.0, 0.0)
    for angle in (15.0, -15.0, 40.0):
        turned = rotated_crop(plain, angle)
        direct = crop_from_similarity((180.0, 150.0), 240.0, angle)
        np.testing.assert_allclose(turned.matrix, direct.matrix, atol=1e-9)
        assert turned.scale == plain.scale and turned.resolution == plain.resolution
        np.testing.assert_allclose(rotated_crop(turned, -angle).matrix, plain.matrix, atol=1e-9)
    # Of an already rolled crop: the angles add, the photo centre stays on the crop centre.
    rolled = crop_from_similarity((180.0, 150.0), 240.0, 10.0)
    np.testing.assert_allclose(rotated_crop(rolled, 15.0).matrix,
                               crop_from_similarity((180.0, 150.0), 240.0, 25.0).matrix,
                               atol=1e-9)
    np.testing.assert_allclose(crop_points(np.array([[180.0, 150.0]]), rotated_crop(rolled, 15.0)),
                               [[127.5, 127.5]], atol=1e-4)


@pytest.mark.parametrize("angle_deg", [0.0, 17.0, -45.0])
def test_uncrop_inverts_crop_to_subpixel(angle_deg):
    transform = crop_from_similarity((412.3, 288.8), 311.0, angle_deg)
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 800, (100, 3))
    back = uncrop_points(crop_points(points, transform), transform)
    np.testing.assert_allclose(back, points, atol=1e-3)  # px
    np.testing.assert_allclose(transform.inverse_matrix() @ np.r_[transform.matrix @ [1, 2, 1], 1],
                               [1, 2], atol=1e-9)


def test_crop_scales_depth_and_uncrop_divides_it():
    transform = crop_from_box(BOX)
    points = np.array([[180.0, 150.0, 40.0]])
    cropped = crop_points(points, transform)
    assert cropped[0, 2] == pytest.approx(40.0 * transform.scale, rel=1e-6)
    position_map = np.broadcast_to(cropped, (4, 4, 3)).copy()
    photo_map = uncrop_position_map(position_map, transform)
    np.testing.assert_allclose(photo_map.reshape(-1, 3), np.repeat(points, 16, 0), atol=1e-3)


def test_warp_samples_the_photo_at_the_similarity_with_pixel_centres_at_integers():
    h, w = 300, 400
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    photo = np.stack([cols, rows, cols + rows], -1)  # value = photo pixel coordinates
    transform = crop_from_similarity((200.0, 150.0), 128.0, 30.0, resolution=64)
    crop = warp_photo_to_crop(photo, transform)
    crop_rows, crop_cols = np.mgrid[0:64, 0:64].astype(np.float64)
    expected = uncrop_points(np.stack([crop_cols, crop_rows], -1).reshape(-1, 2), transform)
    # OpenCV interpolates at 1/32 px resolution: 0.035 px tolerance.
    np.testing.assert_allclose(crop[..., :2].reshape(-1, 2), expected, atol=0.035)


def test_constant_border_is_black_and_reflect_border_is_not():
    photo = np.full((50, 50, 3), 200, np.uint8)
    transform = crop_from_similarity((5.0, 5.0), 60.0, resolution=32)
    assert warp_photo_to_crop(photo, transform)[0, 0].tolist() == [0, 0, 0]
    reflected = warp_photo_to_crop(photo, transform, border=cv2.BORDER_REFLECT_101)
    assert reflected[0, 0].tolist() == [200, 200, 200]


def test_non_positive_crop_side_is_rejected():
    with pytest.raises(ValueError, match="positive"):
        crop_from_similarity((0.0, 0.0), 0.0)


def _rotate(points: np.ndarray, angle_deg: float, centre: np.ndarray) -> np.ndarray:
    """Rotate (N, 2) photo points (y down) by angle_deg clockwise on screen about centre."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (points - centre) @ rot.T + centre


def test_landmark_crop_turns_a_rolled_face_upright_with_its_upright_box():
    from prn_blender.core.crop import crop_from_landmarks, crop_points, landmark_roll_deg
    from prn_blender.core.layout import load_layout

    texels = np.asarray(load_layout().landmark_texels, np.float64)
    centre = texels.mean(axis=0)
    upright = _rotate(texels * 1.7 + [40.0, 25.0], -landmark_roll_deg(texels), centre)
    assert landmark_roll_deg(upright) == pytest.approx(0.0, abs=1e-9)
    reference = crop_points(upright, crop_from_box((*upright.min(0), *upright.max(0))))
    for roll in (-40.0, 25.0, 170.0):
        rolled = _rotate(upright, roll, np.array([300.0, 200.0]))
        assert landmark_roll_deg(rolled) == pytest.approx(roll, abs=1e-9)
        crop = crop_from_landmarks(rolled)
        # The network sees exactly the upright face's training crop.
        np.testing.assert_allclose(crop_points(rolled, crop), reference, atol=1e-3)
        np.testing.assert_allclose(uncrop_points(reference, crop), rolled, atol=1e-3)
    # Up to the threshold the crop is the plain axis-aligned one.
    slight = _rotate(upright, 9.0, centre)
    np.testing.assert_array_equal(
        crop_from_landmarks(slight).matrix,
        crop_from_box((*slight.min(0), *slight.max(0))).matrix)
    shift = np.array([10.0, 0.0])
    shifted = crop_from_landmarks(upright, box_mapping=lambda b: b + np.tile(shift, 2))
    np.testing.assert_allclose(crop_points(upright + shift, shifted), reference,
                               atol=1e-3)
