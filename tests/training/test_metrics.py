"""NME, |yaw| bins, CED curves and the CED figure (DESIGN.md section 5)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from prn_blender.training import faces, metrics


def _face68_in_100px_box(rng: np.random.Generator) -> np.ndarray:
    """(1, 68, 2) points whose tight box is exactly [10, 110] x [20, 120] px."""
    points = rng.uniform([10, 20], [110, 120], size=(68, 2))
    points[0], points[16] = (10, 20), (110, 120)  # jaw ends pin the box
    return points[None]


def test_one_pixel_offset_on_100px_box_is_one_percent():
    labels = _face68_in_100px_box(np.random.default_rng(0))
    assert metrics.nme_300w(labels + np.array([1.0, 0.0]), labels) == pytest.approx([0.01])
    assert metrics.nme_300w(labels + np.array([3.0, 4.0]), labels) == pytest.approx([0.05])


def test_300w_nme_ignores_jaw_errors_but_normalises_by_all_68():
    labels = _face68_in_100px_box(np.random.default_rng(1))
    predicted = labels.copy()
    predicted[0, :17] += 50.0  # jaw far off: not evaluated
    predicted[0, 17:] += [0.0, 2.0]
    assert metrics.nme_300w(predicted, labels) == pytest.approx([0.02])
    # All 68 points: 17 at 50*sqrt(2) px and 51 at 2 px.
    expected = (17 * 50 * np.sqrt(2) + 51 * 2) / 68 / 100
    assert metrics.nme(predicted, labels) == pytest.approx([expected])


def test_box_normaliser_is_sqrt_of_width_times_height():
    labels = np.array([[[0.0, 0.0], [200.0, 50.0], [100.0, 10.0]]])
    assert metrics.box_normaliser(labels) == pytest.approx([100.0])
    visible = np.array([[True, False, True]])
    assert metrics.box_normaliser(labels, visible) == pytest.approx([np.sqrt(100.0 * 10.0)])


def test_aflw_nme_skips_invisible_points_and_ears_but_box_uses_visible_ears():
    labels = np.zeros((1, 21, 2))
    labels[0, :, 0] = np.linspace(20, 60, 21)
    labels[0, :, 1] = np.linspace(30, 70, 21)
    labels[0, 12] = (0.0, 30.0)  # left ear widens the box to [0, 60] x [30, 70]
    labels[0, 16] = (80.0, 30.0)  # right ear, not visible: not in the box
    visible = np.ones((1, 21), dtype=bool)
    visible[0, [16, 5]] = False
    labels[0, 16] = np.nan
    predicted = labels + np.array([0.0, 1.5])
    predicted[0, 12] += 100.0  # ear error is never counted
    predicted[0, 5] += 100.0  # invisible point's error is never counted
    normaliser = np.sqrt(60.0 * 40.0)
    assert metrics.nme_aflw(predicted, labels, visible) == pytest.approx([1.5 / normaliser])
    assert len(metrics.AFLW19_NAMES) == 19 and "left_ear" not in metrics.AFLW19_NAMES
    assert metrics.AFLW19_NAMES[0] == "left_brow_left"


def test_face_without_evaluated_points_is_nan():
    labels = np.full((1, 21, 2), np.nan)
    assert np.isnan(metrics.nme_aflw(np.zeros((1, 21, 2)), labels, np.zeros((1, 21), bool)))


def test_aflw_points_without_shift_are_the_named_ibug_points_and_means():
    points68 = np.arange(68 * 2, dtype=np.float64).reshape(68, 2)
    texels, weights = metrics.aflw_texel_table(points68, np.zeros((21, 2)))
    aflw21 = metrics.aflw21_from(texels[None], weights)[0]
    assert aflw21.shape == (21, 2)
    np.testing.assert_allclose(aflw21[0], points68[17])  # left brow left = iBUG 17
    np.testing.assert_allclose(aflw21[14], points68[30])  # nose centre = tip
    np.testing.assert_allclose(aflw21[7], points68[[37, 38, 40, 41]].mean(0))
    np.testing.assert_allclose(aflw21[20], points68[8])  # chin
    assert np.isnan(aflw21[list(faces.AFLW_EAR_INDICES)]).all()


def test_binned_nme_means_per_bin_and_balanced():
    yaw = np.array([0.0, 10.0, 29.9, 30.0, 59.0, 60.0, 90.0, -70.0, 45.0])
    face_nme = np.array([0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.10, 0.12, np.nan])
    summary = metrics.binned_nme(face_nme, yaw)
    assert summary.per_bin == pytest.approx((0.02, 0.05, 0.10))
    assert summary.counts == (3, 2, 3)
    assert summary.balanced == pytest.approx((0.02 + 0.05 + 0.10) / 3)
    assert summary.overall == pytest.approx(np.nanmean(face_nme))
    assert "balanced 5.67 %" in summary.format()


def test_ced_curve_counts_nan_faces_as_failures():
    thresholds, fraction = metrics.ced_curve(np.array([0.01, 0.02, 0.03, np.nan]), 0.04, 5)
    np.testing.assert_allclose(thresholds, [0.0, 0.01, 0.02, 0.03, 0.04])
    np.testing.assert_allclose(fraction, [0.0, 0.25, 0.5, 0.75, 0.75])


def test_ced_png_has_one_coloured_curve_per_method(tmp_path):
    rng = np.random.default_rng(2)
    curves = {"good": rng.uniform(0.01, 0.04, 300), "bad": rng.uniform(0.03, 0.09, 300)}
    path = metrics.write_ced_png(tmp_path / "ced.png", curves, size_px=(640, 400), title="t")
    bgr = cv2.imread(str(path))
    assert bgr.shape == (400, 640, 3)
    for colour in metrics._CURVE_COLOURS_BGR[:2]:
        hits = np.all(np.abs(bgr.astype(int) - colour) <= 10, axis=-1).sum()
        assert hits > 300  # the curve and its legend swatch
    assert not np.all(np.abs(bgr.astype(int) - metrics._CURVE_COLOURS_BGR[2]) <= 10, axis=-1).any()
    # Black axis frame at the plot's left edge.
    assert (bgr[200, 70] < 50).all()


def test_aflw_texel_table_shifts_each_points_sources_and_averages_them():
    texels68 = np.stack([np.arange(68.0), 100.0 + np.arange(68.0)], axis=1)
    shift = np.zeros((21, 2))
    shift[1] = [2.0, 3.0]  # left brow centre = iBUG 19
    shift[7] = [0.0, -1.0]  # left eye centre = mean of iBUG 37, 38, 40, 41
    texels, weights = metrics.aflw_texel_table(texels68, shift)
    points = np.concatenate([texels, np.zeros((len(texels), 1))], axis=1)[None]
    aflw21 = metrics.aflw21_from(points, weights)[0]
    np.testing.assert_allclose(aflw21[1, :2], texels68[19] + [2.0, 3.0])
    eye_centre = texels68[[37, 38, 40, 41]].mean(0)
    np.testing.assert_allclose(aflw21[7, :2], eye_centre + np.array([0.0, -1.0]))
    np.testing.assert_allclose(aflw21[20, :2], texels68[8])  # chin, unshifted
    assert np.isnan(aflw21[list(faces.AFLW_EAR_INDICES)]).all()
    assert len(texels) == sum(len(s) for s in metrics.AFLW21_FROM_IBUG68)


def test_teacher_aflw_weights_pick_and_combine_teacher_points():
    maps = {"aflw_from_mediapipe478": [5] * 21, "aflw_from_tddfa68": [[1 / 68] * 68] * 21}
    maps["aflw_from_mediapipe478"][12] = maps["aflw_from_tddfa68"][16] = None
    mp = np.random.default_rng(0).normal(size=(2, 478, 2))
    out = metrics.aflw21_from(mp, metrics.teacher_aflw_weights(maps, "mediapipe478"))
    np.testing.assert_allclose(out[:, 0], mp[:, 5])
    assert np.isnan(out[:, 12]).all() and np.isfinite(out[:, 13]).all()
    tddfa = mp[:, :68]
    out = metrics.aflw21_from(tddfa, metrics.teacher_aflw_weights(maps, "tddfa68"))
    np.testing.assert_allclose(out[:, 3], tddfa.mean(axis=1))
    assert np.isnan(out[:, 16]).all()
