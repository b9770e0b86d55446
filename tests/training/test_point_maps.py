"""Point mappings fitted on training faces (point_maps.py): AFLW texel shifts, teacher weights."""

from __future__ import annotations

import numpy as np

from prn_blender.core.geometry import bilinear_sample
from prn_blender.core.layout import load_layout
from prn_blender.training import metrics
from prn_blender.training.faces import AFLW_EAR_INDICES
from prn_blender.training.point_maps import UV_SHIFT_RADIUS, UVShiftScores, affine_weights
from tests.conftest import needs_shared
from tests.core.conftest import pose_ict_neutral


def test_uv_shift_scores_recover_the_labellers_shifts_on_posed_faces() -> None:
    """Labels placed where each AFLW point's texels, shifted by a known amount, land on the ICT
    neutral turned to several poses: the scores find exactly those shifts."""
    layout = load_layout()
    truth = np.zeros((21, 2))
    truth[:6] = [0.0, 3.0]  # brows lower
    truth[13], truth[15] = [-5.0, -3.0], [3.0, -4.0]  # nose wings
    truth[14] = [1.0, 3.0]
    truth[20] = [1.0, -3.0]  # chin
    truth[[12, 16]] = np.nan
    texels, weights = metrics.aflw_texel_table(layout.landmark_texels, truth)
    scores = UVShiftScores(layout)
    rng = np.random.default_rng(0)
    for yaw, pitch in ((0, 0), (20, -5), (-25, 10), (35, 0), (-10, -10)):
        pm = pose_ict_neutral(layout, yaw, pitch, 3.0, 9.0, (130.0, 120.0, 100.0)).position_map
        labels = metrics.aflw21_from(bilinear_sample(pm, texels, layout.face_mask)[None],
                                     weights)[0, :, :2] + rng.normal(0, 0.05, (21, 2))
        visible = np.isfinite(labels).all(axis=1)
        scores.add(pm, labels, visible)
    found, errors = scores.best()
    np.testing.assert_array_equal(np.isnan(found), np.isnan(truth))
    np.testing.assert_array_equal(found[~np.isnan(truth)], truth[~np.isnan(truth)])
    for k, (unshifted, best) in errors.items():
        assert best <= unshifted
        assert best < 0.005, k  # half a percent of the face: the label noise only
    assert errors[13][0] > 0.03  # the iBUG texel of a nose wing is far off


def test_affine_weights_recover_a_known_combination_and_sum_to_one() -> None:
    rng = np.random.default_rng(1)
    faces = 400
    points = rng.normal(0, 20, (faces, 68, 2)) + rng.uniform(50, 150, (faces, 1, 2))
    truth = np.zeros(68)
    truth[[19, 24]] = 0.7, 0.5
    truth[30] = -0.2  # sums to 1: an affine combination
    labels = np.einsum("k,fkc->fc", truth, points)
    prior = np.zeros(68)
    prior[19] = 1.0
    weights = affine_weights(points, labels, np.full(faces, 40.0), prior, ridge=1e-6)
    assert abs(weights.sum() - 1.0) < 1e-9
    np.testing.assert_allclose(weights, truth, atol=1e-3)
    # A strong ridge keeps the prior.
    weights = affine_weights(points, labels, np.full(faces, 40.0), prior, ridge=1e6)
    np.testing.assert_allclose(weights, prior, atol=1e-3)


@needs_shared
def test_committed_point_maps_fit_the_installed_layout() -> None:
    """model_weights/eval_point_maps.json: texel shifts for this layout within the searched
    radius, and teacher mappings for AFLW's 19 evaluated points (the ears have none)."""
    layout = load_layout()
    maps = metrics.load_point_maps()
    shift = metrics.stored_aflw_uv_shift(layout.layout_id)
    ears = list(AFLW_EAR_INDICES)
    assert np.isnan(shift[ears]).all()
    evaluated = shift[list(metrics.AFLW19_INDICES)]
    assert np.isfinite(evaluated).all() and np.abs(evaluated).max() < UV_SHIFT_RADIUS
    tddfa = metrics.teacher_aflw_weights(maps, "tddfa68")
    np.testing.assert_allclose(tddfa[list(metrics.AFLW19_INDICES)].sum(axis=1), 1.0)
    picks = maps["aflw_from_mediapipe478"]
    assert [i for i, p in enumerate(picks) if p is None] == ears
    assert all(0 <= p < 478 for p in picks if p is not None)
    texels, _ = metrics.aflw_texel_table(layout.landmark_texels, shift)
    ij = np.rint(texels).astype(int)
    assert layout.face_mask[ij[:, 1], ij[:, 0]].all()


def test_uv_shift_scores_fit_single_ibug_points_for_a_weights_readout() -> None:
    """The readout's use (training/readout.py): each iBUG point its own source, 68 labels.
    Labels read a few texels off the calibrated texels on posed faces: exactly those shifts
    come back, and points whose labels sit at their texels keep a zero shift."""
    layout = load_layout()
    truth = np.zeros((68, 2))
    truth[21], truth[22] = [3.0, 0.0], [-3.0, 1.0]  # inner brow ends pulled together
    truth[48], truth[54] = [2.0, 0.0], [2.0, 0.0]  # mouth corners right
    points = tuple(range(17, 68))
    scores = UVShiftScores(layout, 6, sources={k: (k,) for k in points})
    for yaw, pitch in ((0, 0), (20, -5), (-25, 10), (35, 0)):
        pm = pose_ict_neutral(layout, yaw, pitch, 3.0, 9.0, (130.0, 120.0, 100.0)).position_map
        labels = bilinear_sample(pm, layout.landmark_texels + truth, layout.face_mask)[:, :2]
        scores.add(pm, labels, np.ones(68, bool))
    found, errors = scores.best()
    assert np.isnan(found[:17]).all()  # the jaw has no source: never fitted
    np.testing.assert_array_equal(found[17:], truth[17:])
    assert errors[21][0] > 0.01 and errors[21][1] < 1e-6


def test_label_reader_uses_a_weights_files_fitted_readout() -> None:
    """evaluate.LabelReader: without weights info, 300W at the layout's texels and AFLW at the
    stored shifts; with a readout, at the readout's texels and shifts."""
    import dataclasses

    from prn_blender.net.weights import WeightsInfo
    from prn_blender.training.evaluate import LabelReader

    layout = load_layout()
    pm = pose_ict_neutral(layout, 15, -5, 3.0, 9.0, (130.0, 120.0, 100.0)).position_map
    plain = LabelReader(layout)
    np.testing.assert_allclose(plain(pm, "300w"),
                               bilinear_sample(pm, layout.landmark_texels, layout.face_mask))
    texels = layout.landmark_texels + np.array([0.0, 2.0])
    shifts = np.zeros((21, 2))
    shifts[[12, 16]] = np.nan
    info = dataclasses.replace(
        WeightsInfo(layout.layout_id, 1, True), landmark_texels=texels.tolist(),
        aflw_uv_shift=[None if np.isnan(s).any() else s.tolist() for s in shifts])
    fitted = LabelReader(layout, info)
    assert fitted.fitted and not plain.fitted
    np.testing.assert_allclose(fitted(pm, "300w"),
                               bilinear_sample(pm, texels, layout.face_mask))
    table, weights = metrics.aflw_texel_table(layout.landmark_texels, shifts)
    expected = metrics.aflw21_from(bilinear_sample(pm, table, layout.face_mask)[None], weights)
    np.testing.assert_allclose(fitted(pm, "aflw"), expected[0])
    assert np.nanmax(np.abs(plain(pm, "aflw") - expected[0])) > 0.5  # stored shifts differ
