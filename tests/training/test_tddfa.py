"""3DDFA-V2 landmark teacher: CONTENTS.md self-test values, ROI rules, crop padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prn_blender.training import faces, metrics, tddfa
from tests.conftest import SHARED, SHARED_DATA, needs_shared


@pytest.fixture(scope="module")
def teacher() -> tddfa.TDDFATeacher:
    torch.set_num_threads(1)
    return tddfa.TDDFATeacher(SHARED_DATA / "3ddfa-v2")


def test_landmark_roi_is_sqrt2_times_longer_side_square_on_box_centre():
    points = np.array([[10.0, 20.0], [110.0, 70.0], [60.0, 40.0]])  # box 100 x 50, centre (60, 45)
    half = np.sqrt(2) * 100 / 2
    np.testing.assert_allclose(
        tddfa.roi_from_landmarks(points), [60 - half, 45 - half, 60 + half, 45 + half]
    )
    batched = tddfa.roi_from_landmarks(np.stack([points, points + 5.0]))
    np.testing.assert_allclose(batched[1] - batched[0], [5.0, 5.0, 5.0, 5.0])


def test_detector_roi_moves_down_14_percent_and_truncates_side():
    # m = 100: centre (50, 50 + 14), side floor(158) = 158.
    np.testing.assert_allclose(
        tddfa.roi_from_box(np.array([0.0, 0.0, 100.0, 100.0])), [-29.0, -15.0, 129.0, 143.0]
    )
    # m = 100.5: side floor(158.79) = 158, not 158.79.
    roi = tddfa.roi_from_box(np.array([0.0, 0.0, 101.0, 100.0]))
    assert roi[2] - roi[0] == pytest.approx(158.0)


def test_preprocess_pads_outside_the_photo_with_black():
    image = np.full((100, 100, 3), 255, dtype=np.uint8)
    batch = tddfa.preprocess(image, np.array([-100.0, 0.0, 100.0, 200.0]))
    assert batch.shape == (3, 120, 120) and batch.dtype == np.float32
    assert batch[:, :, :55] == pytest.approx(-127.5 / 128)  # left half: outside, black
    assert batch[:, :55, 65:] == pytest.approx(127.5 / 128)  # top right: white photo
    assert batch[:, 65:, 65:] == pytest.approx(-127.5 / 128)  # below the photo: black


@needs_shared
def test_all_zero_input_reproduces_contents_self_test(teacher):
    raw = teacher.raw_params(np.zeros((1, 3, 120, 120), dtype=np.float32))[0]
    np.testing.assert_allclose(
        raw[0:6], [-0.47497, -1.47504, 0.53189, -0.63728, -0.18853, -0.45572], atol=1e-4
    )
    np.testing.assert_allclose(raw[12:15], [1.65868, -0.24647, -0.46417], atol=1e-4)
    np.testing.assert_allclose(raw[52:55], [-0.976716, -0.000342745, 0.00428867], atol=1e-4)
    points = teacher.decode(raw[None], np.array([[0.0, 0.0, 120.0, 120.0]]))[0]
    np.testing.assert_allclose(
        points[[0, 8, 30]],
        [[24.310, 45.413, 51.647], [73.620, 106.029, 52.157], [74.729, 51.139, 58.614]],
        atol=2e-3,
    )


@needs_shared
def test_300w_face_reproduces_contents_self_test(teacher):
    record = next(r for r in faces.load_face_set("300w", SHARED) if r.name == "afw_1051618982_1")
    roi = tddfa.roi_from_landmarks(record.landmarks)
    np.testing.assert_allclose(roi, [14.6164, 14.5597, 240.6228, 240.5662], atol=1e-3)
    image_bgr = faces.load_image(record, SHARED)[:, :, ::-1]
    batch = tddfa.preprocess(image_bgr, roi)[None]
    np.testing.assert_allclose(
        teacher.raw_params(batch)[0, :4], [1.37041, 0.36227, -0.01895, 0.01283], atol=1e-4
    )
    points = teacher.landmarks([image_bgr], roi[None])[0]
    np.testing.assert_allclose(
        points[[0, 8, 30, 36, 45]],
        [
            [46.148, 77.451, 0.000],
            [120.530, 197.968, 83.154],
            [124.035, 116.267, 126.714],
            [77.629, 74.087, 78.044],
            [174.418, 79.383, 80.003],
        ],
        atol=2e-3,
    )
    # Frame: larger z = closer, so the nose tip is the closest point of a frontal face.
    assert points[:, 2].min() == 0.0 and points[:, 2].argmax() in range(27, 36)


@needs_shared
def test_two_pass_from_label_free_starts_lands_on_hand_labels(teacher):
    records = faces.load_face_set("300w", SHARED)[:6]
    points, rois = tddfa.run_teacher(teacher, records, tddfa.StartROI.HAAR, batch_size=4)
    assert points.shape == (6, 68, 3) and points.dtype == np.float32 and rois.shape == (6, 4)
    # Second-pass ROIs are the first pass's landmark squares: square, holding the final points.
    np.testing.assert_allclose(rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1], atol=1e-3)
    assert np.all((points[:, :, :2] > rois[:, None, :2]) & (points[:, :, :2] < rois[:, None, 2:]))
    labels = np.stack([r.landmarks for r in records])
    assert np.all(metrics.nme_300w(points, labels) < 0.06)
    assert np.mean(metrics.nme_300w(points, labels)) < 0.04


@needs_shared
def test_batched_inference_equals_one_by_one(teacher):
    records = faces.load_face_set("aflw", SHARED)[:3]
    images = [faces.load_image(r, SHARED)[:, :, ::-1] for r in records]
    rois = np.array([[0.0, 0.0, 120.0, 120.0], [5.0, 3.0, 115.0, 113.0], [-10, -10, 130, 130]])
    together = teacher.landmarks(images, rois)
    alone = np.stack(
        [teacher.landmarks([img], roi[None])[0] for img, roi in zip(images, rois, strict=True)]
    )
    np.testing.assert_allclose(together, alone, atol=1e-3)
