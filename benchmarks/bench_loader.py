"""Training sample preparation on one core: median ms per sample, first use against cached.

    .venv/bin/python benchmarks/bench_loader.py [--shards cache/targets/shards] [--samples 200]
        [--resolution 128] [--mirror-probability 0.5]

One `ShardSamples` item = decode (first use only), canvas fill (cached after first use),
augmentation, target transform, downsampling to the training resolution, tensors. The first
pass over the chosen faces fills the per-process cache; the second (another epoch: other
augmentation) hits it, as a DataLoader worker does from the second epoch on. cv2 and torch
run one thread each, like a DataLoader worker. Medians; a shared machine varies +-30 %.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import torch

from prn_blender.core.layout import load_layout
from prn_blender.training.augment import AugmentSettings
from prn_blender.training.dataset import ShardSamples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=Path("cache/targets/shards"))
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--mirror-probability", type=float, default=0.5)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    dataset = ShardSamples(args.shards, load_layout(), 0,
                           AugmentSettings(mirror_probability=args.mirror_probability),
                           args.resolution)
    step = max(1, len(dataset) // args.samples)
    indices = list(range(0, len(dataset), step))[: args.samples]
    print(f"{len(indices)} of {len(dataset)} faces at {args.resolution} px, one core")
    for label, epoch in (("first use (decode + canvas fill)", 1), ("cached (next epoch)", 2)):
        times = []
        for index in indices:
            start = time.perf_counter()
            dataset[(epoch, index)]
            times.append(time.perf_counter() - start)
        print(f"{label}: median {1000 * statistics.median(times):.1f} ms per sample")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
