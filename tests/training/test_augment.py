"""Augmentation keeps the image and its target position map in register (DESIGN.md section 3)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from prn_blender.core.crop import crop_from_box, crop_points
from prn_blender.net import prnet
from prn_blender.training import augment
from prn_blender.training.augment import NO_AUGMENTATION, AugmentSettings, make_sample
from tests.training.synthetic_shards import ellipsoid_face, synthetic_layout

GEOMETRY_ONLY = AugmentSettings(colour_range=(1.0, 1.0), occlusion_probability=0.0,
                                blur_probability=0.0)


def _face(seed: int = 0, side: int = 160, resolution: int = 64):
    layout = synthetic_layout(resolution)
    image, pm, box = ellipsoid_face(layout, side, np.random.default_rng(seed))
    return layout, image, pm, box


def test_network_range_matches_prnet():
    assert augment.POSITION_MIN_PX == pytest.approx(prnet.POSITION_MIN_PX)
    assert augment.POSITION_MAX_PX == pytest.approx(prnet.POSITION_MAX_PX)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_dot_at_landmark_lands_on_transformed_landmark_in_crop_and_target(seed):
    layout, image, pm, box = _face(seed)
    col, row = layout.landmark_texels[7].astype(int)
    dot_px = pm[row, col, :2]
    image = (image // 3).astype(np.uint8)  # darker face, so the dot is the brightest blob
    image[round(float(dot_px[1])), round(float(dot_px[0]))] = 255
    exact_dot = np.round(dot_px)  # the pixel actually painted
    rng = np.random.default_rng(seed)
    sample = make_sample(image, pm, box, layout.face_mask, layout.weight_mask, rng,
                         GEOMETRY_ONLY, resolution=256)
    expected = crop_points(exact_dot[None], sample.transform)[0]
    # brightest spot of the crop (centroid of the blurred dot)
    grey = cv2.cvtColor(sample.crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
    grey = cv2.GaussianBlur(grey, (0, 0), 1.0)
    ys, xs = np.nonzero(grey >= grey.max() - 1e-3)
    found = np.array([xs.mean(), ys.mean()])
    assert np.linalg.norm(found - expected) < 1.5  # crop pixels (~1.6-2.4 crop px per storage px)
    # the target at that landmark texel is the transformed landmark, to float16 precision
    target_xy = sample.target_px[row, col, :2]
    exact = crop_points(dot_px[None], sample.transform)[0]
    np.testing.assert_allclose(target_xy, exact, atol=0.05)


def test_augmentation_changes_geometry_and_is_reproducible_from_the_seed():
    layout, image, pm, box = _face(5)
    args = (image, pm, box, layout.face_mask, layout.weight_mask)
    a = make_sample(*args, np.random.default_rng([0, 1, 2]), AugmentSettings())
    b = make_sample(*args, np.random.default_rng([0, 1, 2]), AugmentSettings())
    c = make_sample(*args, np.random.default_rng([0, 1, 3]), AugmentSettings())
    np.testing.assert_array_equal(a.crop, b.crop)
    np.testing.assert_array_equal(a.target_px, b.target_px)
    assert not np.array_equal(a.target_px, c.target_px)
    plain = crop_from_box(box)
    assert not np.allclose(a.transform.matrix, plain.matrix)


def test_z_is_scaled_by_the_crop_scale_and_starts_at_zero():
    layout, image, pm, box = _face(6)
    sample = make_sample(image, pm, box, layout.face_mask, layout.weight_mask,
                         np.random.default_rng(0), NO_AUGMENTATION, resolution=256)
    face = layout.face_mask
    scale = crop_from_box(box).scale
    assert sample.transform.scale == pytest.approx(scale)
    z = sample.target_px[..., 2][face]
    assert z.min() == pytest.approx(0.0, abs=1e-4)
    np.testing.assert_allclose(z, (pm[..., 2][face] - np.nanmin(pm[..., 2])) * scale,
                               atol=1e-3)


def test_texels_outside_network_range_are_clamped_and_get_zero_weight():
    layout, image, pm, box = _face(7)
    pm = pm.copy()
    far = (slice(0, 64), slice(0, 20))  # left part of the face thrown 2000 px to the left
    pm[(*far, 0)] -= 2000.0
    sample = make_sample(image, pm, box, layout.face_mask, layout.weight_mask,
                         np.random.default_rng(0), NO_AUGMENTATION, resolution=256)
    moved = np.zeros_like(layout.face_mask)
    moved[far] = True
    moved &= layout.face_mask
    assert moved.sum() > 50
    assert np.all(sample.weights[moved] == 0)
    assert np.all(sample.target_px[moved][:, 0] == pytest.approx(-76.8))
    kept = layout.face_mask & ~moved
    np.testing.assert_array_equal(sample.weights[kept], layout.weight_mask[kept])
    assert np.all(sample.weights[~layout.face_mask] == 0)
    assert np.isfinite(sample.target_px).all()


def test_face_at_storage_edge_gets_reflected_not_black_borders():
    layout, image, pm, box = _face(8, side=120)
    image = np.clip(image.astype(int) + 40, 0, 255).astype(np.uint8)  # no black pixel anywhere
    sample = make_sample(image, pm, box, layout.face_mask, layout.weight_mask,
                         np.random.default_rng(3), GEOMETRY_ONLY, resolution=256)
    side = 1.5 * np.mean(box[2:] - box[:2])
    assert side > 0.5 * 120  # the crop does run past the storage image
    assert sample.crop.max(axis=-1).min() >= 30


def test_black_canvas_is_trimmed_and_filled_and_registration_is_kept():
    layout, image, pm, _ = _face(10, side=120)
    image = np.clip(image.astype(int) + 40, 0, 255).astype(np.uint8)
    col, row = layout.landmark_texels[20].astype(int)
    dot = np.round(pm[row, col, :2]).astype(int)
    image[dot[1], dot[0]] = 255
    image = (image * np.array([0.5, 0.5, 0.5])).astype(np.uint8)  # dot stays the brightest
    image[dot[1], dot[0]] = 255
    # UTKFace-like storage image: the photo rotated by 10 degrees (black wedges), pasted at
    # (30, 20) into a black 200 x 180 canvas; the target moves with it
    rotation = cv2.getRotationMatrix2D((60, 60), 10, 1.0)
    rotated = cv2.warpAffine(image, rotation, (120, 120), flags=cv2.INTER_NEAREST)
    canvas = np.zeros((180, 200, 3), np.uint8)
    canvas[20:140, 30:150] = rotated
    moved = pm.copy()
    moved[..., :2] = pm[..., :2] @ rotation[:, :2].T + rotation[:, 2] + [30, 20]
    content, offset = augment.remove_black_canvas(canvas)
    np.testing.assert_array_equal(offset, [32, 22])  # the 2-px seam is trimmed too
    assert content.shape == (116, 116, 3)
    assert content.max(axis=-1).min() > augment.BLACK_LEVEL
    lm = moved[layout.landmark_texels[:, 1].astype(int), layout.landmark_texels[:, 0].astype(int)]
    new_box = np.array([*lm[:, :2].min(0), *lm[:, :2].max(0)], np.float32)
    sample = make_sample(canvas, moved, new_box, layout.face_mask, layout.weight_mask,
                         np.random.default_rng(1), GEOMETRY_ONLY, resolution=256)
    assert np.percentile(sample.crop.max(axis=-1), 1) > 20  # no black margins in the crop
    grey = cv2.GaussianBlur(cv2.cvtColor(sample.crop, cv2.COLOR_RGB2GRAY).astype(np.float32),
                            (0, 0), 1.0)
    ys, xs = np.nonzero(grey >= grey.max() - 1e-3)
    np.testing.assert_allclose([xs.mean(), ys.mean()], sample.target_px[row, col, :2], atol=2.0)


def test_image_without_canvas_is_left_unchanged():
    image = np.full((50, 60, 3), 100, np.uint8)
    image[10:15, 0:4] = 0  # a small dark patch (0.7 %) at the border is not a canvas
    content, offset = augment.remove_black_canvas(image)
    assert content is image or np.array_equal(content, image)
    np.testing.assert_array_equal(offset, [0, 0])


def test_pixel_augmentations_stay_in_uint8_and_do_not_move_the_target():
    layout, image, pm, box = _face(9)
    strong = AugmentSettings(occlusion_probability=1.0, blur_probability=1.0)
    s1 = make_sample(image, pm, box, layout.face_mask, layout.weight_mask,
                     np.random.default_rng(11), strong, resolution=64)
    assert s1.crop.dtype == np.uint8 and s1.crop.shape == (64, 64, 3)
    assert s1.target_px.dtype == np.float32 and s1.weights.shape == (64, 64)


MIRROR_ONLY = AugmentSettings(rotation_deg=0.0, shift_fraction=0.0, scale_range=(1.0, 1.0),
                              colour_range=(1.0, 1.0), occlusion_probability=0.0,
                              blur_probability=0.0, mirror_probability=1.0)


def _posed_sample(layout, yaw: float, roll: float, centre_x: float, photo: np.ndarray,
                  settings: AugmentSettings, box: np.ndarray | None = None):
    """(sample, box): the ICT neutral posed in `photo`; box = its landmarks' tight box."""
    from prn_blender.core.geometry import landmarks_from_position_map
    from tests.core.conftest import pose_ict_neutral

    face = pose_ict_neutral(layout, yaw_deg=yaw, pitch_deg=8.0, roll_deg=roll,
                            scale_px_per_cm=10.0, translation_px=(centre_x, 150.0, 300.0))
    if box is None:
        lm = landmarks_from_position_map(face.position_map, layout)[:, :2]
        box = np.array([*lm.min(0), *lm.max(0)])
    return make_sample(photo, face.position_map, box, layout.face_mask, layout.weight_mask,
                       np.random.default_rng(0), settings, resolution=layout.resolution), box


def test_mirrored_sample_of_a_turned_face_is_that_face_turned_the_other_way():
    """Mirror augmentation of the ICT neutral at yaw 30, roll 12 (x = 140 in a 320 px photo)
    must give the crop and target of the face at yaw -30, roll -12 in the mirrored photo
    (x = 319 - 140): columns of the ICT layout are mirror pairs, x becomes R - 1 - x."""
    from prn_blender.core.layout import load_layout

    layout = load_layout()
    assert layout.is_mirror_symmetric
    yy, xx = np.mgrid[0:300, 0:320].astype(np.float32)
    photo = np.stack([xx * 0.7, yy * 0.8, 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)],
                     -1).clip(0, 255).astype(np.uint8)
    mirrored, box = _posed_sample(layout, 30.0, 12.0, 140.0, photo, MIRROR_ONLY)
    # the mirrored photo's box is the mirror of this one (the calibrated 68 are not exactly
    # mirror pairs in the layout, so recomputing it would move the crop by ~0.3 px)
    expected, _ = _posed_sample(layout, -30.0, -12.0, 319.0 - 140.0,
                                np.ascontiguousarray(photo[:, ::-1]), NO_AUGMENTATION,
                                np.array([319.0 - box[2], box[1], 319.0 - box[0], box[3]]))
    plain, _ = _posed_sample(layout, 30.0, 12.0, 140.0, photo, NO_AUGMENTATION)
    assert mirrored.mirrored and not expected.mirrored
    face = layout.face_mask
    error = np.linalg.norm(mirrored.target_px - expected.target_px, axis=-1)[face]
    assert np.median(error) < 0.01 and error.max() < 1.0  # crop px; layout asymmetry 0.07 cm
    assert np.linalg.norm(plain.target_px - expected.target_px, axis=-1)[face].mean() > 20
    np.testing.assert_array_equal(mirrored.weights > 0, expected.weights > 0)
    diff = np.abs(mirrored.crop.astype(int) - expected.crop.astype(int))
    assert diff.mean() < 0.5  # grey levels: the same crop up to resampling

