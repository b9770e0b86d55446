"""Worker speed: cold start, warm photo -> result arrays for a 1-megapixel photo, peak RSS.

    .venv/bin/python benchmarks/bench_worker.py [--weights FILE | --untrained] [--runs 10]
                                                [--starts 3] [--threads 2]

Uses the installed weights by default (they set the input size, 128 px for the shipped ones).
--untrained saves an untrained 256 px network to a temp folder (the refinement pass is then
mostly skipped as implausible). The warm figure is also given without refinement, without
mirror averaging and mirror fill, and with a given box. The photo is skimage's astronaut
scaled to 1000 x 1000 (1 MP) and saved as JPEG. Medians; a shared machine varies +-30 %.
Targets (issue): warm <= 0.5 s on CPU, cold start (spawn + imports + load) <= 4 s.
Peak RSS is the worker's VmHWM from /proc (Linux only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from prn_blender.core.options import ReconstructOptions
from prn_blender.inference.client import WorkerClient
from prn_blender.net.weights import default_weights_path


def _untrained_weights(folder: Path) -> Path:
    import torch

    from prn_blender.core.layout import load_layout
    from prn_blender.net.prnet import PRNet, trainable_parameter_count
    from prn_blender.net.weights import WeightsInfo, save_weights

    torch.manual_seed(0)
    model = PRNet()
    path = folder / "untrained.safetensors"
    save_weights(model, path, WeightsInfo(load_layout().layout_id,
                                          trainable_parameter_count(model), trained=False))
    return path


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="default: the installed weights")
    parser.add_argument("--untrained", action="store_true",
                        help="time an untrained 256 px network instead")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from skimage import data

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = (_untrained_weights(folder) if args.untrained
                   else default_weights_path(args.weights))
        photo = cv2.resize(data.astronaut()[:, :, :3], (1000, 1000),
                           interpolation=cv2.INTER_CUBIC)
        photo_path = folder / "astronaut_1mp.jpg"
        cv2.imwrite(str(photo_path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])

        def client() -> WorkerClient:
            return WorkerClient(sys.executable, device="auto", weights=str(weights),
                                threads=args.threads)

        cold = []
        for _ in range(args.starts):
            c = client()
            t = time.perf_counter()
            c.start()
            cold.append(time.perf_counter() - t)
            c.shutdown()
        c = client()
        info = c.start()
        path = str(photo_path)
        default = ReconstructOptions()
        c.reconstruct(path, default)  # first job: caches (cascades, layout tables)
        box = tuple(float(v) for v in c.reconstruct(path, default)[0].box)
        rows = [
            ("detect (YuNet) + refine + 1024 texture (defaults)", default),
            ("detect (YuNet) + refine, no rotation average, 1024 texture",
             ReconstructOptions(rotation_average_deg=0.0)),
            ("detect (YuNet), no refine, 1024 texture", ReconstructOptions(refine=False)),
            ("detect (YuNet) + refine, no mirror/rotation average, no mirror fill, 1024 texture",
             ReconstructOptions(mirror_average=False, rotation_average_deg=0.0,
                                mirror_fill=False)),
            ("given box, no refine, 1024 texture",
             ReconstructOptions(refine=False, boxes=(box,))),
            ("given box, no refine, no rotation average, 1024 texture",
             ReconstructOptions(refine=False, rotation_average_deg=0.0, boxes=(box,))),
            ("given box, no refine, 256 texture",
             ReconstructOptions(refine=False, boxes=(box,), texture_size=256)),
        ]
        print(f"worker: python {info['python_version']}, torch {info['torch']}, "
              f"device {info['device']}, threads {info['threads']}, trained {info['trained']}")
        print(f"cold start (spawn + imports + load + warm-up), median of {args.starts}: "
              f"{statistics.median(cold):.2f} s  (all: {', '.join(f'{t:.2f}' for t in cold)})")
        for label, options in rows:
            seconds = _median_s(lambda o=options: c.reconstruct(path, o), args.runs)
            print(f"warm 1 MP photo -> result arrays, {label}, median of {args.runs}: "
                  f"{seconds:.3f} s")
        rss = _peak_rss_mb(int(info["pid"]))
        print(f"worker peak RSS: {rss:.0f} MB" if rss is not None else "peak RSS: n/a")
        c.shutdown()
    _ = np
    return 0


if __name__ == "__main__":
    sys.exit(main())
