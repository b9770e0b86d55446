"""Does the refinement pass's upright crop help rolled faces, and leave turned ones alone?

300W dev faces (never trained on), each turned by +-ANGLE degrees in the image plane: pass 1
crops from the turned face's axis-aligned label box (what a detector gives); pass 2 re-crops
from pass 1's landmarks axis-aligned, or upright (core.crop.crop_from_landmarks) with the roll
from the eye line or from the head pose (what the Reconstructor uses). Predictions are turned
back and scored against the original labels (51-point NME, %), so angles compare fairly. Then
the same passes on the AFLW dev faces as they are (|yaw| up to 90 degrees; balanced NME).

    .venv/bin/python scripts/eval_roll.py [--faces 100] [--weights W.safetensors]

Session 4, session-3 weights, 100 faces per set (pass 1 / axis-aligned / upright by eye line /
upright by pose):
    300W roll 0:      6.26 / 6.31 / 6.24 / 6.32 %
    300W roll +-25:   7.15 / 7.57 / 6.32 / 6.31 %
    300W roll +-40:   9.20 / 10.21 / 6.53 / 6.75 %
    AFLW as is:      10.99 / 11.24 / 15.64 / 11.62 % (the eye line fails on turned faces;
                     on 150 faces the pose version scored 11.53 against 11.72 axis-aligned)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from prn_blender.core.crop import LANDMARK_BOX, crop_from_box, crop_from_landmarks
from prn_blender.core.geometry import landmarks_from_position_map, position_map_to_vertices
from prn_blender.core.pose import estimate_pose
from prn_blender.inference.reconstructor import Reconstructor
from prn_blender.training import metrics
from prn_blender.training.evaluate import LabelReader, dev_data, score

VARIANTS = ("pass 1", "axis-aligned", "upright (eye line)", "upright (pose)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=100, help="faces per dev set")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--angles", type=float, nargs="+", default=[0.0, 25.0, 40.0])
    args = parser.parse_args()
    data = dev_data(args.faces)
    rec = Reconstructor(args.weights, device="cpu")
    r = rec.layout.resolution

    reader = LabelReader(rec.layout)

    def passes(photo: np.ndarray, box: np.ndarray, set_name: str) -> list[np.ndarray]:
        """The set's label points (evaluate.LabelReader) after each variant."""
        pm = rec._predict(photo, [crop_from_box(box, LANDMARK_BOX, r)])[0]
        first = landmarks_from_position_map(pm, rec.layout)
        roll = estimate_pose(position_map_to_vertices(pm, rec.layout), rec.layout).roll_deg
        crops = [crop_from_landmarks(first, resolution=r, upright_min_deg=np.inf),
                 crop_from_landmarks(first, resolution=r),
                 crop_from_landmarks(first, resolution=r, roll_deg=roll)]
        maps = [pm, *rec._predict(photo, crops)]
        return [reader(m, set_name) for m in maps]

    records, images, _ = data["300w"]
    labels = np.stack([rec_.landmarks for rec_ in records])
    for angle in args.angles:
        found: list[list[np.ndarray]] = [[] for _ in VARIANTS]
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle if i % 2 else -angle, 1.0)
            back = cv2.invertAffineTransform(turn)
            photo = cv2.warpAffine(image, turn, (w, h), borderMode=cv2.BORDER_REFLECT101)
            label = labels[i] @ turn[:, :2].T + turn[:, 2]
            box = np.array([*label.min(0), *label.max(0)])
            for k, lm in enumerate(passes(photo, box, "300w")):
                found[k].append(lm[:, :2] @ back[:, :2].T + back[:, 2])
        figures = [100 * float(np.nanmean(metrics.nme_300w(np.stack(f), labels)))
                   for f in found]
        print(f"300W, roll +-{angle:g} deg: "
              + ", ".join(f"{k} {v:.2f} %" for k, v in zip(VARIANTS, figures, strict=True)),
              flush=True)
    records, images, boxes = data["aflw"]
    found = [[] for _ in VARIANTS]
    for image, box in zip(images, boxes, strict=True):
        for k, lm in enumerate(passes(image, box, "aflw")):
            found[k].append(lm)
    print("AFLW as is (balanced over |yaw| bins): " + ", ".join(
        f"{k} {score(records, np.stack(f), 'aflw')['balanced']:.2f} %"
        for k, f in zip(VARIANTS, found, strict=True)), flush=True)


if __name__ == "__main__":
    main()
