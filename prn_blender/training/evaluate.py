"""Dev-split evaluation (DESIGN.md section 5): `python -m prn_blender.training eval`.

* 300W dev (300 faces): NME on the 51 non-jaw points (300W's jaw is a 2D silhouette convention).
* AFLW dev (1,000 faces): NME on AFLW's 19 non-ear points, per |yaw| bin and balanced.
* Normaliser: sqrt(w * h) of the labelled (visible) points' box.
* Crops: 300W from the tight box of its 68 hand labels (our crop convention, DESIGN section 3);
  AFLW from the box its stored 3DDFA-style crop implies (centred square of side 120 / sqrt 2).

AFLW's 21 points are compared through 68-point equivalents: each AFLW point is the 68-point
landmark (or the mean of a few) that best matches it on AFLW *training* faces with |yaw| < 30,
chosen automatically from `AFLW_CANDIDATES` (AFLW's own "left"/"right" naming is easy to get
wrong by hand). The same mapping applies to our network and to both teachers, so the columns
are comparable. MediaPipe's 68 are its 478 points nearest (on 300W training labels) to each
of the 68; faces MediaPipe misses are counted separately.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from ..core.crop import crop_from_box, uncrop_points, warp_photo_to_crop
from ..core.geometry import landmarks_from_position_map
from ..core.layout import UVLayout, load_layout
from .faces import AFLW_EAR_INDICES, dev_names, iter_images, load_face_set, yaw_bin

REPO = Path(__file__).resolve().parents[2]
MAPPING_FILE = REPO / "model_weights" / "eval_point_maps.json"

# Candidate 68-point definitions of AFLW points: single landmarks and small means.
AFLW_CANDIDATES: list[tuple[int, ...]] = (
    [(i,) for i in range(68)]
    + [(37, 38, 40, 41), (43, 44, 46, 47), (36, 39), (42, 45), (51, 57), (62, 66), (61, 62, 63),
       (65, 66, 67), (31, 32), (34, 35), (19, 20), (23, 24), (7, 8, 9), (17, 18), (25, 26)]
)


def nme(pred_xy: np.ndarray, label_xy: np.ndarray) -> float:
    """Mean 2D error over the finite labelled points / sqrt(w h) of their box."""
    ok = np.isfinite(label_xy).all(axis=1) & np.isfinite(pred_xy).all(axis=1)
    lab = label_xy[ok]
    if len(lab) < 2:
        return float("nan")
    size = np.sqrt(np.prod(lab.max(0) - lab.min(0)))
    return float(np.linalg.norm(pred_xy[ok] - lab, axis=1).mean() / max(size, 1e-6))


def aflw_points_from_68(points68: np.ndarray, mapping: list[tuple[int, ...]]) -> np.ndarray:
    """(21, 2) AFLW-equivalent points from (68, 2+) landmarks; ears NaN."""
    out = np.full((21, 2), np.nan)
    for k, idx in enumerate(mapping):
        if k in AFLW_EAR_INDICES or not idx:
            continue
        out[k] = points68[list(idx), :2].mean(axis=0)
    return out


def fit_point_maps(teacher_path: Path, mediapipe_dir: Path) -> dict:
    """AFLW 21 -> 68 equivalents and MediaPipe 478 -> 68, fitted on TRAINING faces only."""
    t = np.load(teacher_path, allow_pickle=False)
    aflw = load_face_set("aflw")
    dev = dev_names("aflw")
    tidx = {str(n): i for i, n in enumerate(t["aflw_names"])}
    train = [r for r in aflw if r.name not in dev and r.yaw_deg < 30]
    lab = np.stack([r.landmarks for r in train])  # (M, 21, 2)
    lm = np.stack([t["aflw_landmarks"][tidx[r.name]] for r in train])
    mapping: list[tuple[int, ...]] = []
    for k in range(21):
        if k in AFLW_EAR_INDICES:
            mapping.append(())
            continue
        ok = np.isfinite(lab[:, k]).all(axis=1)
        errs = [np.median(np.linalg.norm(lm[ok][:, list(c), :2].mean(1) - lab[ok, k], axis=1))
                for c in AFLW_CANDIDATES]
        mapping.append(AFLW_CANDIDATES[int(np.argmin(errs))])
    # MediaPipe -> 68 on 300W training faces' hand labels.
    w300 = load_face_set("300w")
    dev300 = dev_names("300w")
    mp_file = np.load(mediapipe_dir / "mediapipe478_300w.npz", allow_pickle=False)
    mp_idx = {str(n): i for i, n in enumerate(mp_file["names"])}
    rows = [(r, mp_idx[r.name]) for r in w300
            if r.name not in dev300 and mp_file["detected"][mp_idx[r.name]]]
    labels = np.stack([r.landmarks for r, _ in rows])
    pts = mp_file["points"][[i for _, i in rows]][:, :, :2]
    mp68 = []
    for k in range(68):
        d = np.linalg.norm(pts - labels[:, k : k + 1], axis=2)  # (M, 478)
        mp68.append(int(np.argmin(np.median(d, axis=0))))
    return {"aflw21_from_68": [list(c) for c in mapping], "mediapipe68": mp68}


def load_point_maps() -> dict:
    with open(MAPPING_FILE) as fh:
        return json.load(fh)


class NetworkLandmarks:
    """Runs a PRNet on (image, tight box) pairs and reads the calibrated 68 (photo px)."""

    def __init__(self, model: torch.nn.Module, layout: UVLayout, device: torch.device,
                 batch: int = 16) -> None:
        self.model, self.layout, self.device, self.batch = model, layout, device, batch

    def __call__(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> np.ndarray:
        out = []
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(images), self.batch):
            transforms = [crop_from_box(b) for b in boxes[start : start + self.batch]]
            crops = np.stack([warp_photo_to_crop(img, tf, cv2.BORDER_REFLECT_101) for img, tf
                              in zip(images[start : start + self.batch], transforms,
                                     strict=True)])
            x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255).to(self.device)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                maps = self.model(x).float().permute(0, 2, 3, 1).cpu().numpy()
            for pm, tf in zip(maps, transforms, strict=True):
                lm = landmarks_from_position_map(pm, self.layout)
                out.append(uncrop_points(lm, tf))
        self.model.train(was_training)
        return np.stack(out)


def aflw_eval_box(size: int) -> np.ndarray:
    """The tight-landmark box implied by a 3DDFA-style crop: centred, side size / sqrt(2)."""
    half = size / np.sqrt(2) / 2
    c = (size - 1) / 2
    return np.array([c - half, c - half, c + half, c + half], dtype=np.float32)


def dev_data(limit: int | None = None) -> dict[str, tuple[list, list, list]]:
    """{set: (records, images, boxes)} for the dev split."""
    data = {}
    for set_name in ("300w", "aflw"):
        dev = dev_names(set_name)
        records = [r for r in load_face_set(set_name) if r.name in dev][:limit]
        images = [img for _, img in iter_images(records)]
        if set_name == "300w":
            boxes = [np.array([*r.landmarks.min(0), *r.landmarks.max(0)]) for r in records]
        else:
            boxes = [aflw_eval_box(r.size) for r in records]
        data[set_name] = (records, images, boxes)
    return data


def score(records: list, preds68: np.ndarray, set_name: str, maps: dict) -> dict[str, float]:
    """NME (%) overall, per |yaw| bin and balanced (AFLW), for 68-point predictions."""
    errs, bins = [], []
    for r, p in zip(records, preds68, strict=True):
        if set_name == "300w":
            errs.append(nme(p[17:, :2], r.landmarks[17:]))
        else:
            errs.append(nme(aflw_points_from_68(p, maps["aflw21_from_68"]), r.landmarks))
        bins.append(yaw_bin(r.yaw_deg))
    errs_a, bins_a = np.asarray(errs) * 100, np.asarray(bins)
    out = {"all": float(np.nanmean(errs_a)), "n": float(np.isfinite(errs_a).sum())}
    if set_name == "aflw":
        per_bin = [float(np.nanmean(errs_a[bins_a == b])) for b in range(3)]
        out |= {"0-30": per_bin[0], "30-60": per_bin[1], "60-90": per_bin[2],
                "balanced": float(np.mean(per_bin))}
    return out


def make_training_evaluator(limit: int | None = 100) -> Callable[[torch.nn.Module], dict]:
    """A quick dev NME for the training loop (first `limit` faces of each dev set)."""
    layout = load_layout()
    maps = load_point_maps()
    data = dev_data(limit)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        run = NetworkLandmarks(model, layout, device)
        result = {}
        for set_name, (records, images, boxes) in data.items():
            s = score(records, run(images, boxes), set_name, maps)
            result[f"{set_name}_nme"] = s.get("balanced", s["all"])
        return result

    return evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=None,
                        help="safetensors weights (default: the shipped ones)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a training checkpoint")
    parser.add_argument("--teachers", type=Path, default=REPO / "cache" / "teachers")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "eval")
    parser.add_argument("--fit-point-maps", action="store_true",
                        help="refit model_weights/eval_point_maps.json from training faces")


def run_evaluation(args: argparse.Namespace) -> int:
    from ..net.prnet import PRNet
    from ..net.weights import load_weights

    if args.fit_point_maps or not MAPPING_FILE.is_file():
        maps = fit_point_maps(args.teachers / "tddfa68.npz", args.teachers)
        MAPPING_FILE.write_text(json.dumps(maps, indent=1) + "\n")
    maps = load_point_maps()
    layout = load_layout()
    model = PRNet()
    if args.checkpoint is not None:
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu",
                                         weights_only=True)["model"])
    else:
        state, _ = load_weights(args.weights, layout.layout_id)
        model.load_state_dict(state)
    model = model.to(memory_format=torch.channels_last).eval()
    run = NetworkLandmarks(model, layout, torch.device("cpu"))
    teacher = np.load(args.teachers / "tddfa68.npz", allow_pickle=False)
    data = dev_data()
    report: dict[str, dict[str, dict[str, float]]] = {}
    for set_name, (records, images, boxes) in data.items():
        key = "aflw" if set_name == "aflw" else "300w"
        tidx = {str(n): i for i, n in enumerate(teacher[f"{key}_names"])}
        tdd = np.stack([teacher[f"{key}_landmarks"][tidx[r.name]] for r in records])
        mp_path = args.teachers / f"mediapipe478_{'aflw_gt_crop' if key == 'aflw' else key}.npz"
        mpf = np.load(mp_path, allow_pickle=False)
        midx = {str(n): i for i, n in enumerate(mpf["names"])}
        mp_rows = [midx[r.name] for r in records]
        mp68 = mpf["points"][mp_rows][:, maps["mediapipe68"]]  # NaN when missed
        report[set_name] = {
            "ours": score(records, run(images, boxes), set_name, maps),
            "3DDFA-V2 teacher": score(records, tdd, set_name, maps),
            "MediaPipe teacher": score(records, mp68, set_name, maps),
        }
        report[set_name]["MediaPipe teacher"]["detected"] = float(mpf["detected"][mp_rows].mean())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dev_nme.json").write_text(json.dumps(report, indent=1) + "\n")
    for set_name, rows in report.items():
        print(f"== {set_name} dev (NME %)")
        for who, s in rows.items():
            print(f"  {who:20s} " + "  ".join(f"{k} {v:.2f}" for k, v in s.items()))
    return 0
