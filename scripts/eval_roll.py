"""Does the refinement pass's upright crop help rolled faces? 300W dev faces (never trained
on), each turned by +-ANGLE degrees in the image plane; pass 1 crops from the turned faces'
axis-aligned label box (what a detector gives), pass 2 re-crops from pass 1's landmarks either
axis-aligned or upright (core.crop.crop_from_landmarks). Prints 51-point NME (%) per angle.

    .venv/bin/python scripts/eval_roll.py [--faces 100] [--weights W.safetensors]

Session 4, session-3 weights, 100 faces: roll 0: 6.26 / 6.31 / 6.24 % (pass 1 / axis-aligned /
upright); 25 degrees: 6.78 / 7.17 / 6.00 %; 40 degrees: 8.58 / 9.53 / 6.09 %.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from prn_blender.core.crop import LANDMARK_BOX, crop_from_box, crop_from_landmarks
from prn_blender.core.geometry import landmarks_from_position_map
from prn_blender.inference.reconstructor import Reconstructor
from prn_blender.training import metrics
from prn_blender.training.evaluate import dev_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=100)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--angles", type=float, nargs="+", default=[0.0, 25.0, 40.0])
    args = parser.parse_args()
    records, images, _ = dev_data(args.faces)["300w"]
    rec = Reconstructor(args.weights, device="cpu")

    def landmarks(photo: np.ndarray, crop) -> np.ndarray:
        return landmarks_from_position_map(rec._predict(photo, [crop])[0], rec.layout)

    for angle in args.angles:
        found: dict[str, list[np.ndarray]] = {"pass 1": [], "axis-aligned": [], "upright": []}
        labels = []
        for i, (record, image) in enumerate(zip(records, images, strict=True)):
            h, w = image.shape[:2]
            turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle if i % 2 else -angle, 1.0)
            photo = cv2.warpAffine(image, turn, (w, h), borderMode=cv2.BORDER_REFLECT101)
            label = record.landmarks @ turn[:, :2].T + turn[:, 2]
            labels.append(label)
            first = landmarks(photo, crop_from_box((*label.min(0), *label.max(0)),
                                                    LANDMARK_BOX, rec.layout.resolution))
            found["pass 1"].append(first)
            found["axis-aligned"].append(landmarks(photo, crop_from_landmarks(
                first, resolution=rec.layout.resolution, upright_min_deg=np.inf)))
            found["upright"].append(landmarks(photo, crop_from_landmarks(
                first, resolution=rec.layout.resolution)))
        figures = {k: 100 * float(np.nanmean(metrics.nme_300w(np.stack(v), np.stack(labels))))
                   for k, v in found.items()}
        print(f"roll +-{angle:g} deg: " + ", ".join(f"{k} {v:.2f} %" for k, v in figures.items()),
              flush=True)


if __name__ == "__main__":
    main()
