"""Point mappings between predictors and the hand labels' conventions, fitted once on TRAINING
faces (never dev faces): `python -m prn_blender.training eval --fit-point-maps` writes them to
model_weights/eval_point_maps.json (metrics.POINT_MAPS_FILE, whose docstring lists the keys).

* MediaPipe 478 -> iBUG 68: per point, the MediaPipe point nearest the 300W hand labels.
* Our layout -> AFLW's 19 points (DESIGN.md section 5: "map each AFLW point to a UV location
  once, by fitting on training faces"): each point's iBUG source texels shifted by the whole
  texel shift, within `UV_SHIFT_RADIUS`, that brings them closest to AFLW's labels on the
  frontal AFLW training faces. The surfaces scored are fits that never saw AFLW's labels:
  the teachers' fit pulled onto MediaPipe's 68 (the UTKFace pseudo-label recipe), so the
  shift measures AFLW's conventions against iBUG's, not a teacher's offset. The target maker
  pulls AFLW's labels at these texels and the evaluation reads them there.
* The teachers -> AFLW, for a fair comparison beside ours: the 3DDFA-V2 teacher's AFLW
  points as affine combinations of its 68 (ridge towards `metrics.AFLW21_FROM_IBUG68`), and
  MediaPipe's as the one of its 478 points nearest the labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.geometry import bilinear_sample
from ..core.layout import UVLayout
from .faces import dev_names, load_face_set
from .metrics import AFLW19_INDICES, AFLW21_FROM_IBUG68, box_normaliser

UV_SHIFT_RADIUS = 16
"""Largest texel shift tried per axis (a texel is 1/256 of the layout, about 1.1 mm on the
ICT face); the fitted shifts reach 8."""
UV_SHIFT_MAX_YAW_DEG = 40.0
"""AFLW training faces up to this |yaw| fit the shifts: where MediaPipe's 68 are reliable
(targets.PSEUDO_LABEL_MAX_YAW_DEG)."""
ERROR_CLIP = 0.2
"""A face's error at one point counts at most this fraction of its normaliser, so a few
broken fits or label errors cannot move a shift."""
TDDFA_RIDGE = 0.01
"""Ridge of the 3DDFA-V2 -> AFLW weights towards the iBUG means, per face."""


def training_records(set_name: str) -> list:
    """A labelled set's faces outside the dev split."""
    dev = dev_names(set_name)
    return [r for r in load_face_set(set_name) if r.name not in dev]


def _mediapipe(teachers: Path, stem: str) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    with np.load(teachers / f"mediapipe478_{stem}.npz", allow_pickle=False) as m:
        index = {str(n): i for i, n in enumerate(m["names"])}
        return index, m["detected"].astype(bool), m["points"][:, :, :2].astype(np.float64)


def fit_mediapipe68(teachers: Path) -> list[int]:
    """Per iBUG point, the MediaPipe point with the smallest median distance to the 300W hand
    labels of the training faces MediaPipe found."""
    index, detected, points = _mediapipe(teachers, "300w")
    records = [r for r in training_records("300w") if detected[index[r.name]]]
    labels = np.stack([r.landmarks for r in records])
    pts = points[[index[r.name] for r in records]]
    return [int(np.argmin(np.median(np.linalg.norm(pts - labels[:, k : k + 1], axis=2), 0)))
            for k in range(68)]


def fit_aflw_from_mediapipe478(teachers: Path) -> list[int | None]:
    """Per AFLW point, the MediaPipe point with the smallest median normalised distance to the
    AFLW labels of the training faces MediaPipe found (None for the ears)."""
    index, detected, points = _mediapipe(teachers, "aflw_gt_crop")
    records = [r for r in training_records("aflw") if detected[index[r.name]]]
    pts = points[[index[r.name] for r in records]]
    labels = np.stack([r.landmarks for r in records]).astype(np.float64)
    visible = np.stack([r.visible for r in records])
    norm = box_normaliser(labels, visible)
    out: list[int | None] = [None] * 21
    for k in AFLW19_INDICES:
        use = visible[:, k] & np.isfinite(labels[:, k]).all(1)
        dist = np.linalg.norm(pts[use] - labels[use, k : k + 1], axis=2) / norm[use, None]
        out[k] = int(np.argmin(np.median(dist, axis=0)))
    return out


def fit_aflw_from_tddfa68(teachers: Path) -> list[list[float] | None]:
    """Per AFLW point, affine weights (68,) of the 3DDFA-V2 teacher's points, least squares on
    the AFLW training faces in units of each face's normaliser, ridge `TDDFA_RIDGE` towards
    the iBUG means (None for the ears; `affine_weights`)."""
    with np.load(teachers / "tddfa68.npz", allow_pickle=False) as t:
        index = {str(n): i for i, n in enumerate(t["aflw_names"])}
        teacher = t["aflw_landmarks"][:, :, :2].astype(np.float64)
    records = training_records("aflw")
    pts = teacher[[index[r.name] for r in records]]
    labels = np.stack([r.landmarks for r in records]).astype(np.float64)
    visible = np.stack([r.visible for r in records])
    norm = box_normaliser(labels, visible)
    out: list[list[float] | None] = [None] * 21
    for k in AFLW19_INDICES:
        use = visible[:, k] & np.isfinite(labels[:, k]).all(1) & np.isfinite(norm)
        prior = np.zeros(68)
        prior[list(AFLW21_FROM_IBUG68[k])] = 1.0 / len(AFLW21_FROM_IBUG68[k])
        out[k] = affine_weights(pts[use], labels[use, k], norm[use], prior).tolist()
    return out


def affine_weights(points: np.ndarray, labels: np.ndarray, normaliser: np.ndarray,
                   prior: np.ndarray, ridge: float = TDDFA_RIDGE) -> np.ndarray:
    """(K,) weights summing to 1 such that weights @ points[f] is closest to labels[f] in units
    of normaliser[f] (least squares, ridge `ridge` per face towards `prior`).

    points: (F, K, 2) px; labels: (F, 2) px; normaliser: (F,) px. Coordinates are taken from
    each face's centroid of its K points, so unconstrained weights w give the affine weights
    w + (1 - sum w) / K (the centroid, itself an affine combination, absorbs the rest)."""
    k = points.shape[1]
    centre = points.mean(axis=1, keepdims=True)
    a = ((points - centre) / normaliser[:, None, None]).transpose(0, 2, 1).reshape(-1, k)
    b = ((labels[:, None] - centre)[:, 0] / normaliser[:, None]).reshape(-1)
    lam = ridge * len(points)
    w = np.linalg.solve(a.T @ a + lam * np.eye(k), a.T @ b + lam * prior)
    return w + (1.0 - w.sum()) / k


AFLW_SOURCES = {k: tuple(AFLW21_FROM_IBUG68[k]) for k in AFLW19_INDICES}
"""AFLW point -> its iBUG source points (`UVShiftScores` default)."""


class UVShiftScores:
    """For each label point and each whole texel shift within `radius`, the mean over faces of
    the (clipped) normalised distance between the label and the mean of the point's shifted
    source texels read from the face's position map. Shifts that take a source texel out of
    the face mask are not candidates.

    sources: {label point k: indices of the layout's calibrated 68 whose texels make it},
    default AFLW's 19 points (labels of 21); iBUG labels of 68 take {k: (k,)}. `best` returns
    one row per label up to the last source's."""

    def __init__(self, layout: UVLayout, radius: int = UV_SHIFT_RADIUS,
                 sources: dict[int, tuple[int, ...]] | None = None) -> None:
        self.layout = layout
        self.sources = AFLW_SOURCES if sources is None else sources
        steps = np.arange(-radius, radius + 1)
        dx, dy = np.meshgrid(steps, steps)
        self.shifts = np.stack([dx.ravel(), dy.ravel()], axis=1).astype(np.float64)  # (C, 2)
        texels = np.asarray(layout.landmark_texels, np.float64)
        self.points = {k: texels[list(src)][None] + self.shifts[:, None]
                       for k, src in self.sources.items()}  # (C, S, 2)
        r = layout.resolution
        self.valid = {}
        for k, pts in self.points.items():
            ij = np.rint(pts).astype(np.int64)
            inside = ((ij >= 0) & (ij < r)).all(axis=2)
            ij = np.clip(ij, 0, r - 1)
            self.valid[k] = (inside & layout.face_mask[ij[..., 1], ij[..., 0]]).all(axis=1)
        self.total = {k: np.zeros(len(self.shifts)) for k in self.sources}
        self.count = dict.fromkeys(self.sources, 0)

    def add(self, position_map: np.ndarray, labels: np.ndarray, visible: np.ndarray) -> None:
        """One face: its (R, R, 3) position map and (K, 2) labels in the same
        pixels; the normaliser is the box of its visible labels (metrics.nme's)."""
        labels = np.asarray(labels, np.float64)[:, :2]
        norm = box_normaliser(labels[None], np.asarray(visible)[None])[0]
        if not np.isfinite(norm) or norm <= 0:
            return
        for k, pts in self.points.items():
            if not visible[k] or not np.isfinite(labels[k]).all():
                continue
            xy = bilinear_sample(position_map, pts.reshape(-1, 2), self.layout.face_mask)
            read = xy[:, :2].reshape(*pts.shape[:2], 2).mean(axis=1)
            err = np.linalg.norm(read - labels[k], axis=1) / norm
            self.total[k] += np.minimum(np.nan_to_num(err, nan=ERROR_CLIP), ERROR_CLIP)
            self.count[k] += 1

    def best(self) -> tuple[np.ndarray, dict[int, tuple[float, float]]]:
        """((max source key + 1, 2) best shift per point, NaN for points without sources or
        faces; {point: (mean error unshifted, mean error at the best shift)})."""
        out = np.full((max(self.sources) + 1, 2), np.nan)
        errors = {}
        centre = len(self.shifts) // 2
        for k in self.sources:
            if not self.count[k]:
                continue
            mean = np.where(self.valid[k], self.total[k] / self.count[k], np.inf)
            j = int(np.argmin(mean))
            out[k] = self.shifts[j]
            errors[k] = (float(mean[centre]), float(mean[j]))
        return out, errors


def fit_aflw_uv_shift(shared: Path, teachers: Path, mediapipe68: list[int]) -> np.ndarray:
    """(21, 2) texel shifts of AFLW's points (module docstring), NaN for the ears; fits the
    frontal AFLW training faces MediaPipe found (a few minutes)."""
    from dataclasses import replace

    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    from .fit import fit_face
    from .targets import (
        build_context,
        fitted_position_map,
        ibug_label_points,
        label_corrected_map,
        load_teachers,
        mediapipe_pseudo68,
        observations_for,
    )

    ctx = build_context(shared, aflw_uv_shift=np.zeros((21, 2)))
    tddfa, mediapipe = load_teachers(teachers.parent)
    records = [r for r in training_records("aflw")
               if r.yaw_deg <= UV_SHIFT_MAX_YAW_DEG and r.name in mediapipe["aflw"]]
    scores = UVShiftScores(ctx.layout)
    used = 0
    with threadpool_limits(1):
        for record in tqdm(records, desc="AFLW texel shifts", unit="face"):
            unlabelled = replace(record, landmarks=None)
            obs = observations_for(ctx, tddfa["aflw"][record.name], unlabelled,
                                   mediapipe["aflw"][record.name], use_labels=False)
            position_map = fitted_position_map(ctx.layout, ctx.model, fit_face(ctx.basis, obs,
                                                                                ctx.settings))
            pseudo68 = mediapipe_pseudo68(position_map, ctx.layout,
                                          mediapipe["aflw"][record.name], mediapipe68)
            if pseudo68 is None:
                continue
            position_map = label_corrected_map(position_map, ctx.layout,
                                               ibug_label_points(ctx.layout, pseudo68))
            scores.add(position_map, record.landmarks, record.visible)
            used += 1
    shifts, errors = scores.best()
    print(f"AFLW texel shifts from {used} frontal training faces (mean NME contribution, "
          "iBUG texels -> shifted):")
    for k, (before, after) in errors.items():
        print(f"  {k:2d} shift {shifts[k].astype(int).tolist()}: "
              f"{100 * before:.2f} % -> {100 * after:.2f} %")
    return shifts


def fit_point_maps(teachers: Path, shared: Path) -> dict:
    """Every mapping of metrics.POINT_MAPS_FILE, for the installed layout."""
    from ..core.layout import load_layout

    mediapipe68 = fit_mediapipe68(teachers)
    shifts = fit_aflw_uv_shift(shared, teachers, mediapipe68)
    return {
        "mediapipe68": mediapipe68,
        "layout_id": load_layout().layout_id,
        "aflw_uv_shift": [None if np.isnan(s).any() else s.astype(int).tolist()
                          for s in shifts],
        "aflw_from_tddfa68": fit_aflw_from_tddfa68(teachers),
        "aflw_from_mediapipe478": fit_aflw_from_mediapipe478(teachers),
    }


def write_point_maps(teachers: Path, shared: Path) -> None:
    """`fit_point_maps` into metrics.POINT_MAPS_FILE."""
    import json

    from .metrics import POINT_MAPS_FILE

    POINT_MAPS_FILE.write_text(json.dumps(fit_point_maps(teachers, shared), indent=1) + "\n")
