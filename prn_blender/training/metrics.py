"""Landmark accuracy on our own dev faces (DESIGN.md section 5): NME, |yaw| bins, CED curves.

NME of one face = mean over its evaluated points of the 2D distance (crop px) between prediction
and hand label, divided by the normaliser sqrt(w * h) of the box of the face's labelled, visible
points (all 68 for 300W; the visible ones of all 21 for AFLW, ears included). Functions return
fractions (0.01 = 1 %); reports print percent.
* 300W: the 51 non-jaw points 17-67 (300W's jaw is a 2D silhouette, not BFM's 3D jaw line).
* AFLW: the visible ones among 19 of its 21 points (`AFLW19_NAMES`: the ears have no
  counterpart). Faces with no visible evaluated point get NaN and are left out of means.
* Per |yaw| bin [0, 30) / [30, 60) / [60, 90] degrees, and the balanced mean of the three bins.

numpy + OpenCV only (the CED figure is drawn with cv2, no matplotlib).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .faces import AFLW21_NAMES, AFLW_EAR_INDICES, YAW_BIN_EDGES_DEG

IBUG68_NON_JAW = tuple(range(17, 68))
"""The 51 iBUG points used for 300W NME (brows, nose, eyes, mouth)."""
AFLW19_INDICES = tuple(i for i in range(21) if i not in AFLW_EAR_INDICES)
"""Indices into AFLW's 21 points of the 19 evaluated ones (ears excluded), README order."""
AFLW19_NAMES = tuple(AFLW21_NAMES[i] for i in AFLW19_INDICES)

AFLW21_FROM_IBUG68: tuple[tuple[int, ...], ...] = (
    (17,), (19,), (21,),            # left brow: left end, centre, right end
    (22,), (24,), (26,),            # right brow
    (36,), (37, 38, 40, 41), (39,),  # left eye: left corner, centre (4 lid points), right corner
    (42,), (43, 44, 46, 47), (45,),  # right eye
    (),                             # left ear: no counterpart
    (31,), (30,), (35,),            # nose: left wing, tip, right wing
    (),                             # right ear: no counterpart
    (48,), (51, 57), (54,),         # mouth: left corner, centre (outer lips), right corner
    (8,),                           # chin centre
)  # fmt: skip
"""Each AFLW point's iBUG-68 sources: the starting point of the fitted mappings of
POINT_MAPS_FILE (our layout's texels are these sources' texels shifted; the teachers' fitted
weights are pulled towards these means). AFLW's "left" is the IMAGE left (the subject's right),
like iBUG's 17 and 36. Checked on the 1,207 frontal (|yaw| < 30) AFLW training faces (dev faces
excluded) with the teacher's 68: every choice is the nearest candidate (median distance
2.9-6.7 % of the normaliser) except mouth corners, where inner 60/64 and outer 48/54 tie
within 0.5 %."""


def yaw_bin_indices(yaw_deg: np.ndarray) -> np.ndarray:
    """(N,) |yaw| in degrees -> (N,) int bin 0 [0, 30), 1 [30, 60), 2 [60, 90] (and above);
    -1 where the yaw is NaN."""
    yaw = np.abs(np.asarray(yaw_deg, dtype=np.float64))
    bins = np.clip(np.searchsorted(YAW_BIN_EDGES_DEG, yaw, side="right") - 1, 0, 2)
    return np.where(np.isfinite(yaw), bins, -1)


def box_normaliser(labels: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """sqrt(w * h) of the box of each face's labelled points, in px.

    labels: (N, K, 2) px; NaN rows count as not labelled. visible: optional (N, K) bool.
    Returns (N,) float64 (NaN for a face with no labelled point)."""
    points = np.asarray(labels, dtype=np.float64)[..., :2].copy()
    if visible is not None:
        points[~np.asarray(visible, dtype=bool)] = np.nan
    with warnings.catch_warnings():  # all-NaN faces give NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        size = np.nanmax(points, axis=1) - np.nanmin(points, axis=1)
    return np.sqrt(size[:, 0] * size[:, 1])


def nme(
    predicted: np.ndarray,
    labels: np.ndarray,
    points: tuple[int, ...] | None = None,
    visible: np.ndarray | None = None,
) -> np.ndarray:
    """Per-face NME as a fraction.

    predicted: (N, K, >=2) px (only x, y are used); labels: (N, K, 2) px with NaN where not
    labelled; points: indices of the evaluated points (default all K); visible: optional (N, K)
    bool. The normaliser uses every labelled, visible point, evaluated or not.
    Returns (N,) float64; NaN where a face has no evaluated labelled point."""
    predicted = np.asarray(predicted, dtype=np.float64)[..., :2]
    labels = np.asarray(labels, dtype=np.float64)[..., :2]
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted {predicted.shape} and labels {labels.shape} differ")
    mask = np.all(np.isfinite(labels), axis=-1)
    if visible is not None:
        mask &= np.asarray(visible, dtype=bool)
    normaliser = box_normaliser(labels, mask)
    index = np.arange(labels.shape[1]) if points is None else np.asarray(points)
    error = np.linalg.norm(predicted[:, index] - labels[:, index], axis=-1)
    used = mask[:, index]
    count = used.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_error = np.where(used, error, 0.0).sum(axis=1) / count
        return np.where(count > 0, mean_error / normaliser, np.nan)


def nme_300w(predicted68: np.ndarray, labels68: np.ndarray) -> np.ndarray:
    """(N,) NME on the 51 non-jaw points; predicted68 (N, 68, >=2), labels68 (N, 68, 2) px."""
    return nme(predicted68, labels68, points=IBUG68_NON_JAW)


def nme_aflw(predicted21: np.ndarray, labels21: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(N,) NME on the visible ones of AFLW's 19 non-ear points.

    predicted21: (N, 21, >=2) px in AFLW order (ear rows are ignored and may be NaN);
    labels21: (N, 21, 2) px; visible: (N, 21) bool (the README's `visible`)."""
    return nme(predicted21, labels21, points=AFLW19_INDICES, visible=visible)


POINT_MAPS_FILE = Path(__file__).resolve().parents[2] / "model_weights" / "eval_point_maps.json"
"""Point mappings chosen on TRAINING faces (never dev faces), written by `eval --fit-point-maps`
(point_maps.py); measurement and target-making only, never used by the product:
* "mediapipe68": MediaPipe's 478 -> iBUG 68, the point nearest each 300W hand label;
* "aflw_uv_shift" (for "layout_id"): our layout's AFLW points (DESIGN.md section 5). Point k is
  the mean of its iBUG source texels (`AFLW21_FROM_IBUG68`) moved by this (dx, dy) texel shift,
  so that it sits where AFLW's labellers put it (their brows, nose wings and nose tip are
  measurably elsewhere than iBUG's); None for the ears;
* "aflw_from_tddfa68": (21, 68) affine weights, the 3DDFA-V2 teacher's AFLW points (ears None);
* "aflw_from_mediapipe478": 21 MediaPipe indices (ears None)."""


def load_point_maps() -> dict:
    with open(POINT_MAPS_FILE) as fh:
        return json.load(fh)


def stored_aflw_uv_shift(layout_id: str) -> np.ndarray:
    """(21, 2) the fitted AFLW texel shifts of POINT_MAPS_FILE (NaN for the ears); a clear
    error when they are missing or were fitted for another layout."""
    maps = load_point_maps() if POINT_MAPS_FILE.is_file() else {}
    if "aflw_uv_shift" not in maps or maps.get("layout_id") != layout_id:
        raise RuntimeError(
            f"{POINT_MAPS_FILE} has no AFLW texel shifts for layout {layout_id}; run "
            "`python -m prn_blender.training eval --fit-point-maps` (it fits them on the "
            "AFLW training faces)")
    return uv_shift_array(maps["aflw_uv_shift"])


def uv_shift_array(rows: list) -> np.ndarray:
    """Stored AFLW texel shift rows ((dx, dy) or None for the ears) -> (21, 2) float64, NaN
    for None."""
    return np.array([s if s is not None else [np.nan, np.nan] for s in rows], dtype=np.float64)


def aflw21_from(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N, K, C) a predictor's points -> (N, 21, C) AFLW points, row a = weights[a] @ points
    (weights (21, K); a NaN row, the ears, gives NaN)."""
    return np.einsum("ak,nkc->nac", np.asarray(weights, np.float64),
                     np.asarray(points, dtype=np.float64))


def teacher_aflw_weights(point_maps: dict, teacher: str) -> np.ndarray:
    """(21, K) weights taking a teacher's points to AFLW's (`aflw21_from`): teacher "tddfa68"
    (K = 68) or "mediapipe478" (K = 478, one point each)."""
    if teacher == "tddfa68":
        rows = point_maps["aflw_from_tddfa68"]
        return np.array([row if row is not None else [np.nan] * 68 for row in rows])
    weights = np.zeros((21, 478))
    for row, index in enumerate(point_maps["aflw_from_mediapipe478"]):
        if index is None:
            weights[row] = np.nan
        else:
            weights[row, index] = 1.0
    return weights


def teacher_label_points(point_maps: dict, set_name: str, tddfa68: np.ndarray,
                         mediapipe478: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both teachers' points in a dev set's label order: (3DDFA-V2, MediaPipe), each (N, 68,
    C) for "300w" (MediaPipe through "mediapipe68") or (N, 21, C) for "aflw" (the fitted AFLW
    mappings). NaN MediaPipe rows (missed faces) stay NaN."""
    if set_name == "300w":
        return tddfa68, mediapipe478[:, point_maps["mediapipe68"]]
    return (aflw21_from(tddfa68, teacher_aflw_weights(point_maps, "tddfa68")),
            aflw21_from(mediapipe478, teacher_aflw_weights(point_maps, "mediapipe478")))


def aflw_texel_table(landmark_texels: np.ndarray, uv_shift: list | np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Our layout's AFLW points as texels: ((M, 2) texel positions (x, y), (21, M) weights
    averaging each point's texels, ear rows NaN). Point k's texels are its iBUG sources'
    `landmark_texels` moved by `uv_shift[k]` (POINT_MAPS_FILE's "aflw_uv_shift")."""
    texels, owner = [], []
    for row, sources in enumerate(AFLW21_FROM_IBUG68):
        if sources:
            shift = np.asarray(uv_shift[row], dtype=np.float64)
            texels.append(np.asarray(landmark_texels, np.float64)[list(sources)] + shift)
            owner += [row] * len(sources)
    owner_arr = np.array(owner)
    weights = np.zeros((21, len(owner_arr)))
    weights[owner_arr, np.arange(len(owner_arr))] = 1.0
    counts = weights.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        weights = np.where(counts > 0, weights / counts, np.nan)
    return np.concatenate(texels), weights


@dataclass(frozen=True)
class BinnedNME:
    """NME summary over |yaw| bins [0, 30), [30, 60), [60, 90] degrees; fractions."""

    per_bin: tuple[float, float, float]
    """Mean NME of each bin (NaN for an empty bin)."""
    counts: tuple[int, int, int]
    """Faces with a finite NME in each bin."""
    balanced: float
    """Mean of the three bin means."""
    overall: float
    """Mean over all faces with a finite NME."""

    def format(self) -> str:
        """One line in percent, e.g. '0-30 2.91 % (333) | 30-60 ... | balanced 3.50 % | all ...'."""
        parts = [
            f"{int(lo)}-{int(hi)} {100 * value:.2f} % ({count})"
            for lo, hi, value, count in zip(
                YAW_BIN_EDGES_DEG[:-1],
                YAW_BIN_EDGES_DEG[1:],
                self.per_bin,
                self.counts,
                strict=True,
            )
        ]
        return " | ".join(
            [*parts, f"balanced {100 * self.balanced:.2f} %", f"all {100 * self.overall:.2f} %"]
        )


def binned_nme(face_nme: np.ndarray, yaw_deg: np.ndarray) -> BinnedNME:
    """Summarise per-face NME (N,) by |yaw| (N,) degrees; NaN faces are left out."""
    face_nme = np.asarray(face_nme, dtype=np.float64)
    bins = yaw_bin_indices(yaw_deg)
    finite = np.isfinite(face_nme)
    means, counts = [], []
    for b in range(3):
        chosen = face_nme[finite & (bins == b)]
        counts.append(int(chosen.size))
        means.append(float(chosen.mean()) if chosen.size else float("nan"))
    overall = float(face_nme[finite].mean()) if finite.any() else float("nan")
    return BinnedNME(tuple(means), tuple(counts), float(np.mean(means)), overall)  # type: ignore[arg-type]


def ced_curve(
    face_nme: np.ndarray, max_nme: float = 0.10, steps: int = 201
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution: thresholds (steps,) from 0 to max_nme (fractions) and the
    fraction of faces (NaN faces count as failures) whose NME is <= each threshold."""
    face_nme = np.asarray(face_nme, dtype=np.float64).ravel()
    thresholds = np.linspace(0.0, max_nme, steps)
    values = np.sort(np.where(np.isfinite(face_nme), face_nme, np.inf))
    fraction = np.searchsorted(values, thresholds, side="right") / max(values.size, 1)
    return thresholds, fraction


_CURVE_COLOURS_BGR = (
    (180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
    (75, 86, 140), (194, 119, 227), (127, 127, 127),
)  # fmt: skip


def draw_ced(
    curves: dict[str, np.ndarray],
    max_nme: float = 0.10,
    title: str = "CED",
    size_px: tuple[int, int] = (720, 480),
) -> np.ndarray:
    """Draw CED curves of several methods: curves maps a legend label to per-face NME (fractions).

    Returns an HWC uint8 RGB image of size_px (width, height): x axis NME 0..max_nme in percent,
    y axis fraction of faces 0..1, grid, ticks, legend with each curve's mean NME."""
    width, height = size_px
    left, right, top, bottom = 70, 20, 40, 55
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)  # BGR while drawing
    plot_w, plot_h = width - left - right, height - top - bottom
    font = cv2.FONT_HERSHEY_SIMPLEX

    def to_px(x_frac: np.ndarray, y_frac: np.ndarray) -> np.ndarray:
        px = left + np.asarray(x_frac) / max_nme * plot_w
        py = top + (1.0 - np.asarray(y_frac)) * plot_h
        return np.stack([px, py], axis=-1)

    x_ticks = np.linspace(0.0, max_nme, 11)
    y_ticks = np.linspace(0.0, 1.0, 6)
    for x in x_ticks:
        ((px, _),) = to_px(np.array([x]), np.array([0.0])).astype(int)
        cv2.line(canvas, (px, top), (px, top + plot_h), (225, 225, 225), 1)
        cv2.line(canvas, (px, top + plot_h), (px, top + plot_h + 5), (0, 0, 0), 1)
        label = f"{100 * x:g}"
        (tw, _), _ = cv2.getTextSize(label, font, 0.45, 1)
        cv2.putText(
            canvas, label, (px - tw // 2, top + plot_h + 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
    for y in y_ticks:
        ((_, py),) = to_px(np.array([0.0]), np.array([y])).astype(int)
        cv2.line(canvas, (left, py), (left + plot_w, py), (225, 225, 225), 1)
        cv2.line(canvas, (left - 5, py), (left, py), (0, 0, 0), 1)
        cv2.putText(canvas, f"{y:.1f}", (left - 40, py + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (left + plot_w, top + plot_h), (0, 0, 0), 1)
    cv2.putText(
        canvas,
        "NME (%)",
        (left + plot_w // 2 - 30, height - 12),
        font,
        0.5,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    cv2.putText(canvas, "fraction of faces", (8, top - 12), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    (tw, _), _ = cv2.getTextSize(title, font, 0.6, 1)
    cv2.putText(canvas, title, ((width - tw) // 2, 25), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)

    legend_texts = []
    for face_nme in curves.values():
        finite = np.asarray(face_nme, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        legend_texts.append(f"{100 * finite.mean():.2f} %" if finite.size else "n/a")
    legend_texts = [f"{label} ({mean})" for label, mean in zip(curves, legend_texts, strict=True)]
    text_w = max((cv2.getTextSize(t, font, 0.45, 1)[0][0] for t in legend_texts), default=0)
    legend_x = left + plot_w - 4 - (text_w + 50)
    legend_top = top + plot_h - 15 - 22 * len(curves) - 2
    cv2.rectangle(
        canvas, (legend_x, legend_top), (left + plot_w - 4, top + plot_h - 6), (255, 255, 255), -1
    )
    cv2.rectangle(
        canvas, (legend_x, legend_top), (left + plot_w - 4, top + plot_h - 6), (160, 160, 160), 1
    )
    for i, face_nme in enumerate(curves.values()):
        colour = _CURVE_COLOURS_BGR[i % len(_CURVE_COLOURS_BGR)]
        thresholds, fraction = ced_curve(face_nme, max_nme)
        polyline = np.round(to_px(thresholds, fraction)).astype(np.int32)
        cv2.polylines(canvas, [polyline], False, colour, 2, cv2.LINE_AA)
        y = top + plot_h - 15 - 22 * (len(curves) - 1 - i)
        x = legend_x + 8
        cv2.line(canvas, (x, y - 5), (x + 25, y - 5), colour, 2, cv2.LINE_AA)
        cv2.putText(canvas, legend_texts[i], (x + 32, y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.ascontiguousarray(canvas[:, :, ::-1])


def write_ced_png(
    path: Path | str,
    curves: dict[str, np.ndarray],
    max_nme: float = 0.10,
    title: str = "CED",
    size_px: tuple[int, int] = (720, 480),
) -> Path:
    """Draw `draw_ced` and write it as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = draw_ced(curves, max_nme, title, size_px)
    if not cv2.imwrite(str(path), rgb[:, :, ::-1]):
        raise OSError(f"could not write {path}")
    return path
