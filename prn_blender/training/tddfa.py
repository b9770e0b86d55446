"""The landmark teacher: 3DDFA-V2 (Guo et al., "Towards Fast, Accurate and Stable 3D Dense Face
Alignment", ECCV 2020), MobileNet-V1 x0.5, 120x120 input, 62 3DMM parameters.

RESEARCH ONLY, for making training targets: the weights (trained on 300W-LP) and the 68-row BFM
basis (Basel Face Model terms) in ../shared/data/3ddfa-v2 are never shipped. This module lives
only in prn_blender/training/, which build_addon.py leaves out of the add-on, and nothing outside
training/ imports it. Re-implemented from ../shared/data/3ddfa-v2/CONTENTS.md (network, crop,
decoding; the test reproduces its self-test values to 1e-3 px).

Output per face: (68, 3) points in the BFM-defined (AFLW2000-3D) 68-point convention, x right /
y down in photo pixels (0-based), z depth in the same pixel scale, larger = closer to the camera,
shifted so min z = 0. The jaw points 0-16 are the 3D jaw line (hidden side on turned faces).

Two passes: the first from a start ROI (a detector box via `roi_from_box`, or landmarks via
`roi_from_landmarks`), the second from the ROI of the first pass's 68 points. (On AFLW dev a
third or fourth pass is worse: balanced NME 5.14 / 5.10 / 5.14 / 5.22 % after passes 1-4.)

Measured (`evaluate`, metrics.py definitions): 300W, 51 non-jaw points, start from the labels:
all 1,531 2.87 %, dev 300 2.86 % (68 points 3.63 %; one pass 3.67 % / 2.92 %, as CONTENTS.md);
label-free Haar start (found on 91 %, whole crop otherwise): all 3.05 %, dev 3.26 %. AFLW dev
(19 points), whole-crop start: through the iBUG means of `metrics.AFLW21_FROM_IBUG68` 4.68 /
5.03 / 5.60 % in the |yaw| bins, balanced 5.10 % (part of it is convention: iBUG vs AFLW brows,
nose wings, chin); through the mapping fitted on training faces (point_maps.py, session 6)
4.00 / 4.23 / 4.77 %, balanced 4.33 %.

    python -m prn_blender.training.tddfa run-all    # every face set -> cache/teachers/tddfa68.npz
    python -m prn_blender.training.tddfa evaluate   # NME against 300W / AFLW hand labels
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from .faces import FACE_SETS, FaceRecord, dev_names, iter_images, load_face_set

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "3ddfa-v2"
DEFAULT_OUT = REPO / "cache" / "teachers" / "tddfa68.npz"
INPUT_SIZE = 120
"""Side of the network input in pixels."""

# ROI constants from CONTENTS.md "ROI box" (3DDFA-V2's, tuned for FaceBoxes boxes).
LANDMARK_ROI_SCALE = float(np.sqrt(2.0))
DETECTOR_ROI_SCALE = 1.58
DETECTOR_ROI_SHIFT = 0.14
STORED_300W_CROP_SCALE = 1.6
"""300W crops are 1.6 x max(w, h) of the 68-label box, centred on it (300w.tar README)."""

# (name, in channels, out channels, stride) of the depthwise-separable blocks (CONTENTS.md).
_BLOCKS = (
    ("dw2_1", 16, 32, 1), ("dw2_2", 32, 64, 2), ("dw3_1", 64, 64, 1), ("dw3_2", 64, 128, 2),
    ("dw4_1", 128, 128, 1), ("dw4_2", 128, 256, 2), ("dw5_1", 256, 256, 1),
    ("dw5_2", 256, 256, 1), ("dw5_3", 256, 256, 1), ("dw5_4", 256, 256, 1),
    ("dw5_5", 256, 256, 1), ("dw5_6", 256, 512, 2), ("dw6", 512, 512, 1),
)  # fmt: skip


class DepthwiseSeparableBlock(nn.Module):
    """3x3 depthwise conv (stride here) + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(
            channels_in, channels_in, 3, stride, 1, groups=channels_in, bias=False
        )
        self.bn_dw = nn.BatchNorm2d(channels_in)
        self.conv_sep = nn.Conv2d(channels_in, channels_out, 1, 1, 0, bias=False)
        self.bn_sep = nn.BatchNorm2d(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_dw(self.conv_dw(x)))
        return torch.relu(self.bn_sep(self.conv_sep(x)))


class MobileNetTDDFA(nn.Module):
    """MobileNet-V1 x0.5: (N, 3, 120, 120) BGR, (p - 127.5) / 128 -> (N, 62) normalised params."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)  # 60x60
        self.bn1 = nn.BatchNorm2d(16)
        for name, channels_in, channels_out, stride in _BLOCKS:  # ... down to 512 x 4x4
            self.add_module(name, DepthwiseSeparableBlock(channels_in, channels_out, stride))
        self.fc_param = nn.Linear(512, 62)
        self.fc_lm = nn.Linear(512, 136)  # auxiliary training head, unused; kept for strict load

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        for name, *_ in _BLOCKS:
            x = getattr(self, name)(x)
        return self.fc_param(x.mean(dim=(2, 3)))


def roi_from_landmarks(points: np.ndarray) -> np.ndarray:
    """(..., K, >=2) points in px -> (..., 4) ROI [sx, sy, ex, ey]: the square of side
    sqrt(2) * max(w, h) centred on the points' tight box (3DDFA's landmark ROI)."""
    points = np.asarray(points, dtype=np.float64)[..., :2]
    lo, hi = points.min(axis=-2), points.max(axis=-2)
    centre = (lo + hi) / 2
    half = LANDMARK_ROI_SCALE * (hi - lo).max(axis=-1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half], axis=-1)


def roi_from_box(box: np.ndarray) -> np.ndarray:
    """(..., 4) detector box [l, t, r, b] px -> (..., 4) ROI: centre moved down by 0.14 m,
    side floor(1.58 m), m = mean of box width and height (3DDFA-V2's FaceBoxes rule)."""
    box = np.asarray(box, dtype=np.float64)
    left, top, right, bottom = np.moveaxis(box, -1, 0)
    mean_side = ((right - left) + (bottom - top)) / 2
    cx = (left + right) / 2
    cy = (top + bottom) / 2 + DETECTOR_ROI_SHIFT * mean_side
    half = np.floor(DETECTOR_ROI_SCALE * mean_side) / 2
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=-1)


def preprocess(image_bgr: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Crop the rounded ROI (black outside the photo), resize to 120x120 with INTER_LINEAR,
    (p - 127.5) / 128. image_bgr: HWC uint8 BGR; roi (4,) px. Returns (3, 120, 120) float32."""
    sx, sy, ex, ey = (round(float(v)) for v in roi)  # ties to even
    height, width = image_bgr.shape[:2]
    canvas = np.zeros((ey - sy, ex - sx, 3), dtype=np.uint8)
    x0, y0, x1, y1 = max(sx, 0), max(sy, 0), min(ex, width), min(ey, height)
    if x1 > x0 and y1 > y0:
        canvas[y0 - sy : y1 - sy, x0 - sx : x1 - sx] = image_bgr[y0:y1, x0:x1]
    resized = cv2.resize(canvas, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return ((resized.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)


class TDDFATeacher:
    """Batched 3DDFA-V2 inference: images + ROIs in, (B, 68, 3) photo-pixel points out."""

    def __init__(self, data_dir: Path | str | None = None) -> None:
        data_dir = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
        self.net = MobileNetTDDFA()
        self.net.load_state_dict(load_file(str(data_dir / "mb05_120x120.safetensors")))
        self.net.eval()
        with np.load(data_dir / "bfm68.npz", allow_pickle=False) as bfm:
            self.mean_shape = bfm["u_base"].astype(np.float64)  # (204,) interleaved x, y, z
            self.shape_basis = bfm["w_shp_base"].astype(np.float64)  # (204, 40)
            self.expression_basis = bfm["w_exp_base"].astype(np.float64)  # (204, 10)
            self.param_mean = bfm["param_mean"].astype(np.float64)  # (62,)
            self.param_std = bfm["param_std"].astype(np.float64)  # (62,)

    def raw_params(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, 120, 120) float32 preprocessed input -> (B, 62) float64 normalised outputs."""
        with torch.inference_mode():
            return self.net(torch.from_numpy(np.ascontiguousarray(batch))).double().numpy()

    def decode(self, raw: np.ndarray, rois: np.ndarray) -> np.ndarray:
        """(B, 62) raw outputs + (B, 4) float ROIs -> (B, 68, 3) photo px (CONTENTS.md
        "Decoding"): x right, y down, z larger = closer, min z = 0 per face."""
        params = raw * self.param_std + self.param_mean
        pose = params[:, :12].reshape(-1, 3, 4)  # scaled rotation | translation, model -> crop
        shape = (
            self.mean_shape
            + params[:, 12:52] @ self.shape_basis.T
            + params[:, 52:62] @ self.expression_basis.T
        ).reshape(-1, 68, 3)
        crop = np.einsum("brc,bkc->bkr", pose[:, :, :3], shape) + pose[:, None, :, 3]  # y up
        rois = np.asarray(rois, dtype=np.float64)
        scale_x = (rois[:, 2] - rois[:, 0]) / INPUT_SIZE
        scale_y = (rois[:, 3] - rois[:, 1]) / INPUT_SIZE
        points = np.empty_like(crop)
        points[..., 0] = (crop[..., 0] - 1) * scale_x[:, None] + rois[:, None, 0]
        points[..., 1] = (INPUT_SIZE - crop[..., 1]) * scale_y[:, None] + rois[:, None, 1]
        points[..., 2] = (crop[..., 2] - 1) * ((scale_x + scale_y) / 2)[:, None]
        points[..., 2] -= points[..., 2].min(axis=1, keepdims=True)
        return points

    def landmarks(self, images_bgr: Sequence[np.ndarray], rois: np.ndarray) -> np.ndarray:
        """One pass: B HWC uint8 BGR images and their (B, 4) ROIs -> (B, 68, 3) photo px."""
        rois = np.asarray(rois, dtype=np.float64).reshape(-1, 4)
        batch = np.stack([preprocess(img, roi) for img, roi in zip(images_bgr, rois, strict=True)])
        return self.decode(self.raw_params(batch), rois)

    def landmarks_two_pass(
        self, images_bgr: Sequence[np.ndarray], start_rois: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """First pass from start_rois (B, 4), second from the first pass's landmark ROI.
        Returns ((B, 68, 3) photo px, (B, 4) second-pass ROIs)."""
        first = self.landmarks(images_bgr, start_rois)
        second_rois = roi_from_landmarks(first)
        return self.landmarks(images_bgr, second_rois), second_rois


class StartROI(enum.Enum):
    """Where the first pass's ROI comes from."""

    LABELS = "labels"
    """300W: the landmark ROI of the 68 hand labels (favourable: uses the labels)."""
    CROP = "crop"
    """From the stored crop's geometry: 300W the centred square of side/1.6 (the crop is
    1.6x the label box, so this still leans on the labels); AFLW / UTKFace the whole crop
    (AFLW's crops are 3DDFA's own ROIs)."""
    HAAR = "haar"
    """OpenCV's frontal Haar cascade on the crop (UTKFace: its stored Haar box), then the
    detector rule `roi_from_box`; the whole crop where Haar finds nothing. Label-free."""


def _whole_crop_roi(record: FaceRecord) -> np.ndarray:
    return np.array([0.0, 0.0, record.size, record.size])


def start_roi(
    record: FaceRecord, start: StartROI, image_rgb: np.ndarray | None = None
) -> np.ndarray:
    """(4,) first-pass ROI in crop px for one stored face (see `StartROI`)."""
    if start is StartROI.LABELS and record.set_name == "300w" and record.landmarks is not None:
        return roi_from_landmarks(record.landmarks)
    if start is StartROI.HAAR or (record.set_name == "utkface" and start is not StartROI.CROP):
        box = record.box if record.box is not None else _haar_box(image_rgb)
        return roi_from_box(box) if box is not None else _whole_crop_roi(record)
    if record.set_name == "300w":
        half = LANDMARK_ROI_SCALE * record.size / STORED_300W_CROP_SCALE / 2
        centre = (record.size - 1) / 2
        return np.array([centre - half, centre - half, centre + half, centre + half])
    return _whole_crop_roi(record)


def default_start(set_name: str) -> StartROI:
    """The run-all start: 300W its labels, AFLW its crop (3DDFA's own ROI), UTKFace Haar."""
    return {"300w": StartROI.LABELS, "aflw": StartROI.CROP, "utkface": StartROI.HAAR}[set_name]


_HAAR: list[cv2.CascadeClassifier] = []


def _haar_box(image_rgb: np.ndarray | None) -> np.ndarray | None:
    """Largest OpenCV frontal-face Haar detection (x0, y0, x1, y1) px, or None."""
    if image_rgb is None:
        return None
    if not _HAAR:
        _HAAR.append(
            cv2.CascadeClassifier(
                str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml")
            )
        )
    grey = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    found = _HAAR[0].detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
    if len(found) == 0:
        return None
    x, y, w, h = max(found, key=lambda f: f[2] * f[3])
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def run_teacher(
    teacher: TDDFATeacher,
    records: Sequence[FaceRecord],
    start: StartROI,
    batch_size: int = 64,
    desc: str = "",
    shared_dir: Path | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass teacher on stored faces (read from `shared_dir`, default ../shared): ((M, 68,
    3) float32 crop px, (M, 4) float32 ROI of the second pass), in the order of records."""
    landmarks, rois = [], []
    images: list[np.ndarray] = []
    starts: list[np.ndarray] = []

    def flush() -> None:
        points, second = teacher.landmarks_two_pass(images, np.stack(starts))
        landmarks.append(points.astype(np.float32))
        rois.append(second.astype(np.float32))
        images.clear()
        starts.clear()

    for record, rgb in tqdm(iter_images(records, shared_dir), total=len(records), desc=desc,
                            leave=False):
        images.append(np.ascontiguousarray(rgb[:, :, ::-1]))  # the network wants BGR
        starts.append(start_roi(record, start, rgb))
        if len(images) == batch_size:
            flush()
    if images:
        flush()
    return np.concatenate(landmarks), np.concatenate(rois)


def run_teacher_on_all(out_path: Path | str = DEFAULT_OUT,
                       shared_dir: Path | str | None = None) -> Path:
    """Teacher 68 on every face of the three sets, two passes, start ROIs per `default_start`
    (faces and the teacher's data from `shared_dir`, default ../shared).

    Writes an npz (written to a temporary name, then renamed) with, per set S in
    ("300w", "aflw", "utkface"): S_names (M,) str, S_landmarks (M, 68, 3) float32 in the stored
    crop's pixels (x right, y down, z closer = larger, min z = 0), S_roi (M, 4) float32 the
    second-pass ROI [sx, sy, ex, ey] in crop px. Returns the path."""
    out_path = Path(out_path)
    torch.set_num_threads(1)
    teacher = TDDFATeacher(Path(shared_dir) / "data" / "3ddfa-v2" if shared_dir else None)
    arrays: dict[str, np.ndarray] = {}
    for set_name in FACE_SETS:
        records = load_face_set(set_name, shared_dir)
        points, rois = run_teacher(teacher, records, default_start(set_name), desc=set_name,
                                   shared_dir=shared_dir)
        arrays[f"{set_name}_names"] = np.array([r.name for r in records])
        arrays[f"{set_name}_landmarks"] = points
        arrays[f"{set_name}_roi"] = rois
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out_path)
    return out_path


def evaluate_teacher(
    teacher_path: Path | str = DEFAULT_OUT, extra_starts: bool = True, ced_png: Path | None = None
) -> list[str]:
    """NME of the teacher against the hand labels (metrics.py); returns report lines.

    From the run-all file: 300W (51 points) all and dev; AFLW dev (19 points, 68 -> 21 by the
    weights fitted on training faces, metrics.POINT_MAPS_FILE) per |yaw| bin and balanced.
    With extra_starts, the teacher is re-run on 300W from the crop and Haar starts, and on
    AFLW dev from a Haar start."""
    from . import metrics

    torch.set_num_threads(1)
    lines = []
    with np.load(teacher_path, allow_pickle=False) as data:
        stored = {key: data[key] for key in data.files}
    curves: dict[str, np.ndarray] = {}

    def score_300w(records: list[FaceRecord], points: np.ndarray, label: str) -> None:
        labels = np.stack([r.landmarks for r in records])
        face_nme = metrics.nme_300w(points, labels)
        face_nme68 = metrics.nme(points, labels)
        dev = dev_names("300w")
        is_dev = np.array([r.name in dev for r in records])
        lines.append(
            f"300W {label}: 51 points all {len(records)} "
            f"{100 * np.nanmean(face_nme):.2f} % | dev {is_dev.sum()} "
            f"{100 * np.nanmean(face_nme[is_dev]):.2f} % (68 points: all "
            f"{100 * np.nanmean(face_nme68):.2f} %, dev "
            f"{100 * np.nanmean(face_nme68[is_dev]):.2f} %)"
        )
        curves[f"300W dev, {label}"] = face_nme[is_dev]

    def score_aflw(records: list[FaceRecord], points68: np.ndarray, label: str) -> None:
        labels = np.stack([r.landmarks for r in records])
        visible = np.stack([r.visible for r in records])
        weights = metrics.teacher_aflw_weights(metrics.load_point_maps(), "tddfa68")
        face_nme = metrics.nme_aflw(metrics.aflw21_from(points68, weights), labels, visible)
        summary = metrics.binned_nme(face_nme, np.array([r.yaw_deg for r in records]))
        lines.append(f"AFLW dev {label}: {summary.format()}")
        curves[f"AFLW dev, {label}"] = face_nme

    records_300w = load_face_set("300w")
    _check_names(stored, "300w", records_300w)
    score_300w(records_300w, stored["300w_landmarks"], "labels start")
    aflw_dev = dev_names("aflw")
    records_aflw = load_face_set("aflw")
    _check_names(stored, "aflw", records_aflw)
    keep = np.array([r.name in aflw_dev for r in records_aflw])
    dev_records = [r for r, k in zip(records_aflw, keep, strict=True) if k]
    score_aflw(dev_records, stored["aflw_landmarks"][keep], "crop start")
    if extra_starts:
        teacher = TDDFATeacher()
        for start in (StartROI.CROP, StartROI.HAAR):
            points, _ = run_teacher(teacher, records_300w, start, desc=f"300w {start.value}")
            score_300w(records_300w, points, f"{start.value} start")
        points, _ = run_teacher(teacher, dev_records, StartROI.HAAR, desc="aflw haar")
        score_aflw(dev_records, points, "haar start")
    if ced_png is not None:
        metrics.write_ced_png(ced_png, curves, title="3DDFA-V2 teacher vs hand labels")
        lines.append(f"CED written to {ced_png}")
    return lines


def _check_names(stored: dict[str, np.ndarray], set_name: str, records: list[FaceRecord]) -> None:
    if list(stored[f"{set_name}_names"]) != [r.name for r in records]:
        raise ValueError(
            f"{set_name}: the teacher file's names do not match the face set; re-run `run-all`"
        )


def main(argv: list[str] | None = None) -> int:
    """Command line: run-all | evaluate."""
    parser = argparse.ArgumentParser(description="3DDFA-V2 landmark teacher (research only)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run-all", help="run the teacher on every face set")
    run.add_argument("--out", type=Path, default=DEFAULT_OUT)
    evaluate = sub.add_parser("evaluate", help="NME of the teacher against the hand labels")
    evaluate.add_argument("--teacher", type=Path, default=DEFAULT_OUT)
    evaluate.add_argument("--quick", action="store_true", help="skip the re-runs from other starts")
    evaluate.add_argument("--ced", type=Path, default=None, help="write a CED PNG here")
    args = parser.parse_args(argv)
    if args.command == "run-all":
        print(f"wrote {run_teacher_on_all(args.out)}")
    else:
        print("\n".join(evaluate_teacher(args.teacher, not args.quick, args.ced)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
