"""Train PRNet on target shards: `python -m prn_blender.training train --shards DIR --out RUN`.

The recipe of the paper (section 4.1) on our data: the weighted position-map loss (eq. 1, the
layout's 16 : 4 : 3 : 0 weight mask), Adam, learning rate 1e-4 halved every 5 epochs, batch 16.
On CPU: bf16 autocast with fp32 master weights and channels_last (DESIGN.md section 8); CUDA
when present. The same `PRNet` module as inference.

Resumable exactly: the sample order of an epoch is a permutation seeded by (seed, epoch), each
sample's augmentation is seeded by (seed, epoch, index), and the checkpoint stores the position
within the epoch in global samples. Checkpoints (our own files: model, optimizer, position) are
written atomically every --checkpoint-minutes and at the end.

Distributed: the same code runs under `torchrun`; each rank takes a disjoint slice of every
global batch (batch x world size samples), gradients are averaged by DistributedDataParallel,
only rank 0 writes. BatchNorm statistics stay per rank (see prn_blender.training.distributed).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ..core.layout import UVLayout, load_layout
from ..net.prnet import PRNet, pixels_to_normalized
from .augment import NO_AUGMENTATION, AugmentSettings, make_sample
from .shards import ShardReader

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TrainConfig:
    shards: Path
    out: Path
    batch: int = 16
    lr: float = 1e-4
    halve_every_epochs: float = 5.0
    epochs: float = 1000.0
    max_minutes: float | None = None
    max_steps: int | None = None
    bf16: bool | None = None
    """None = auto: on CUDA, or on a CPU with native bf16 (else bf16 is several times slower)."""
    channels_last: bool = True
    num_workers: int = 1
    checkpoint_minutes: float = 5.0
    eval_minutes: float = 15.0
    seed: int = 0
    device: str = "auto"
    init_from: Path | None = None
    width: int = 16
    augment: bool = True


class ShardSamples(torch.utils.data.Dataset):
    """Item (epoch, index) -> (image (3, R, R) float [0, 1], target (3, R, R) normalised,
    weights (R, R)). Deterministic in (seed, epoch, index)."""

    def __init__(self, shards: Path, layout: UVLayout, seed: int, augment: AugmentSettings):
        self.reader = ShardReader(shards)
        self.face_mask = layout.face_mask
        self.weight_mask = layout.weight_mask
        self.seed = seed
        self.augment = augment

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        epoch, index = key
        sample = self.reader[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        bgr = cv2.imdecode(np.frombuffer(sample.jpeg, np.uint8), cv2.IMREAD_COLOR)
        crop, target, weights = make_sample(
            np.ascontiguousarray(bgr[:, :, ::-1]), sample.position_map, sample.box,
            self.face_mask, self.weight_mask, rng, self.augment,
        )
        image = torch.from_numpy(crop).permute(2, 0, 1).float().div_(255.0)
        tgt = pixels_to_normalized(torch.from_numpy(target).permute(2, 0, 1))
        return image, tgt, torch.from_numpy(weights)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7]).permutation(n)


class ResumableBatches(torch.utils.data.Sampler):
    """Yields this rank's slice of each global batch, from a global sample position."""

    def __init__(self, n: int, batch: int, seed: int, epoch: int, start: int, rank: int,
                 world: int) -> None:
        self.n, self.batch, self.seed, self.epoch = n, batch, seed, epoch
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch)
        global_batch = self.batch * self.world
        for pos in range(self.start, self.n - global_batch + 1, global_batch):
            mine = order[pos + self.rank * self.batch : pos + (self.rank + 1) * self.batch]
            yield [(self.epoch, int(i)) for i in mine]

    def __len__(self) -> int:
        return max(0, (self.n - self.start) // (self.batch * self.world))


def weighted_position_loss(
    pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Paper eq. 1: sum over texels of W(u, v) * ||P(u, v) - P~(u, v)||^2, normalised by the
    total weight. pred/target (N, 3, R, R) in normalised units, weights (N, R, R)."""
    sq = ((pred.float() - target) ** 2).sum(dim=1)
    return (sq * weights).sum() / weights.sum().clamp_min(1.0)


def bf16_useful(device: torch.device) -> bool:
    """bf16 autocast pays off on CUDA and on CPUs with native bf16 (AVX-512 BF16 / AMX);
    elsewhere oneDNN emulates it and a training step was measured 5-10x slower than fp32."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def lr_at(config: TrainConfig, epoch_float: float) -> float:
    return config.lr * 0.5 ** math.floor(epoch_float / config.halve_every_epochs)


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(config: TrainConfig, evaluate_fn=None) -> Path:
    """Run (or resume) training; returns the path of the last checkpoint."""
    from .distributed import DistributedContext

    dist_ctx = DistributedContext.from_env(config.device)
    device = dist_ctx.device
    torch.manual_seed(config.seed)
    layout = load_layout()
    dataset = ShardSamples(config.shards, layout, config.seed,
                           AugmentSettings() if config.augment else NO_AUGMENTATION)
    model = PRNet(width=config.width)
    ckpt_path = config.out / "last.pt"
    state = None
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
    elif config.init_from is not None:
        from ..net.weights import load_weights

        init_state, _ = load_weights(config.init_from)
        model.load_state_dict(init_state)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    epoch = int(state["epoch"]) if state else 0
    position = int(state["position"]) if state else 0
    step = int(state["step"]) if state else 0
    train_model: nn.Module = dist_ctx.wrap(model)

    if dist_ctx.is_main:
        config.out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    global_batch = config.batch * dist_ctx.world_size
    steps_per_epoch = n // global_batch
    dist_ctx.log(
        f"training on {n} faces, {dist_ctx.world_size} process(es) on {device}: batch "
        f"{config.batch} per process, effective {global_batch}; Adam lr {config.lr:g} halved "
        f"every {config.halve_every_epochs:g} epochs ({steps_per_epoch} steps per epoch)"
    )
    log_path = config.out / "log.csv"
    started = time.monotonic()
    last_ckpt = last_eval = started
    use_autocast = bf16_useful(device) if config.bf16 is None else config.bf16
    images_done, window_start = 0, time.monotonic()

    def save() -> None:
        if dist_ctx.is_main:
            _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "epoch": epoch, "position": position, "step": step,
                          "config": {k: str(v) for k, v in vars(config).items()}}, ckpt_path)

    from tqdm import tqdm

    bar = tqdm(total=None, disable=not dist_ctx.is_main, desc="train", unit="step",
               initial=step, mininterval=10)
    stop = False
    while epoch < config.epochs and not stop:
        sampler = ResumableBatches(n, config.batch, config.seed, epoch, position,
                                   dist_ctx.rank, dist_ctx.world_size)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=config.num_workers,
            persistent_workers=False, prefetch_factor=4 if config.num_workers else None,
        )
        train_model.train()
        for image, target, weights in loader:
            lr = lr_at(config, epoch + position / max(n, 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            image, target, weights = image.to(device), target.to(device), weights.to(device)
            if config.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                pred = train_model(image)
            loss = weighted_position_loss(pred, target, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            position += global_batch
            images_done += global_batch
            now = time.monotonic()
            if dist_ctx.is_main:
                rate = images_done / max(now - window_start, 1e-6)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.5f}", img_s=f"{rate:.1f}", epoch=epoch)
                new = not log_path.is_file()
                with open(log_path, "a", newline="") as fh:
                    writer = csv.writer(fh)
                    if new:
                        writer.writerow(["step", "epoch", "lr", "loss", "images_per_s", "wall_s"])
                    writer.writerow([step, f"{epoch + position / n:.4f}", f"{lr:.3g}",
                                     f"{loss.item():.6f}", f"{rate:.2f}",
                                     f"{now - started:.1f}"])
            if now - last_ckpt > config.checkpoint_minutes * 60:
                save()
                last_ckpt = now
            if evaluate_fn is not None and dist_ctx.is_main and \
                    now - last_eval > config.eval_minutes * 60:
                save()
                _record_eval(config.out, step, epoch + position / n, evaluate_fn(model))
                last_eval = time.monotonic()
                train_model.train()
            if (config.max_minutes is not None and now - started > config.max_minutes * 60) or \
                    (config.max_steps is not None and step >= config.max_steps):
                stop = True
                break
        if not stop:
            epoch += 1
            position = 0
    save()
    bar.close()
    if dist_ctx.is_main:
        plot_loss(log_path, config.out / "loss.png")
    dist_ctx.close()
    return ckpt_path


def _record_eval(out: Path, step: int, epoch: float, metrics: dict[str, float]) -> None:
    path = out / "eval.csv"
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(["step", "epoch", *metrics])
        writer.writerow([step, f"{epoch:.3f}", *(f"{v:.4f}" for v in metrics.values())])


def plot_loss(log_path: Path, png_path: Path, size: tuple[int, int] = (800, 400)) -> None:
    """Loss curve (log scale, smoothed) drawn with OpenCV."""
    if not log_path.is_file():
        return
    with open(log_path) as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) < 2:
        return
    steps = np.array([float(r["step"]) for r in rows])
    loss = np.log10(np.maximum([float(r["loss"]) for r in rows], 1e-12))
    k = max(1, len(loss) // 100)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    xs = steps[k - 1 :]
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = 60, 20, w - 20, h - 40
    lo, hi = smooth.min(), smooth.max() + 1e-9
    px = x0 + (xs - xs.min()) / max(xs.max() - xs.min(), 1) * (x1 - x0)
    py = y1 - (smooth - lo) / (hi - lo) * (y1 - y0)
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    cv2.polylines(img, [np.stack([px, py], 1).astype(np.int32)], False, (200, 60, 0), 2)
    cv2.putText(img, f"log10 loss {hi:.2f}", (5, y0 + 10), cv2.FONT_HERSHEY_PLAIN, 1, (0, 0, 0))
    cv2.putText(img, f"{lo:.2f}", (5, y1), cv2.FONT_HERSHEY_PLAIN, 1, (0, 0, 0))
    cv2.putText(img, f"step {int(xs.min())} .. {int(xs.max())}", (x0, h - 12),
                cv2.FONT_HERSHEY_PLAIN, 1, (0, 0, 0))
    cv2.imwrite(str(png_path), img)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, default=REPO / "cache" / "targets" / "shards")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "prnet")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--halve-every-epochs", type=float, default=5.0)
    parser.add_argument("--epochs", type=float, default=1000.0)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: only where the hardware runs it natively)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--eval-minutes", type=float, default=15.0)
    parser.add_argument("--no-eval", action="store_true", help="skip the periodic dev NME")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--init-from", type=Path, default=None)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--width", type=int, default=16, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        shards=args.shards, out=args.out, batch=args.batch, lr=args.lr,
        halve_every_epochs=args.halve_every_epochs, epochs=args.epochs,
        max_minutes=args.max_minutes, max_steps=args.max_steps, bf16=args.bf16,
        channels_last=args.channels_last, num_workers=args.num_workers,
        checkpoint_minutes=args.checkpoint_minutes, eval_minutes=args.eval_minutes,
        seed=args.seed, device=args.device, init_from=args.init_from, width=args.width,
        augment=not args.no_augment,
    )
