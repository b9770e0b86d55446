"""The ICT fit recovers known shapes and poses; target position maps follow the fit exactly."""

from __future__ import annotations

import numpy as np
import pytest

from prn_blender.core.geometry import landmarks_from_position_map
from prn_blender.core.layout import load_layout
from prn_blender.training.fit import (
    FitSettings,
    Observations,
    bounded_ridge,
    fit_face,
    surface_basis,
)
from tests.conftest import needs_shared


def _rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    y, p, r = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def test_bounded_ridge_matches_the_box_constrained_optimum() -> None:
    from scipy.optimize import lsq_linear

    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 12))
    b = rng.normal(size=40) * 3
    lo = np.r_[np.full(6, -np.inf), np.zeros(6)]
    hi = np.r_[np.full(6, np.inf), np.ones(6)]
    x = bounded_ridge(a.T @ a + 0.1 * np.eye(12), a.T @ b, lo, hi)
    ref = lsq_linear(np.vstack([a, np.sqrt(0.1) * np.eye(12)]), np.r_[b, np.zeros(12)],
                     bounds=(lo, hi)).x
    np.testing.assert_allclose(x, ref, atol=1e-6)


@needs_shared
def test_fit_recovers_known_shape_and_pose_from_68_points() -> None:
    from prn_blender.training.ict import load_ict

    ict = load_ict()
    lm = ict.landmark_vertices
    basis = surface_basis(ict.neutral, ict.identity, ict.expression,
                          np.stack([lm, lm, lm], 1), np.tile([1.0, 0.0, 0.0], (68, 1)))
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(5):
        identity = rng.normal(size=100) * 0.5
        expression = np.clip(rng.normal(0.2, 0.2, 53), 0, 1) * (rng.random(53) < 0.15)
        rot = _rotation(rng.uniform(-50, 50), rng.uniform(-15, 15), rng.uniform(-20, 20))
        points = 8.0 * basis.points(identity, expression) @ rot.T + [128.0, 120.0, 40.0]
        points[:, 2] -= points[:, 2].min()
        fit = fit_face(basis, Observations(points, np.arange(68)), FitSettings())
        fitted = fit.to_photo(basis.points(fit.identity, fit.expression))
        errors.append(np.abs(fitted[:, :2] - points[:, :2]).mean())
        assert fit.scale == pytest.approx(8.0, rel=0.05)
        angle = np.degrees(np.arccos(np.clip((np.trace(fit.rotation.T @ rot) - 1) / 2, -1, 1)))
        assert angle < 3.0
    # 68 exact points, 153 unknowns and a prior: sub-pixel on a ~130 px wide face.
    assert np.mean(errors) < 0.5


@needs_shared
def test_target_position_map_carries_the_fitted_landmarks() -> None:
    from prn_blender.training.ict import load_ict
    from prn_blender.training.targets import (
        fitted_landmarks,
        fitted_position_map,
        kept_model,
        landmark_basis,
    )

    layout = load_layout()
    ict = load_ict()
    basis = landmark_basis(layout, ict.neutral, ict.identity, ict.expression)
    model = kept_model(layout, ict.neutral, ict.identity, ict.expression)
    rng = np.random.default_rng(3)
    identity, expression = rng.normal(size=100) * 0.5, np.zeros(53)
    rot = _rotation(20, 5, -10)
    points = 6.0 * basis.points(identity, expression) @ rot.T + [100.0, 110.0, 0.0]
    fit = fit_face(basis, Observations(points, np.arange(68)), FitSettings())

    class Ctx:  # the parts of TargetContext fitted_landmarks uses
        pass

    ctx = Ctx()
    ctx.basis = basis  # type: ignore[attr-defined]
    pm = fitted_position_map(layout, model, fit)
    assert np.isfinite(pm[layout.face_mask]).all() and np.isnan(pm[~layout.face_mask]).all()
    assert np.nanmin(pm[..., 2]) == pytest.approx(0.0, abs=1e-4)
    from_map = landmarks_from_position_map(pm, layout)
    direct = fitted_landmarks(ctx, fit)  # type: ignore[arg-type]
    # Bilinear reads of the rasterised mesh vs exact surface points: within 0.5 px (x, y) at
    # 6 px per cm (eye corners next to the one-texel eye holes are the worst, ~0.35 px).
    np.testing.assert_allclose(from_map[:, :2], direct[:, :2], atol=0.5)


def _record(set_name: str, labels: np.ndarray, visible: np.ndarray | None = None):
    from prn_blender.training.faces import FaceRecord

    return FaceRecord(set_name, "face", "face.jpg", labels.astype(np.float32), float("nan"),
                      None, 256, visible)


def test_label_correction_pulls_the_target_landmarks_onto_the_hand_labels() -> None:
    from prn_blender.core.geometry import bilinear_sample
    from prn_blender.training.metrics import (
        AFLW19_INDICES,
        IBUG68_NON_JAW,
        aflw21_from,
        aflw_texel_table,
        nme,
    )
    from prn_blender.training.targets import label_corrected_map, label_points

    layout = load_layout()
    r = layout.resolution
    rows, cols = np.mgrid[0:r, 0:r].astype(np.float32)
    # A face map whose x/y are the texel coordinates (1 px per texel), depth a bump.
    pm = np.stack([cols, rows, 0.01 * ((cols - 128) ** 2 + (rows - 128) ** 2)], axis=-1)
    pm[~layout.face_mask] = np.nan
    fitted = landmarks_from_position_map(pm, layout)
    rng = np.random.default_rng(0)
    truth = fitted[:, :2] * 1.08 - 7.0 + rng.normal(0, 1.0, (68, 2))  # the labeller's points
    no_shift = np.zeros((21, 2))

    labels = truth.copy()
    labels[:17] += 30.0  # 300W's jaw is a silhouette convention: never pulled to
    labels[30] += 60.0  # a label error (far beyond 10 % of the face): ignored
    out = label_corrected_map(pm, layout, label_points(_record("300w", labels), layout, no_shift))
    moved = landmarks_from_position_map(out, layout)
    inner = [i for i in IBUG68_NON_JAW if i != 30]
    before = nme(fitted[None, inner], truth[None, inner])[0]
    after = nme(moved[None, inner], truth[None, inner])[0]
    assert before > 0.025 and after < 0.1 * before
    assert np.abs(moved[:17, :2] - truth[:17]).max() < 12.0  # jaw follows its neighbours only
    assert abs(moved[30, 1] - labels[30, 1]) > 40.0
    # Depth only follows the similarity's scale (the labels are the face 1.08x as large).
    ratio = out[..., 2][layout.face_mask & (pm[..., 2] > 1)] / pm[..., 2][
        layout.face_mask & (pm[..., 2] > 1)]
    assert abs(ratio.mean() - 1.08) < 0.01 and np.ptp(ratio) < 1e-4
    assert np.isnan(out[~layout.face_mask]).all() and np.isfinite(out[layout.face_mask]).all()

    # AFLW: its points sit at their sources' texels shifted (here brows 3 texels down, nose
    # wings 4 outwards); the labels are pulled there, not at the iBUG texels.
    shift = no_shift.copy()
    shift[:6] = [0.0, 3.0]
    shift[13], shift[15] = [-4.0, 0.0], [4.0, 0.0]
    shift[[12, 16]] = np.nan

    def read21(position_map: np.ndarray, uv_shift: np.ndarray) -> np.ndarray:
        texels, weights = aflw_texel_table(layout.landmark_texels, uv_shift)
        points = bilinear_sample(position_map, texels, layout.face_mask)
        return aflw21_from(points[None], weights)[0]

    aflw = read21(pm, shift)[:, :2] * 1.08 - 7.0 + rng.normal(0, 1.0, (21, 2))
    visible = np.isfinite(aflw).all(axis=1)
    visible[7] = False  # an invisible eye centre is not a control, wherever its label is
    aflw[7] += [0.0, 8.0]
    aflw[10] = np.nan  # nor is an unlabelled one
    visible_nan = visible.copy()
    visible_nan[10] = True  # even when flagged visible
    points = label_points(_record("aflw", aflw, visible_nan), layout, shift)
    out = label_corrected_map(pm, layout, points)
    seen = tuple(i for i in AFLW19_INDICES if visible[i] and i != 10)
    moved21, fitted21 = read21(out, shift)[None], read21(pm, shift)[None]
    assert nme(moved21, aflw[None], seen)[0] < 0.1 * nme(fitted21, aflw[None], seen)[0]
    # Read at the unshifted (iBUG) texels, the brows and nose wings miss their labels.
    unshifted = read21(out, no_shift)
    for k in (1, 4, 13, 15):
        assert np.linalg.norm(unshifted[k, :2] - aflw[k]) > 2.5, k
    # The invisible point stays where its neighbours take it, far from its moved label.
    assert np.linalg.norm(moved21[0, 7, :2] - aflw[7]) > 5.0
    # UTKFace has no labels (and no pseudo-labels given): nothing to pull to.
    from prn_blender.training.faces import FaceRecord

    utk = FaceRecord("utkface", "u", "u.jpg", None, float("nan"), None, 200)
    assert label_points(utk, layout, no_shift) is None
    np.testing.assert_array_equal(label_corrected_map(pm, layout, None), pm)


def test_label_correction_opens_an_eye_locally_without_distant_lobes() -> None:
    """Labels marking both eyes 8 px more open than the fit (lids 2 texels apart in UV): the
    lids follow, and the face a few texels away hardly moves (a single wide pass moved the
    lids only 1.4-2.0 px and texels 10 texels away by up to 10 px)."""
    from prn_blender.training.targets import ibug_label_points, label_corrected_map

    layout = load_layout()
    r = layout.resolution
    rows, cols = np.mgrid[0:r, 0:r].astype(np.float32)
    pm = np.stack([cols, rows, np.zeros_like(cols)], axis=-1)
    pm[~layout.face_mask] = np.nan
    fitted = landmarks_from_position_map(pm, layout)[:, :2]
    upper, lower = [37, 38, 43, 44], [40, 41, 46, 47]
    labels = fitted.copy()
    labels[upper, 1] -= 4.0
    labels[lower, 1] += 4.0
    out = label_corrected_map(pm, layout, ibug_label_points(layout, labels))
    moved = landmarks_from_position_map(out, layout)[:, :2] - fitted
    assert (moved[upper, 1] < -3.0).all() and (moved[lower, 1] > 3.0).all()
    others = np.delete(np.arange(68), upper + lower)
    assert np.abs(moved[others]).max() < 0.3
    shift = np.linalg.norm((out - pm)[..., :2], axis=-1)
    eyes = np.asarray(layout.landmark_texels)[36:48]
    distance = np.hypot(cols[..., None] - eyes[:, 0], rows[..., None] - eyes[:, 1]).min(-1)
    assert np.nanmax(shift[layout.face_mask & (distance > 8)]) < 1.5
    assert np.nanmax(shift) < 1.5 * 4.0


def test_unlabelled_faces_take_mediapipe_68_as_labels_up_to_40_degrees_yaw() -> None:
    """UTKFace targets are pulled onto MediaPipe's 68 (its jaw excepted) when the fitted head
    turns at most 40 degrees; labelled sets, turned heads and missed faces are left alone."""
    from prn_blender.training.faces import FaceRecord
    from prn_blender.training.metrics import IBUG68_NON_JAW, load_point_maps, nme
    from prn_blender.training.targets import (
        ibug_label_points,
        label_corrected_map,
        pseudo_labels,
    )
    from tests.core.conftest import pose_ict_neutral

    layout = load_layout()
    mp68 = load_point_maps()["mediapipe68"]
    utk = FaceRecord("utkface", "u", "u.jpg", None, float("nan"), None, 200)
    for yaw, expected in ((25.0, True), (-35.0, True), (50.0, False)):
        pm = pose_ict_neutral(layout, yaw, 5.0, 3.0, 10.0, (120.0, 110.0, 100.0)).position_map
        fitted = landmarks_from_position_map(pm, layout)[:, :2]
        truth = fitted * 1.04 - 3.0 + np.random.default_rng(1).normal(0, 0.8, (68, 2))
        mediapipe = np.full((478, 3), 50.0)
        mediapipe[mp68, :2] = truth
        pseudo = pseudo_labels(utk, pm, layout, mediapipe, mp68)
        assert (pseudo is not None) == expected, yaw
        if pseudo is None:
            continue
        np.testing.assert_array_equal(pseudo, truth)
        moved = landmarks_from_position_map(
            label_corrected_map(pm, layout, ibug_label_points(layout, pseudo)), layout)
        inner = list(IBUG68_NON_JAW)
        before = nme(fitted[None, inner], truth[None, inner])[0]
        assert nme(moved[None, inner], truth[None, inner])[0] < 0.1 * before
        missed = mediapipe.copy()
        missed[mp68[40]] = np.nan
        assert pseudo_labels(utk, pm, layout, missed, mp68) is None
        assert pseudo_labels(utk, pm, layout, None, mp68) is None
        w300 = _record("300w", truth)
        assert pseudo_labels(w300, pm, layout, mediapipe, mp68) is None


def test_label_correction_first_moves_the_whole_face_onto_the_labels() -> None:
    """Labels that are the fitted face turned 4 degrees, scaled 1.03x and shifted (as a fit
    that sits off the labels as a whole): the whole corrected map, far from any landmark
    too, becomes that transformed face, with its depth scaled alike."""
    from prn_blender.training.targets import ibug_label_points, label_corrected_map

    layout = load_layout()
    r = layout.resolution
    rows, cols = np.mgrid[0:r, 0:r].astype(np.float32)
    pm = np.stack([cols, rows, 0.01 * ((cols - 128) ** 2 + (rows - 128) ** 2)], axis=-1)
    pm[~layout.face_mask] = np.nan
    a = np.deg2rad(4.0)
    rot = 1.03 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    shift = np.array([2.5, -1.5])
    labels = landmarks_from_position_map(pm, layout)[:, :2] @ rot.T + shift
    out = label_corrected_map(pm, layout, ibug_label_points(layout, labels))
    expected = pm[..., :2] @ rot.T + shift
    face = layout.face_mask
    assert np.abs(out[face, :2] - expected[face]).max() < 0.05
    np.testing.assert_allclose(out[face, 2], 1.03 * pm[face, 2], rtol=1e-4)
    # Too few label points for a similarity: only the local correction, near them.
    few = ibug_label_points(layout, labels)
    few = type(few)(few.texels[:3], few.group[:3], few.labels[:3])
    out = label_corrected_map(pm, layout, few)
    far = face & (np.hypot(cols - few.texels[:, :1].mean(), rows - few.texels[:, 1:].mean())
                  > 60)
    np.testing.assert_allclose(out[far], pm[far], atol=1e-3)
