"""Offline face detection: YuNet (default; its 233 kB ONNX file, MIT, ships in model_weights/)
or OpenCV's bundled Haar cascades, each box mapped onto the crop convention the network was
trained on.

Nothing is downloaded: YuNet runs through `cv2.FaceDetectorYN` from the shipped file (or one
the user gives); the Haar cascades ship inside opencv-python(-headless)
(`cv2.data.haarcascades`) and are the fallback when the YuNet file is missing.

Every detector's box is turned into an estimate of the *tight 68-landmark box* (DESIGN.md
section 3) by a `BoxMapping` fitted on 300W faces outside the dev split (`fit_box_mappings`):
the crop is then `crop_from_box(tight_box, LANDMARK_BOX)`, exactly as in training. The
reconstructor's refinement pass re-crops from the network's own 68 landmarks afterwards.

Boxes are (x0, y0, x1, y1) float photo pixels with pixel centres at integers (a detector's
w x h pixel rectangle at (x, y) spans x - 0.5 .. x + w - 0.5). Faces are returned largest
first. Detection runs on a copy scaled to at most `DETECT_MAX_SIDE_PX` and, in a larger
photo, also at `DETECT_RETRY_SIDE_PX` (small faces); boxes are scaled back to the photo.
Detection is thread-safe (one at a time: the OpenCV detectors are shared).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..core.layout import find_data_file
from ..core.options import Detector
from ..core.photo import detection_copy
from ..errors import DependencyError, LayoutError, PrnError


@dataclass(frozen=True)
class BoxMapping:
    """Detector box -> tight 68-landmark box. With s = mean(w, h) of the detector box:
    tight centre = box centre + (shift_x, shift_y) * s, tight size = (scale_w, scale_h) * s.
    A mirrored detection (profile cascade on the flipped photo) negates shift_x."""

    shift_x: float
    shift_y: float
    scale_w: float
    scale_h: float

    def apply(self, box: np.ndarray, mirrored: bool = False) -> np.ndarray:
        """(4,) detector box -> (4,) float64 tight landmark box, same pixels."""
        x0, y0, x1, y1 = (float(v) for v in box)
        s = ((x1 - x0) + (y1 - y0)) / 2.0
        sx = -self.shift_x if mirrored else self.shift_x
        cx = (x0 + x1) / 2.0 + sx * s
        cy = (y0 + y1) / 2.0 + self.shift_y * s
        hw, hh = self.scale_w * s / 2.0, self.scale_h * s / 2.0
        return np.array([cx - hw, cy - hh, cx + hw, cy + hh])


# Fitted by `fit_box_mappings()` (`python -m prn_blender.inference.detect fit [YUNET_ONNX]`,
# about 10 min on 2 cores) on the 1,231 300W faces outside the dev split
# (training.faces.is_dev), each detector run on the stored 256 px crop padded by 64 px
# (replicated border); a detection counts when its IoU with the hand-labelled 68-landmark box is
# above 0.3; each parameter is the median over the matched faces. Residual = error of the
# resulting LANDMARK_BOX crop, as % of the true crop side, median / 90th percentile: centre
# error and |side error|. Refit and paste the printed values whenever the detector settings
# below (cascade files, minNeighbors, scale factor, YuNet threshold) change.
HAAR_FRONTAL_TO_LANDMARKS = BoxMapping(0.0027, 0.1515, 0.8744, 0.8454)
"""haarcascade_frontalface_alt2, 1,075 faces: centre 5.6 / 11.1 %, side 4.9 / 12.7 %."""
HAAR_PROFILE_TO_LANDMARKS = BoxMapping(-0.0792, 0.1535, 0.7738, 0.7411)
"""haarcascade_profileface (as run on the unflipped photo; `apply(mirrored=True)` for the
flipped pass), 515 faces (300W is mostly frontal): centre 5.3 / 11.3 %, side 8.6 / 22.3 %."""
YUNET_TO_LANDMARKS = BoxMapping(0.0059, 0.1325, 0.8985, 0.8675)
"""YuNet 2023mar (face_detection_yunet_2023mar.onnx), 1,231 faces: centre 2.8 / 5.6 %,
side 3.2 / 8.8 %."""
REFINE_TO_LANDMARKS = BoxMapping(0.0, 0.0, 1.0, 1.0)
"""The refinement pass's box is the tight box of the network's own 68 landmarks: identity by
construction (the training crops are made from the same box). Refit with trained weights
(predicted 68 vs hand labels on non-dev faces) if a bias shows up."""

DETECT_MAX_SIDE_PX = 640
"""Haar and YuNet run on a copy at most this large: faces down to HAAR_MIN_SIZE_PX there,
i.e. about 1/27 of the photo's longer side."""
DETECT_RETRY_PAD = 0.2
"""Second attempt when nothing was found: a replicated margin of this x the longer side."""
DETECT_RETRY_SIDE_PX = 1280
"""A second pass for large photos on a copy this large (small faces): always when all faces
are wanted, else when the first found none."""
YUNET_FILENAME = "face_detection_yunet_2023mar.onnx"
"""YuNet is trained for faces of about 10-300 px (data/yunet/SOURCE.md): the pass at
DETECT_MAX_SIDE_PX finds the large ones, the pass at DETECT_RETRY_SIDE_PX the small ones."""
_DETECTOR_LOCK = threading.Lock()
"""The OpenCV detectors are shared (cached) objects with per-call state (YuNet's input size,
the cascades' scale buffers): one detection at a time, whatever thread asks."""
YUNET_SCORE_THRESHOLD = 0.7
HAAR_MIN_NEIGHBORS = 5
HAAR_SCALE_FACTOR = 1.1
HAAR_MIN_SIZE_PX = 24
NMS_IOU = 0.3
"""Two detections overlapping more than this are the same face (the better detector wins)."""
_PRIORITY = {"yunet": 0, "haar_frontal": 1, "haar_profile": 2}


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected face. box: (4,) float64 estimated tight 68-landmark box (photo px), what
    the crop is made from; raw_box: the detector's own box (photo px); detector: which one
    ("yunet", "haar_frontal", "haar_profile"); score: detector confidence (Haar: neighbours)."""

    box: np.ndarray
    raw_box: np.ndarray
    detector: str
    score: float

    @property
    def size_px(self) -> float:
        """Mean side of the tight box, photo px (faces are sorted by it)."""
        return float((self.box[2] - self.box[0] + self.box[3] - self.box[1]) / 2.0)


def _cascade(name: str) -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, name)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise DependencyError(
            f"OpenCV's Haar cascade '{name}' is missing from {cv2.data.haarcascades}. "
            "Reinstall opencv-python-headless in the worker environment.")
    return cascade


@lru_cache(maxsize=1)
def _cascades() -> tuple[cv2.CascadeClassifier, cv2.CascadeClassifier]:
    return (_cascade("haarcascade_frontalface_alt2.xml"), _cascade("haarcascade_profileface.xml"))


def _rects_to_boxes(rects: np.ndarray) -> np.ndarray:
    """OpenCV (x, y, w, h) pixel rectangles -> (N, 4) boxes, pixel centres at integers."""
    r = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    return np.stack([r[:, 0] - 0.5, r[:, 1] - 0.5, r[:, 0] + r[:, 2] - 0.5,
                     r[:, 1] + r[:, 3] - 0.5], axis=1)


def haar_boxes(
    gray: np.ndarray, frontal: bool = True, profile: bool = True,
) -> list[tuple[np.ndarray, str, bool, float]]:
    """Raw Haar detections on an equalised grey image: (box, detector, mirrored, score).
    The profile cascade runs on the image and on its mirror (it finds one facing side)."""
    frontal_cascade, profile_cascade = _cascades()
    out: list[tuple[np.ndarray, str, bool, float]] = []
    kwargs = {"scaleFactor": HAAR_SCALE_FACTOR, "minNeighbors": HAAR_MIN_NEIGHBORS,
              "minSize": (HAAR_MIN_SIZE_PX, HAAR_MIN_SIZE_PX)}
    if frontal:
        rects, _, weights = frontal_cascade.detectMultiScale3(
            gray, outputRejectLevels=True, **kwargs)
        for box, w in zip(_rects_to_boxes(rects), np.ravel(weights), strict=True):
            out.append((box, "haar_frontal", False, float(w)))
    width = gray.shape[1]
    for mirrored, image in ((False, gray), (True, np.ascontiguousarray(gray[:, ::-1]))):
        if not profile:
            break
        rects, _, weights = profile_cascade.detectMultiScale3(
            image, outputRejectLevels=True, **kwargs)
        for box, w in zip(_rects_to_boxes(rects), np.ravel(weights), strict=True):
            if mirrored:
                box = np.array([width - 1 - box[2], box[1], width - 1 - box[0], box[3]])
            out.append((box, "haar_profile", mirrored, float(w)))
    return out


@lru_cache(maxsize=2)
def _yunet(model_path: str) -> cv2.FaceDetectorYN:
    if not Path(model_path).is_file():
        raise DependencyError(
            f"The YuNet model '{model_path}' does not exist. Point the detector setting at "
            "face_detection_yunet_2023mar.onnx, or choose the Haar detector.")
    try:
        return cv2.FaceDetectorYN.create(model_path, "", (320, 320), YUNET_SCORE_THRESHOLD,
                                         0.3, 5000)
    except cv2.error as error:
        raise DependencyError(
            f"OpenCV cannot load the YuNet model '{model_path}' ({str(error).strip()[:120]}). "
            "Use face_detection_yunet_2023mar.onnx or the Haar detector.") from error


def yunet_boxes(rgb: np.ndarray, model_path: str) -> list[tuple[np.ndarray, str, bool, float]]:
    """Raw YuNet detections on an RGB image: (box, "yunet", False, score)."""
    detector = _yunet(str(model_path))
    h, w = rgb.shape[:2]
    detector.setInputSize((w, h))
    _, faces = detector.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if faces is None:
        return []
    out = []
    for row in np.asarray(faces, dtype=np.float64).reshape(-1, 15):
        x, y, bw, bh = row[:4]
        out.append((np.array([x - 0.5, y - 0.5, x + bw - 0.5, y + bh - 0.5]), "yunet", False,
                    float(row[14])))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _mapping(detector: str) -> BoxMapping:
    return {"yunet": YUNET_TO_LANDMARKS, "haar_frontal": HAAR_FRONTAL_TO_LANDMARKS,
            "haar_profile": HAAR_PROFILE_TO_LANDMARKS}[detector]


def _merge(raw: list[tuple[np.ndarray, str, bool, float]]) -> list[Detection]:
    """Map raw boxes to tight boxes, drop duplicates (better detector first, then larger),
    sort largest first."""
    candidates = [
        Detection(_mapping(name).apply(box, mirrored), box, name, score)
        for box, name, mirrored, score in raw
    ]
    candidates.sort(key=lambda d: (_PRIORITY[d.detector], -d.size_px))
    kept: list[Detection] = []
    for det in candidates:
        if all(box_iou(det.box, k.box) <= NMS_IOU for k in kept):
            kept.append(det)
    kept.sort(key=lambda d: -d.size_px)
    return kept


def _haar_on(copy: np.ndarray, all_faces: bool, pad: float) -> list:
    """Haar on an RGB copy, optionally padded by `pad` x its longer side (replicated border:
    a face filling the frame needs some margin); boxes in the unpadded copy's pixels."""
    border = round(pad * max(copy.shape[:2]))
    gray = cv2.equalizeHist(cv2.cvtColor(copy, cv2.COLOR_RGB2GRAY))
    if border:
        gray = cv2.copyMakeBorder(gray, border, border, border, border, cv2.BORDER_REPLICATE)
    raw = haar_boxes(gray, frontal=True, profile=all_faces)
    if not any(name == "haar_frontal" for _, name, _, _ in raw) and not all_faces:
        raw = haar_boxes(gray, frontal=False, profile=True)
    return [(box - border, name, mirrored, score) for box, name, mirrored, score in raw]


def _detect_at(photo: np.ndarray, max_side: int, detector: Detector, yunet_model: str | None,
               all_faces: bool, pad: float = 0.0) -> list[tuple[np.ndarray, str, bool, float]]:
    """Raw detections on a copy at most `max_side` px, in photo pixels."""
    copy, k = detection_copy(photo, max_side)
    if detector == Detector.YUNET:
        raw = yunet_boxes(copy, str(yunet_model))
    else:
        raw = _haar_on(copy, all_faces, pad)
    # Copy pixel centres -> photo pixel centres: p = (c + 0.5) / k - 0.5.
    return [((box + 0.5) / k - 0.5, name, mirrored, score)
            for box, name, mirrored, score in raw]


def find_yunet_model(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """The YuNet file to use: `explicit`, else a copy shipped with the add-on
    (model_weights/YUNET_FILENAME, see core.layout.find_data_file), else None (Haar)."""
    if explicit:
        return str(explicit)
    try:
        return str(find_data_file(YUNET_FILENAME))
    except LayoutError:
        return None


def detect_faces(
    photo: np.ndarray, detector: Detector | str = Detector.AUTO, yunet_model: str | None = None,
    all_faces: bool = True,
) -> list[Detection]:
    """Faces in an (H, W, 3) uint8 RGB photo, largest first (may be empty).

    detector: AUTO = YuNet when a model file is given or shipped, else Haar. Haar runs the
    frontal cascade and, when `all_faces` or when it found nothing, the profile cascade. A
    photo larger than DETECT_MAX_SIDE_PX gets a second pass at DETECT_RETRY_SIDE_PX when
    nothing was found or, with YuNet, when all faces are wanted (small faces); before that,
    Haar with no face retries with a margin around the photo (faces filling the frame).
    `all_faces` False may return only the faces of the first pass that found any (the caller
    wants the largest)."""
    detector = Detector(detector)
    if detector in (Detector.AUTO, Detector.YUNET):
        yunet_model = find_yunet_model(yunet_model)
    if detector == Detector.AUTO:
        detector = Detector.YUNET if yunet_model else Detector.HAAR
    if detector == Detector.YUNET and not yunet_model:
        raise DependencyError(
            "The YuNet detector was chosen but no model file is set. Point it at "
            "face_detection_yunet_2023mar.onnx, or choose the Haar detector.")
    large = max(photo.shape[:2]) > DETECT_MAX_SIDE_PX
    with _DETECTOR_LOCK:
        raw = _detect_at(photo, DETECT_MAX_SIDE_PX, detector, yunet_model, all_faces)
        if not raw and detector == Detector.HAAR:
            raw = _detect_at(photo, DETECT_MAX_SIDE_PX, detector, yunet_model, all_faces,
                             pad=DETECT_RETRY_PAD)
        if large and (not raw or (all_faces and detector == Detector.YUNET)):
            # Small faces in a large photo (a group, a phone photo): the copy at 640 px
            # shrinks them below what the detectors see; add a pass at twice that (for all
            # faces with YuNet only: Haar's false positives grow with the image).
            raw += _detect_at(photo, DETECT_RETRY_SIDE_PX, detector, yunet_model, all_faces)
    return _merge(raw)


# --------------------------------------------------------------------------- refitting


def fit_box_mappings(
    shared_dir: str | os.PathLike[str] | None = None, yunet_model: str | None = None,
    limit: int | None = None,
) -> dict[str, tuple[BoxMapping, dict[str, float]]]:
    """Refit the detector -> tight-landmark-box mappings on 300W faces outside the dev split.

    Returns {detector: (mapping, residual)}, residual = median / p90 centre error and |side
    error| of the LANDMARK_BOX crop in % of the true crop side, and the number of faces."""
    from ..training import faces as face_sets

    records = [r for r in face_sets.load_face_set("300w", shared_dir)
               if not face_sets.is_dev("300w", r.name, shared_dir)]
    if limit is not None:
        records = records[:limit]
    pad = 64
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray, bool]]] = {}
    for record, image in face_sets.iter_images(records, shared_dir):
        lm = np.asarray(record.landmarks, dtype=np.float64) + pad
        truth = np.array([*lm.min(axis=0), *lm.max(axis=0)])
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        raw = haar_boxes(cv2.equalizeHist(cv2.cvtColor(padded, cv2.COLOR_RGB2GRAY)))
        if yunet_model:
            raw += yunet_boxes(padded, yunet_model)
        for name in ("haar_frontal", "haar_profile", "yunet"):
            best = max((r for r in raw if r[1] == name), default=None,
                       key=lambda r: box_iou(r[0], truth))
            if best is not None and box_iou(best[0], truth) > 0.3:
                pairs.setdefault(name, []).append((best[0], truth, best[2]))
    fitted = {}
    for name, items in pairs.items():
        det = np.array([p[0] for p in items])
        true = np.array([p[1] for p in items])
        sign = np.where([p[2] for p in items], -1.0, 1.0)
        s = ((det[:, 2] - det[:, 0]) + (det[:, 3] - det[:, 1])) / 2.0
        mapping = BoxMapping(
            float(np.median(sign * ((true[:, 0] + true[:, 2]) - (det[:, 0] + det[:, 2])) / 2 / s)),
            float(np.median(((true[:, 1] + true[:, 3]) - (det[:, 1] + det[:, 3])) / 2 / s)),
            float(np.median((true[:, 2] - true[:, 0]) / s)),
            float(np.median((true[:, 3] - true[:, 1]) / s)),
        )
        pred = np.array([mapping.apply(d, m) for d, _, m in items])
        side_t = ((true[:, 2] - true[:, 0]) + (true[:, 3] - true[:, 1])) / 2.0
        side_p = ((pred[:, 2] - pred[:, 0]) + (pred[:, 3] - pred[:, 1])) / 2.0
        centre_err = np.hypot(*(((pred[:, :2] + pred[:, 2:]) - (true[:, :2] + true[:, 2:])) / 2
                                ).T) / (1.5 * side_t) * 100
        side_err = np.abs(side_p / side_t - 1.0) * 100
        fitted[name] = (mapping, {
            "faces": float(len(items)),
            "centre_err_median_pct": float(np.median(centre_err)),
            "centre_err_p90_pct": float(np.percentile(centre_err, 90)),
            "side_err_median_pct": float(np.median(side_err)),
            "side_err_p90_pct": float(np.percentile(side_err, 90)),
        })
    return fitted


def _main(argv: list[str]) -> int:
    if not argv or argv[0] != "fit":
        print("usage: python -m prn_blender.inference.detect fit [YUNET_ONNX]", file=sys.stderr)
        return 2
    try:
        fitted = fit_box_mappings(yunet_model=argv[1] if len(argv) > 1 else None)
    except PrnError as error:
        print(error, file=sys.stderr)
        return 1
    for name, (mapping, residual) in fitted.items():
        values = ", ".join(f"{v:.4f}" for v in (mapping.shift_x, mapping.shift_y,
                                                mapping.scale_w, mapping.scale_h))
        print(f"{name}: BoxMapping({values})  residual {residual}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
