"""Dev-split evaluation (DESIGN.md section 5): `python -m prn_blender.training eval`.

* 300W dev (300 faces): NME on the 51 non-jaw points (300W's jaw is a 2D silhouette convention).
* AFLW dev (1,000 faces): NME on AFLW's 19 non-ear points, per |yaw| bin and balanced.
* Normaliser: sqrt(w * h) of the labelled (visible) points' box.
* Crops: 300W from the tight box of its 68 hand labels (our crop convention, DESIGN section 3);
  AFLW from the box its stored 3DDFA-style crop implies (centred square of side 120 / sqrt 2).
* Two rows for our network: "ours", its single pass on that crop (as training scores it), and
  "ours, product", what `Reconstructor.reconstruct` reports given the same box: mirror
  averaging and the refinement pass that re-crops from the first pass's landmarks (which
  matters on AFLW, whose box is only implied by its storage crop).

Every row is also scored on the faces MediaPipe detected (`on_mediapipe_faces`; AFLW 851 of
1,000, 300W all), since the MediaPipe teacher's own means cover only those.

NME definitions are metrics.py's. Every predictor's AFLW points come through a mapping fitted
on AFLW training faces (point_maps.py; DESIGN section 5): ours at our layout's fitted texels,
the 3DDFA-V2 teacher's as affine combinations of its 68, MediaPipe's as one of its 478 points.
MediaPipe's 68 (300W) are its 478 points nearest (on 300W training labels) to each of the 68;
faces MediaPipe misses count as NME 100 % in the CED and are left out of the means (its
detection rate is reported beside them).
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
from ..core.geometry import bilinear_sample, landmarks_from_position_map, surface_roughness
from ..core.layout import UVLayout, load_layout
from ..net.prnet import predict_at
from ..net.weights import WeightsInfo
from . import metrics
from .faces import dev_names, iter_images, load_face_set
from .metrics import POINT_MAPS_FILE, load_point_maps

REPO = Path(__file__).resolve().parents[2]

class LabelReader:
    """Reads a dev set's label points from our position maps: 300W the calibrated 68; AFLW its
    21 points at their fitted texels (`metrics.aflw_texel_table`, ears NaN).

    `info`: a weights file's `WeightsInfo`; its fitted readout (`landmark_texels`,
    `aflw_uv_shift`, training/readout.py), where present, replaces the layout's."""

    def __init__(self, layout: UVLayout, info: WeightsInfo | None = None) -> None:
        self.layout = layout
        self.fitted = info is not None and info.landmark_texels is not None
        self.landmark_texels = (info.readout_texels(layout.landmark_texels) if info is not None
                                else layout.landmark_texels)
        if info is not None and info.aflw_uv_shift is not None:
            shift = metrics.uv_shift_array(info.aflw_uv_shift)
        else:
            shift = metrics.stored_aflw_uv_shift(layout.layout_id)
        self.aflw_texels, self.aflw_weights = metrics.aflw_texel_table(layout.landmark_texels,
                                                                       shift)

    def __call__(self, position_map: np.ndarray, set_name: str) -> np.ndarray:
        """(68 or 21, 3) points in the position map's pixels."""
        if set_name == "300w":
            return landmarks_from_position_map(position_map, self.layout,
                                               texels=self.landmark_texels)
        points = bilinear_sample(position_map, self.aflw_texels, self.layout.face_mask)
        return metrics.aflw21_from(points[None], self.aflw_weights)[0]


class NetworkLandmarks:
    """Runs a PRNet on (image, tight box) pairs and reads the set's label points (photo px,
    `LabelReader`).

    `input_size` < the crop side runs the (fully convolutional) network on area-downsampled
    crops and upsamples its position maps bilinearly: how a coarse training stage scores.
    `roughness` holds, after a call, each face's `surface_roughness` (crop px, raw map)."""

    def __init__(self, model: torch.nn.Module, layout: UVLayout, device: torch.device,
                 batch: int = 16, input_size: int | None = None,
                 mirror_average: bool = False) -> None:
        self.model, self.layout, self.device, self.batch = model, layout, device, batch
        self.input_size, self.mirror_average = input_size, mirror_average
        self.reader = LabelReader(layout)
        self.roughness: list[float] = []

    def __call__(self, images: list[np.ndarray], boxes: list[np.ndarray],
                 set_name: str) -> np.ndarray:
        out = []
        self.roughness = []
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
                maps = predict_at(self.model, x, self.input_size, self.mirror_average).float()
                maps = maps.permute(0, 2, 3, 1).cpu().numpy()
            for pm, tf in zip(maps, transforms, strict=True):
                self.roughness.append(surface_roughness(pm, self.layout.face_mask))
                out.append(uncrop_points(self.reader(pm, set_name), tf))
        self.model.train(was_training)
        return np.stack(out)


class ProductLandmarks:
    """The set's label points (`LabelReader`) on the surface the product reports for (image,
    tight box) pairs: `Reconstructor.reconstruct` with the given box and default options (so
    the refinement passes, mirror and rotation averaging); texture work kept minimal (it does
    not touch the surface). Points at the weights' fitted readout unless `fitted_readout` is
    False."""

    def __init__(self, weights: Path, fitted_readout: bool = True) -> None:
        from ..core.options import ReconstructOptions
        from ..inference.reconstructor import Reconstructor

        self.reconstructor = Reconstructor(weights, device="cpu", allow_untrained=False)
        self.options = ReconstructOptions(texture_size=64, mirror_fill=False)
        self.reader = LabelReader(self.reconstructor.layout,
                                  self.reconstructor.weights_info if fitted_readout else None)

    def surface(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The product's (R, R, 3) position map of one face, photo px."""
        return self.reconstructor.reconstruct(image, boxes=[box],
                                              options=self.options)[0].position_map

    def __call__(self, images: list[np.ndarray], boxes: list[np.ndarray],
                 set_name: str) -> np.ndarray:
        return np.stack([self.reader(self.surface(image, box), set_name)
                         for image, box in zip(images, boxes, strict=True)])


def aflw_eval_box(size: int) -> np.ndarray:
    """The tight-landmark box implied by a 3DDFA-style crop: centred, side size / sqrt(2)."""
    half = size / np.sqrt(2) / 2
    c = (size - 1) / 2
    return np.array([c - half, c - half, c + half, c + half], dtype=np.float32)


def eval_box(record, set_name: str) -> np.ndarray:
    """The face box a labelled set's face is evaluated from: 300W the tight box of its 68
    labels, AFLW the box its storage crop implies (`aflw_eval_box`)."""
    if set_name == "300w":
        return np.array([*record.landmarks.min(0), *record.landmarks.max(0)])
    return aflw_eval_box(record.size)


def dev_data(limit: int | None = None) -> dict[str, tuple[list, list, list]]:
    """{set: (records, images, boxes)} for the dev split; `limit` takes that many faces spread
    evenly over it (the first N would be a biased sample: measured on AFLW, the first 100
    faces scored 13.1 % where all 1,000 scored 11.2 %)."""
    data = {}
    for set_name in ("300w", "aflw"):
        dev = dev_names(set_name)
        records = [r for r in load_face_set(set_name) if r.name in dev]
        if limit is not None and limit < len(records):
            records = [records[i] for i in np.linspace(0, len(records) - 1, limit).astype(int)]
        images = [img for _, img in iter_images(records)]
        data[set_name] = (records, images, [eval_box(r, set_name) for r in records])
    return data


def face_nme(records: list, points: np.ndarray, set_name: str) -> np.ndarray:
    """(N,) NME fractions (metrics.py definitions) of predictions in the set's label order:
    (N, 68, >=2) iBUG points for 300W, (N, 21, >=2) AFLW points for AFLW."""
    labels = np.stack([r.landmarks for r in records])
    if set_name == "300w":
        return metrics.nme_300w(points, labels)
    return metrics.nme_aflw(points, labels, np.stack([r.visible for r in records]))


def score(records: list, points: np.ndarray, set_name: str) -> dict[str, float]:
    """NME (%) overall and, for AFLW, per |yaw| bin and balanced."""
    errs = face_nme(records, points, set_name)
    out = {"all": 100 * float(np.nanmean(errs)), "n": float(np.isfinite(errs).sum())}
    if set_name == "aflw":
        binned = metrics.binned_nme(errs, np.array([r.yaw_deg for r in records]))
        out |= {"0-30": 100 * binned.per_bin[0], "30-60": 100 * binned.per_bin[1],
                "60-90": 100 * binned.per_bin[2], "balanced": 100 * binned.balanced}
    return out


def make_training_evaluator(limit: int | None = 100, input_size: int | None = None
                            ) -> Callable[[torch.nn.Module], dict]:
    """A quick dev NME for the training loop (`limit` faces spread over each dev set) at the
    input size being trained (keys "..._nme@128" when that is not the layout's full size: a
    coarse stage's weights are only meaningful at the size they are trained at)."""
    layout = load_layout()
    data = dev_data(limit)
    size = input_size if input_size and input_size != layout.resolution else None
    suffix = f"@{size}" if size else ""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        run = NetworkLandmarks(model, layout, next(model.parameters()).device, input_size=size)
        result = {}
        for set_name, (records, images, boxes) in data.items():
            s = score(records, run(images, boxes, set_name), set_name)
            result[f"{set_name}_nme{suffix}"] = s.get("balanced", s["all"])
        return result

    return evaluate


MP_FACES_KEY = "on_mediapipe_faces"
"""dev_nme.json key: the row's NME (AFLW: balanced) on the faces MediaPipe detected only, the
faces the MediaPipe teacher's own mean covers."""
PRODUCT_ROW = "ours, product"
"""dev_nme.json row of `ProductLandmarks`; "ours" is the network's single pass."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=None,
                        help="safetensors weights (default: the shipped ones)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a training checkpoint")
    parser.add_argument("--raw", action="store_true",
                        help="a checkpoint's raw training weights, not its weight average")
    parser.add_argument("--teachers", type=Path, default=REPO / "cache" / "teachers")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "eval")
    parser.add_argument("--input-size", type=int, default=None,
                        help="network input side in px (default: what the weights say, or "
                             "the checkpoint's last training resolution)")
    parser.add_argument("--mirror-average", action="store_true",
                        help="average each crop's map with its mirrored crop's (as the "
                             "product does by default)")
    parser.add_argument("--layout-readout", action="store_true",
                        help="read the product row's landmarks at the layout's texels even when "
                             "the weights carry a fitted readout (training/readout.py)")
    parser.add_argument("--no-product", action="store_true",
                        help="skip the product pipeline row (refinement pass + mirror "
                             "averaging, through an fp16 export like the shipped file; it runs "
                             "at the input size the weights declare, whatever --input-size)")
    parser.add_argument("--fit-point-maps", action="store_true",
                        help="refit model_weights/eval_point_maps.json on training faces "
                             "(also what the targets use for AFLW's labels: remake them after)")


def run_evaluation(args: argparse.Namespace) -> int:
    from ..net.prnet import PRNet
    from ..net.weights import load_weights
    from .train import checkpoint_input_size, checkpoint_weights, load_checkpoint

    if args.fit_point_maps or not POINT_MAPS_FILE.is_file():
        from .faces import DEFAULT_SHARED_DIR
        from .point_maps import write_point_maps

        write_point_maps(args.teachers, Path(DEFAULT_SHARED_DIR))
    maps = load_point_maps()
    layout = load_layout()
    model = PRNet()
    if args.checkpoint is not None:
        checkpoint = load_checkpoint(args.checkpoint)
        model.load_state_dict(checkpoint_weights(checkpoint, ema=not args.raw))
        print("checkpoint's " + ("weight average" if "ema" in checkpoint and not args.raw
                                 else "raw training weights"))
        input_size = checkpoint_input_size(checkpoint, layout.resolution)
    else:
        state, info = load_weights(args.weights, layout.layout_id)
        model.load_state_dict(state)
        input_size = info.input_size or layout.resolution
    if args.input_size:
        input_size = args.input_size
    print(f"network input {input_size} x {input_size} px"
          + (", mirror-averaged" if args.mirror_average else ""))
    model = model.to(memory_format=torch.channels_last).eval()
    run = NetworkLandmarks(model, layout, torch.device("cpu"), input_size=input_size,
                           mirror_average=args.mirror_average)
    product = None
    if not args.no_product:
        weights = args.weights
        if args.checkpoint is not None:
            from .train import export_checkpoint

            args.out.mkdir(parents=True, exist_ok=True)
            weights = export_checkpoint(args.checkpoint, args.out / "evaluated.safetensors",
                                        input_size=input_size, ema=not args.raw)
        product = ProductLandmarks(weights, fitted_readout=not args.layout_readout)
        print("product landmarks at " + ("the weights' fitted readout" if product.reader.fitted
                                         else "the layout's texels"))
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
        tdd_points, mp_points = metrics.teacher_label_points(
            maps, set_name, tdd, mpf["points"][mp_rows])  # MediaPipe NaN when missed
        report[set_name] = {
            "ours": run(images, boxes, set_name),
            **({PRODUCT_ROW: product(images, boxes, set_name)} if product is not None else {}),
            "3DDFA-V2 teacher": tdd_points,
            "MediaPipe teacher": mp_points,
        }
        curves = {who: face_nme(records, p, set_name) for who, p in report[set_name].items()}
        report[set_name] = {who: score(records, p, set_name)
                            for who, p in report[set_name].items()}
        report[set_name]["ours"]["roughness_px"] = float(np.mean(run.roughness))
        detected = mpf["detected"][mp_rows].astype(bool)
        report[set_name]["MediaPipe teacher"]["detected"] = float(detected.mean())
        # MediaPipe's mean covers only the faces it finds: every row on those faces too.
        yaw = np.array([r.yaw_deg for r in records])
        for who, errs in curves.items():
            on_mp = np.where(detected, errs, np.nan)
            value = (metrics.binned_nme(on_mp, yaw).balanced if set_name == "aflw"
                     else float(np.nanmean(on_mp)))
            report[set_name][who][MP_FACES_KEY] = 100 * value
        args.out.mkdir(parents=True, exist_ok=True)
        metrics.write_ced_png(args.out / f"ced_{set_name}.png",
                              {who: np.nan_to_num(e, nan=1.0) for who, e in curves.items()},
                              title=f"{set_name} dev CED")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dev_nme.json").write_text(json.dumps(report, indent=1) + "\n")
    for set_name, rows in report.items():
        print(f"== {set_name} dev (NME %)")
        for who, s in rows.items():
            print(f"  {who:20s} " + "  ".join(f"{k} {v:.2f}" for k, v in s.items()))
    return 0
