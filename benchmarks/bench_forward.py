"""Batch-1 PRNet forward on CPU: median time of each inference variant and its error in pixels.

    .venv/bin/python benchmarks/bench_forward.py [--threads 2] [--runs 20] [--warmup 5]
        [--weights model_weights/prnet_ict256.safetensors] [--input-size 128]

The network runs at `--input-size` (default: what the weights say, e.g. 128 for the shipped
ones; 256 without weights) through `net.prnet.predict_at`, as the product does; the last
variant adds the product's mirror averaging (one batch of 2).

Variants: plain fp32 (no_grad), inference_mode, channels_last, BatchNorm folded + channels_last,
bf16 autocast + channels_last. Max |difference| is in crop pixels against plain fp32, on a
network with non-trivial BatchNorm statistics (random weights: the accuracy of bf16 on trained
weights must be checked again with them: `--weights` runs trained weights on a real face crop,
the astronaut photo's, and also prints the mean |difference| over the layout's face texels).
Timings on a shared machine are noisy (±30 %).
Without native bf16 (AVX-512 BF16 / AMX) the bf16 variant is emulated, takes seconds, and is
timed over 3 runs only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack

import torch

from prn_blender.net.prnet import PRNet, predict_at
from prn_blender.net.weights import fuse_batchnorm


def _model_with_statistics(seed: int = 0) -> PRNet:
    """A PRNet whose BatchNorm layers carry statistics from a few training-mode batches."""
    torch.manual_seed(seed)
    model = PRNet().train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, 256, 256))
    return model.eval()


def _trained(path: str) -> PRNet:
    from prn_blender.core.layout import load_layout
    from prn_blender.net.weights import load_weights

    model = PRNet()
    model.load_state_dict(load_weights(path, load_layout().layout_id)[0])
    return model.eval()


def _input_size(path: str) -> int:
    """The input side the weights run at (their metadata; the layout's side if unset)."""
    from prn_blender.core.layout import load_layout
    from prn_blender.net.weights import read_info

    return int(read_info(path).input_size or load_layout().resolution)


def _astronaut_crop() -> torch.Tensor:
    """(1, 3, 256, 256) the public-domain astronaut's face crop (scikit-image's photo)."""
    import numpy as np
    from skimage import data

    from prn_blender.core.crop import crop_from_box, warp_photo_to_crop

    photo = np.ascontiguousarray(data.astronaut()[:, :, :3])
    crop = warp_photo_to_crop(photo, crop_from_box(np.array([180.0, 88.0, 267.0, 175.0])))
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float().div(255)


def _time(fn: Callable[[], torch.Tensor], warmup: int, runs: int) -> tuple[float, torch.Tensor]:
    out = fn()
    for _ in range(warmup - 1):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--weights", default=None, help="trained weights (default: random)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="network input side, px (default: the weights', else 256)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    input_size = args.input_size or (_input_size(args.weights) if args.weights else 256)

    def make_model() -> PRNet:
        return _trained(args.weights) if args.weights else _model_with_statistics()

    model = make_model()
    image = _astronaut_crop() if args.weights else torch.rand(1, 3, 256, 256)
    image_cl = image.contiguous(memory_format=torch.channels_last)
    model_cl = make_model().to(memory_format=torch.channels_last)
    fused_cl = fuse_batchnorm(model).to(memory_format=torch.channels_last)

    def run(
        net: torch.nn.Module, x: torch.Tensor, ctx: Callable[[], AbstractContextManager[object]],
        mirror_average: bool = False,
    ) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with ctx():
                return predict_at(net, x, input_size, mirror_average).float()

        return call

    def inference() -> AbstractContextManager[object]:
        return torch.inference_mode()

    def bf16() -> AbstractContextManager[object]:
        stack = ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        return stack

    native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    bf16_name = "bf16 autocast + channels_last" + ("" if native_bf16 else " (emulated, 3 runs)")
    variants: list[tuple[str, Callable[[], torch.Tensor]]] = [
        ("plain fp32 (no_grad)", run(model, image, torch.no_grad)),
        ("inference_mode", run(model, image, inference)),
        ("channels_last", run(model_cl, image_cl, inference)),
        ("BN folded + channels_last", run(fused_cl, image_cl, inference)),
        (bf16_name, run(model_cl, image_cl, bf16)),
        ("BN folded + channels_last + mirror average", run(fused_cl, image_cl, inference, True)),
    ]
    reference: torch.Tensor | None = None
    print(f"PRNet batch-1 forward at {input_size} px input, CPU, {args.threads} threads, "
          f"median of {args.runs} "
          f"after {args.warmup} warm-up runs (torch {torch.__version__})")
    face = None
    if args.weights:
        from prn_blender.core.layout import load_layout

        face = torch.from_numpy(load_layout().face_mask.copy())
    print(f"{'variant':46s} {'median ms':>10s} {'max |diff| px':>14s}"
          + (f" {'mean on face px':>16s}" if face is not None else ""))
    for name, fn in variants:
        # Without native bf16 (AVX-512 BF16 / AMX) oneDNN emulates it: seconds per forward.
        slow = name == bf16_name and not native_bf16
        median_ms, out = _time(fn, 1 if slow else args.warmup, 3 if slow else args.runs)
        if reference is None:
            reference = out
        diff = (out - reference).abs()
        line = f"{name:46s} {median_ms:10.1f} {diff.max().item():14.4f}"
        if face is not None:
            line += f" {diff[0][:, face].mean().item():16.4f}"
        print(line)


if __name__ == "__main__":
    main()
