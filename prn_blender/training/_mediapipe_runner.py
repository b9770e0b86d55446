"""Runs INSIDE the MediaPipe virtual environment (see mediapipe_teacher.py): imports only the
standard library, numpy, OpenCV and mediapipe, never the rest of prn_blender.

Usage: python _mediapipe_runner.py TAR OUT.npz [--min-side 256]

For every JPEG in TAR: MediaPipe FaceMesh (legacy `solutions.face_mesh`, static images,
refine_landmarks=True: 478 points). Images whose shorter side is below --min-side are
upscaled first (AFLW crops are 120 px; FaceMesh misses many small faces). Output npz:
names (M,) str (image file stems), detected (M,) bool, points (M, 478, 3) float32 in the
stored image's pixels: x right, y down, z = depth towards the camera in the same pixel scale
(MediaPipe's z is more negative = closer, on about the x scale of the image it saw), shifted
so the face's minimum z is 0; NaN where no face was found.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile

import cv2
import mediapipe as mp
import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("tar")
    parser.add_argument("out")
    parser.add_argument("--min-side", type=int, default=256)
    args = parser.parse_args()
    mesh = mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=1,
        min_detection_confidence=0.3,
    )
    names: list[str] = []
    detected: list[bool] = []
    points: list[np.ndarray] = []
    with tarfile.open(args.tar) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")),
            key=lambda m: m.name,
        )
        total = len(members)
        for i, member in enumerate(members):
            data = np.frombuffer(tar.extractfile(member).read(), dtype=np.uint8)
            bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
            h, w = bgr.shape[:2]
            up = max(1.0, args.min_side / min(h, w))
            if up > 1.0:
                bgr = cv2.resize(bgr, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
            hh, ww = bgr.shape[:2]
            result = mesh.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            pts = np.full((478, 3), np.nan, dtype=np.float32)
            found = bool(result.multi_face_landmarks)
            if found:
                lm = result.multi_face_landmarks[0].landmark
                raw = np.array([[p.x, p.y, p.z] for p in lm], dtype=np.float64)
                # Normalised -> pixels of the image MediaPipe saw -> stored image pixels.
                xy = raw[:, :2] * (ww, hh)
                xy = (xy + 0.5) / up - 0.5
                z = -raw[:, 2] * ww / up
                pts = np.column_stack([xy, z - z.min()]).astype(np.float32)
            names.append(os.path.splitext(os.path.basename(member.name))[0])
            detected.append(found)
            points.append(pts)
            if (i + 1) % 200 == 0 or i + 1 == total:
                print(f"progress {i + 1} {total}", flush=True)
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, names=np.array(names), detected=np.array(detected), points=np.stack(points))
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
