"""The dense teacher: MediaPipe FaceMesh (Apache-2.0), 478 points per face, in its own venv.

DESIGN.md sections 2 and 8: `mediapipe==0.10.21` is the last release with the legacy
`solutions.face_mesh` and its models inside the wheel (nothing is downloaded at run time). It
needs numpy<2 and pulls opencv-contrib-python, which clashes with our opencv-python-headless,
so it runs in cache/mediapipe-venv, created here from `requirements-mediapipe.txt`, by a runner
script (`_mediapipe_runner.py`) that imports nothing of prn_blender. Used only to make training
targets; never shipped in the add-on.

    python -m prn_blender.training.mediapipe_teacher      # -> cache/teachers/mediapipe478_*.npz

Output per face set: names, detected, points (M, 478, 3) float32 in the stored crop's pixels,
x right, y down, z = depth towards the camera in pixels (MediaPipe's z is negated: it is more
negative = closer, on about the x scale), min z = 0; NaN where no face was found. Measured here:
detected 100 % of 300W, 85.6 % of AFLW (misses are mostly beyond 60 deg of yaw), 99.96 % of
UTKFace; AFLW's 120 px crops are upscaled to 256 px first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
VENV_DIR = REPO / "cache" / "mediapipe-venv"
REQUIREMENTS = Path(__file__).with_name("requirements-mediapipe.txt")
RUNNER = Path(__file__).with_name("_mediapipe_runner.py")
SETS = {"300w": "300w", "aflw": "aflw_gt_crop", "utkface": "utkface"}


def venv_python(venv_dir: Path = VENV_DIR) -> Path:
    return venv_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def ensure_venv(venv_dir: Path = VENV_DIR) -> Path:
    """Create the MediaPipe venv with the pinned requirements (once)."""
    python = venv_python(venv_dir)
    if not python.is_file():
        venv.create(venv_dir, with_pip=True)
    probe = subprocess.run([str(python), "-c", "import mediapipe"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                       check=True)
    return python


def mediapipe_to_pixels(normalized: np.ndarray, width: int, height: int,
                        upscale: float = 1.0) -> np.ndarray:
    """(478, 3) MediaPipe output on an image of (width, height) that was the stored image
    upscaled by `upscale` -> stored-image pixels, our z convention (see module docstring)."""
    raw = np.asarray(normalized, dtype=np.float64)
    xy = (raw[:, :2] * (width, height) + 0.5) / upscale - 0.5
    z = -raw[:, 2] * width / upscale
    return np.column_stack([xy, z - z.min()]).astype(np.float32)


def run_all(out_dir: Path, faces_dir: Path, min_side: int = 256) -> None:
    python = ensure_venv()
    out_dir.mkdir(parents=True, exist_ok=True)
    for tar_stem in SETS.values():
        out = out_dir / f"mediapipe478_{tar_stem}.npz"
        if out.is_file():
            continue
        subprocess.run([str(python), str(RUNNER), str(faces_dir / f"{tar_stem}.tar"), str(out),
                        "--min-side", str(min_side)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MediaPipe dense teacher on every face set")
    parser.add_argument("--out", type=Path, default=REPO / "cache" / "teachers")
    parser.add_argument("--faces", type=Path, default=REPO.parent / "shared" / "data" / "faces")
    args = parser.parse_args(argv)
    run_all(args.out, args.faces)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
