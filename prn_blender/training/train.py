"""Train PRNet on target shards: `python -m prn_blender.training train --shards DIR --out RUN`.

The paper's recipe (Feng et al., ECCV 2018, section 4.1) on our data: the weighted position-map
loss (eq. 1 with the layout's 16 : 4 : 3 : 0 weight mask, loss.py), Adam, learning rate 1e-4
halved every 5 epochs, batch 16, on the SAME `PRNet` module inference uses. CUDA when present;
on CPU channels_last, and bf16 autocast (fp32 master weights) where the CPU runs bf16 natively
(AVX-512 BF16 / AMX: DESIGN.md section 8 measured 15.6 img/s against 7.1 in fp32) -- on CPUs
without it oneDNN emulates bf16 and a step is about 10x SLOWER, so `--bf16` defaults to auto.

Resumable exactly: batches are a pure function of (seed, epoch, position), see dataset.py; a
checkpoint `RUN/last.pt` (model incl. BatchNorm statistics, Adam state, schedule, step, epoch,
position within the epoch in global samples, RNG states, the weight average of
`--ema-decay`) is written atomically (tmp +
os.replace) every --checkpoint-minutes, on SIGTERM / SIGINT (e.g. SLURM's pre-emption signal),
at --max-minutes / --max-steps and at the end. `--resume` continues from it; a run killed at
any moment and resumed repeats the steps since the last checkpoint and ends with the same
weights as an uninterrupted run.

Outputs in RUN/: last.pt, log.csv (step, epoch, lr, loss, landmark NME of the batch in %,
img/s, wall s), loss.png (drawn with OpenCV), eval.csv (the `evaluate_fn` hook, every
--eval-minutes), config.json; with --keep-evaluated, stepN.pt: each checkpoint an evaluation
scored. Distributed: see distributed.py (same code, under torchrun).
"""

from __future__ import annotations

import argparse
import ast
import collections
import csv
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..core.layout import load_layout
from ..net.prnet import PRNet, normalized_to_pixels
from .augment import NO_AUGMENTATION, AugmentSettings
from .dataset import CONTENT_CACHE_FACES, ResumableBatchSampler, ShardSamples, yaw_repeats
from .distributed import DEFAULT_TIMEOUT_S, DistributedContext
from .loss import batch_landmark_nme, weighted_loss_from_normalized
from .shards import ShardDataset

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 1

EvaluateFn = Callable[[nn.Module], dict[str, float]]
"""Takes the PRNet (pixel output, any mode; it may switch to eval), returns named figures."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on. Defaults = the paper's recipe."""

    shards: Path
    out: Path
    batch: int = 16
    """Per process; the effective batch is batch x world size."""
    lr: float = 1e-4
    halve_every_epochs: float = 5.0
    epochs: float = 1000.0
    max_minutes: float | None = None
    """Wall-clock budget of this invocation (a resumed run gets a fresh budget)."""
    max_steps: int | None = None
    """Stop once the global step count reaches this (counts across resumes)."""
    resume: bool = False
    bf16: bool | None = None
    """None = auto: on CUDA with bf16, or on a CPU with native bf16."""
    channels_last: bool = True
    num_workers: int = 1
    threads: int | None = None
    checkpoint_minutes: float = 5.0
    eval_minutes: float = 15.0
    seed: int = 0
    device: str = "auto"
    init_from: Path | None = None
    augment: bool = True
    mirror_probability: float = 0.0
    layout: Path | None = None
    """UV layout .npz; None = the shipped one. Tests pass a small synthetic layout."""
    width: int = 16
    """PRNet width (16 = the paper). Smaller values are for tests only."""
    resolution: int | None = None
    """Training input side in pixels; None = the layout's (256). PRNet is fully convolutional,
    so a coarse first stage at 128 (about 5x the images per second on CPU) trains the same
    weights; targets are block-averaged, see dataset.downsample_sample."""
    sync_bn: bool = False
    dist_timeout_s: float = DEFAULT_TIMEOUT_S
    gradient_loss_weight: float = 0.0
    """Weight of `loss.weighted_gradient_loss` added to the paper's loss (0 = the paper): it
    penalises texel-scale ripples that eq. 1 hardly sees but that show in the mesh shading."""
    ema_decay: float = 0.999
    """Per-step decay of an exponential moving average of the weights and BatchNorm
    statistics (torch.optim.swa_utils.AveragedModel), kept in the checkpoint, evaluated and
    exported instead of the raw weights; 0 = off. 0.999 averages over about 1,000 steps:
    single checkpoints of the raw weights were measured to swing by ~1 point of dev NME. The
    decay warms up (`ema_decay_at`), and the average restarts when a resumed run changes
    `resolution` (a new stage: the old stage's weights score badly at the new size)."""
    yaw_repeats: tuple[int, int, int] = (1, 1, 1)
    """Appearances per epoch of a face with |yaw| in 0-30, 30-60, 60+ degrees
    (`dataset.yaw_repeats`; faces of unknown yaw appear once). (1, 1, 1) = each face once."""
    keep_evaluated: bool = False
    """Keep the checkpoint each in-training evaluation scored as RUN/stepN.pt (`keep_copy`), so
    a full evaluation afterwards can pick the best point of a learning-rate cycle: the quick
    evaluation's 100 faces per set are too few to pick by (session 9: its best AFLW figure
    came mid-cycle, and only last.pt was left)."""


def bf16_useful(device: torch.device) -> bool:
    """bf16 autocast pays off on CUDA GPUs with native bf16 (Ampere and newer) and on CPUs
    with native bf16 (AVX-512 BF16 / AMX); elsewhere it is emulated and slower than fp32 (a
    step was measured about 10x slower on an AVX2 machine, 1.5x on AVX-512 without BF16)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU computes bf16 natively: the avx512_bf16 or amx_bf16 flags of
    /proc/cpuinfo (Linux; `cpuinfo` = its text, for tests). oneDNN's own check is true for
    any AVX-512 CPU, which emulates bf16, so it is only the answer where /proc is absent."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def lr_at(config: TrainConfig, epoch_float: float) -> float:
    """Adam learning rate after `epoch_float` epochs: halved every `halve_every_epochs`."""
    return config.lr * 0.5 ** math.floor(epoch_float / config.halve_every_epochs)


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not also keep half a checkpoint
        raise


def keep_copy(checkpoint: Path, step: int) -> Path:
    """`checkpoint` kept beside it as stepN.pt: a hard link, since `_atomic_save` replaces
    last.pt rather than writing into it (no extra disk until it does), or a copy where the
    file system has no hard links."""
    kept = checkpoint.with_name(f"step{step}.pt")
    kept.unlink(missing_ok=True)
    try:
        os.link(checkpoint, kept)
    except OSError:
        shutil.copyfile(checkpoint, kept)
    return kept


def checkpoint_input_size(checkpoint: dict, default: int) -> int:
    """The input side a trainer checkpoint was last trained at (its `--resolution`)."""
    value = checkpoint.get("config", {}).get("resolution", "None")
    return int(value) if value not in (None, "None", "") else default


def load_checkpoint(path: Path) -> dict:
    """A trainer checkpoint (our own file: torch.load with weights_only=True). Raises
    FileNotFoundError / ValueError with a sentence for a missing file or another kind of file
    (an exported .safetensors belongs to --weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at '{path}' (a run folder's last.pt or stepN.pt)")
    if path.suffix == ".safetensors":
        raise ValueError(f"'{path}' is an exported weights file, not a trainer checkpoint: "
                         "pass it as --weights (eval, readout) or --init-from (train)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated copy, or not torch.save output at all
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"'{path}' is not a readable trainer checkpoint ({reason})") from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"'{path}' is not a trainer checkpoint (no 'model' entry)")
    return checkpoint


def ema_decay_at(decay: float, n_averaged: int) -> float:
    """Decay of the update after `n_averaged` earlier ones: min(decay, (1 + n) / (10 + n)),
    so the average forgets its starting point quickly (it spans about the last tenth of the
    steps until that reaches `decay`)."""
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged))


def _ema_update_fn(decay: float) -> Callable:
    """AveragedModel `multi_avg_fn` with the warm-up of `ema_decay_at` (float tensors; the
    integer BatchNorm step counters are copied)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               n_averaged: torch.Tensor) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - ema_decay_at(decay, int(n_averaged)))
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


def checkpoint_weights(checkpoint: dict, ema: bool = True) -> dict[str, torch.Tensor]:
    """The PRNet state dict of a trainer checkpoint: its weight average when it has one and
    `ema` is set (what eval and export use by default), else the raw training weights."""
    averaged = checkpoint.get("ema")
    if not ema or averaged is None:
        return checkpoint["model"]
    return {k.removeprefix("module."): v for k, v in averaged.items() if k != "n_averaged"}


def _initial_state(path: Path) -> dict[str, torch.Tensor]:
    """Model weights to start from: a trainer checkpoint (.pt, its average if it has one)
    or exported safetensors."""
    if path.suffix == ".safetensors":
        from ..net.weights import load_weights

        state, _ = load_weights(path)
        return state
    return checkpoint_weights(load_checkpoint(path))


def _rng_state() -> dict[str, torch.Tensor]:
    """The only global RNG the loop touches is torch's (initialisation); augmentation uses
    per-sample generators seeded by (seed, epoch, index)."""
    return {"torch": torch.get_rng_state()}


def _truncate_csv(path: Path, last_step: int, header: list[str] | None = None) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be redone). A log
    with another header (older trainer version) is moved aside to `<name>.old.csv`."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    if header is not None and rows[0] != header:
        os.replace(path, path.with_suffix(".old.csv"))
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= last_step]
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)


def _append_csv(path: Path, header: list[str], row: list) -> None:
    """Append `row` (values for `header`). A file written with other columns (a resumed run
    whose evaluation changed) is first rewritten with the union of both, blank where absent."""
    values = dict(zip(header, row, strict=True))
    columns = header
    if path.is_file():
        with open(path, newline="") as fh:
            columns = next(csv.reader(fh), []) or header
        if not set(header) <= set(columns):
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            columns = columns + [c for c in header if c not in columns]
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, columns, restval="")
                writer.writeheader()
                writer.writerows(rows)
            tmp.replace(path)
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, columns, restval="")
        if new:
            writer.writeheader()
        writer.writerow(values)


LOG_HEADER = ["step", "epoch", "lr", "loss", "nme_pct", "images_per_s", "wall_s"]


class _StopSignal:
    """SIGTERM / SIGINT set a flag: the loop checkpoints and stops at the next step."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def train(config: TrainConfig, evaluate_fn: EvaluateFn | None = None) -> Path:
    """Run (or resume) training; returns the path of the last checkpoint."""
    ctx = DistributedContext.from_env(config.device, config.sync_bn, config.dist_timeout_s)
    try:
        return _train(config, ctx, evaluate_fn)
    finally:
        ctx.close()


def _train(config: TrainConfig, ctx: DistributedContext, evaluate_fn: EvaluateFn | None) -> Path:
    device = ctx.device
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    layout = load_layout(config.layout)
    if not 0.0 <= config.mirror_probability <= 1.0:
        raise ValueError(f"--mirror-probability must be in [0, 1], got "
                         f"{config.mirror_probability}")
    if config.mirror_probability > 0 and not config.augment:
        raise ValueError("--mirror-probability is an augmentation: drop it or --no-augment")
    if config.mirror_probability > 0 and not layout.is_mirror_symmetric:
        raise ValueError(f"--mirror-probability needs a mirror-symmetric layout; "
                         f"'{layout.layout_id}' is off by {layout.mirror_error_cm:.3g} cm")
    augment = AugmentSettings(mirror_probability=config.mirror_probability)
    ckpt_path = config.out / CHECKPOINT_NAME
    state = None
    if ckpt_path.is_file():
        if not config.resume:
            raise FileExistsError(
                f"'{ckpt_path}' exists: pass --resume to continue that run, or choose a new "
                "--out."
            )
        state = load_checkpoint(ckpt_path)
        # The epoch position counts samples of the repeated list: it must be the same list.
        saved = state.get("config", {}).get("yaw_repeats", str((1, 1, 1)))
        if saved != str(tuple(config.yaw_repeats)):
            raise ValueError(f"'{ckpt_path}' was trained with --yaw-repeats "
                             f"{saved.strip('()').replace(' ', '')}: resume with the same, or "
                             "start a new --out with --init-from that checkpoint")
    shards = ShardDataset(config.shards)
    repeats = (None if tuple(config.yaw_repeats) == (1, 1, 1)
               else yaw_repeats(shards.yaw_deg, config.yaw_repeats))
    dataset = ShardSamples(shards, layout, config.seed,
                           augment if config.augment else NO_AUGMENTATION, config.resolution,
                           CONTENT_CACHE_FACES // max(1, config.num_workers), repeats)
    model = PRNet(width=config.width)
    if state is not None:
        model.load_state_dict(state["model"])
    elif config.init_from is not None:
        model.load_state_dict(_initial_state(config.init_from))
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must be in [0, 1), got {config.ema_decay}")
    ema = None
    if config.ema_decay > 0 and ctx.is_main:
        from torch.optim.swa_utils import AveragedModel

        ema = AveragedModel(model, multi_avg_fn=_ema_update_fn(config.ema_decay),
                            use_buffers=True)
        same_stage = state is not None and (
            checkpoint_input_size(state, layout.resolution)
            == (config.resolution or layout.resolution))
        if state is not None and "ema" in state and same_stage:
            ema.load_state_dict(state["ema"])
        elif state is not None and "ema" in state:
            ctx.log("new input resolution: the weight average restarts from these weights")
    elif state is not None and "ema" in state and ctx.is_main:
        ctx.log("--ema-decay 0: the checkpoint's weight average is dropped")
    epoch = position = step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        epoch, position, step = int(state["epoch"]), int(state["position"]), int(state["step"])
        if "rng" in state:  # absent in checkpoints of the first trainer version
            torch.set_rng_state(state["rng"]["torch"])
    train_model = ctx.wrap(model)
    # Texel centres at integers; rescaled to the training map's side (same UV points).
    landmark_texels = torch.from_numpy(
        (np.array(layout.landmark_texels, np.float32) + 0.5) * dataset.size
        / dataset.resolution - 0.5)

    n = len(dataset)
    global_batch = config.batch * ctx.world_size
    steps_per_epoch = n // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{n} faces cannot fill one global batch of {global_batch}")
    use_bf16 = bf16_useful(device) if config.bf16 is None else config.bf16
    log_path, eval_path = config.out / "log.csv", config.out / "eval.csv"
    if ctx.is_main:
        config.out.mkdir(parents=True, exist_ok=True)
        if state is not None:
            _truncate_csv(log_path, step, LOG_HEADER)
            _truncate_csv(eval_path, step)
        run_info = {**{k: str(v) for k, v in asdict(config).items()},
                    "world_size": ctx.world_size, "effective_batch": global_batch,
                    "faces": len(shards), "samples_per_epoch": n, "device": str(device),
                    "bf16": use_bf16,
                    "layout_id": layout.layout_id}
        (config.out / "config.json").write_text(json.dumps(run_info, indent=1) + "\n")
    oversampled = "" if repeats is None else f" as {n} samples per epoch (yaw repeats " \
        f"{','.join(map(str, config.yaw_repeats))})"
    ctx.log(
        f"{'resuming at step ' + str(step) if state else 'training'}: {len(shards)} faces"
        f"{oversampled}, "
        f"{ctx.world_size} process(es) on {device}, batch {config.batch} per process = "
        f"effective batch {global_batch}, {steps_per_epoch} steps per epoch; Adam lr "
        f"{config.lr:g} halved every {config.halve_every_epochs:g} epochs "
        f"({config.halve_every_epochs * steps_per_epoch:.0f} steps); "
        f"{'bf16 autocast' if use_bf16 else 'fp32'}"
        f"{', channels_last' if config.channels_last else ''}; "
        f"input {dataset.size}x{dataset.size} px; "
        f"BatchNorm {'synchronised' if ctx.sync_bn else 'per rank'}; "
        f"{f'weight average decay {config.ema_decay:g}' if ema is not None else 'no average'}"
    )

    def save() -> None:
        if ctx.is_main:
            _atomic_save({
                "format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": {"lr": config.lr, "halve_every_epochs": config.halve_every_epochs},
                "epoch": epoch, "position": position, "step": step,
                "world_size": ctx.world_size, "width": config.width,
                "layout_id": layout.layout_id, "rng": _rng_state(),
                "config": {k: str(v) for k, v in asdict(config).items()},
                **({"ema": ema.state_dict(), "ema_decay": config.ema_decay}
                   if ema is not None else {}),
            }, ckpt_path)

    started = last_ckpt = last_eval = time.monotonic()
    recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=20)
    recent.append((started, 0))
    images = 0
    bar = tqdm(desc="train", unit="step", initial=step, total=config.max_steps,
               disable=not ctx.is_main, dynamic_ncols=True)
    stop = False
    if position + global_batch > n:  # a checkpoint taken at an epoch's dropped remainder
        epoch, position = epoch + 1, 0
    # One loader over all remaining epochs: its workers (and their caches) live for the run.
    sampler = ResumableBatchSampler(n, config.batch, config.seed, epoch, position, ctx.rank,
                                    ctx.world_size, end_epoch=math.ceil(config.epochs))
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=config.num_workers,
        prefetch_factor=4 if config.num_workers else None,
        worker_init_fn=_worker_init, pin_memory=device.type == "cuda",
    )
    with _StopSignal() as stop_signal:
        if epoch + position / n < config.epochs and (config.max_steps is None
                                                     or step < config.max_steps):
            train_model.train()
            for image, target, weights in loader:
                lr = lr_at(config, epoch + position / n)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                image = image.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                weights = weights.to(device, non_blocking=True)
                if config.channels_last:
                    image = image.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    pred = train_model(image)
                loss = weighted_loss_from_normalized(pred, target, weights,
                                                     config.gradient_loss_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                position += global_batch
                images += global_batch
                if position + global_batch > n:  # epoch done (its last partial batch dropped)
                    epoch += 1
                    position = 0
                now = time.monotonic()
                want_stop = (
                    stop_signal.raised
                    or (config.max_minutes is not None and now - started
                        >= config.max_minutes * 60)
                    or (config.max_steps is not None and step >= config.max_steps)
                    or epoch + position / n >= config.epochs
                )
                mean_loss, stop = ctx.mean_and_any(float(loss.detach()), want_stop)
                if ctx.is_main:
                    recent.append((now, images))
                    rate = (recent[-1][1] - recent[0][1]) / max(recent[-1][0] - recent[0][0],
                                                                1e-6)
                    nme = batch_landmark_nme(
                        normalized_to_pixels(pred.detach().float()), target, weights,
                        landmark_texels)
                    bar.update(1)
                    bar.set_postfix(loss=f"{mean_loss:.3g}", nme=f"{100 * nme:.1f}%",
                                    img_s=f"{rate:.1f}", ep=f"{epoch + position / n:.2f}",
                                    refresh=False)
                    _append_csv(log_path, LOG_HEADER, [
                        step, f"{epoch + position / n:.4f}", f"{lr:.4g}", f"{mean_loss:.6g}",
                        f"{100 * nme:.3f}", f"{rate:.2f}", f"{now - started:.1f}"])
                if stop:
                    break
                if now - last_ckpt >= config.checkpoint_minutes * 60:
                    save()
                    last_ckpt = now
                if evaluate_fn is not None and ctx.is_main and \
                        now - last_eval >= config.eval_minutes * 60:
                    save()
                    last_ckpt = time.monotonic()
                    if config.keep_evaluated:
                        keep_copy(ckpt_path, step)
                    figures = evaluate_fn(model if ema is None else ema.module)
                    _append_csv(eval_path, ["step", "epoch", "wall_s", *figures],
                                [step, f"{epoch + position / n:.4f}",
                                 f"{time.monotonic() - started:.1f}",
                                 *(f"{v:.4f}" for v in figures.values())])
                    ctx.log(f"step {step} eval: " + ", ".join(
                        f"{k} {v:.3f}" for k, v in figures.items()))
                    last_eval = time.monotonic()
                    train_model.train()
    save()
    bar.close()
    if ctx.is_main:
        plot_loss(log_path, config.out / "loss.png")
        ctx.log(f"stopped at step {step} (epoch {epoch + position / n:.3f}); "
                f"checkpoint {ckpt_path}")
    return ckpt_path


def _worker_init(worker_id: int) -> None:
    cv2.setNumThreads(1)  # the loader shares the cores with training
    # torchrun and SLURM stop a job by signalling its whole process group: a loader worker
    # that died of it would crash the trainer (DataLoader raises) before it saves. The
    # trainer itself stops at the next step, checkpoints, and shuts its workers down.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def plot_loss(log_path: Path, png_path: Path, size: tuple[int, int] = (800, 400)) -> None:
    """The loss curve of log.csv (log10 scale, raw in grey, smoothed in blue), drawn with
    OpenCV into a PNG."""
    if not log_path.is_file():
        return
    with open(log_path) as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) < 2:
        return
    steps = np.array([float(r["step"]) for r in rows])
    loss = np.log10(np.maximum([float(r["loss"]) for r in rows], 1e-12))
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = 70, 20, w - 20, h - 40
    lo, hi = float(loss.min()), float(loss.max()) + 1e-9

    def points(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        px = x0 + (xs - steps.min()) / max(steps.max() - steps.min(), 1) * (x1 - x0)
        py = y1 - (ys - lo) / (hi - lo) * (y1 - y0)
        return np.stack([px, py], 1).round().astype(np.int32)

    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    cv2.polylines(img, [points(steps, loss)], False, (200, 200, 200), 1, cv2.LINE_AA)
    cv2.polylines(img, [points(steps[k - 1 :], smooth)], False, (200, 60, 0), 2, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_PLAIN
    cv2.putText(img, f"{hi:.2f}", (5, y0 + 10), font, 1, (0, 0, 0))
    cv2.putText(img, f"{lo:.2f}", (5, y1), font, 1, (0, 0, 0))
    cv2.putText(img, "log10 loss", (5, (y0 + y1) // 2), font, 1, (0, 0, 0))
    cv2.putText(img, f"step {int(steps.min())} .. {int(steps.max())}", (x0, h - 12), font, 1,
                (0, 0, 0))
    cv2.imwrite(str(png_path), img)


def export_checkpoint(checkpoint: Path, out: Path, summary: str = "", dev_nme: str = "",
                      input_size: int | None = None, ema: bool = True) -> Path:
    """Write a trainer checkpoint's model (its weight average if it has one and `ema`) as
    shipped safetensors (net.weights.save_weights, fp16, with the layout id it was trained
    for and the input size it runs at: by default the resolution it was last trained at)."""
    from ..net.prnet import trainable_parameter_count
    from ..net.weights import WeightsInfo, save_weights

    state = load_checkpoint(checkpoint)
    model = PRNet(width=int(state.get("width", 16)))
    model.load_state_dict(checkpoint_weights(state, ema))
    layout = load_layout()
    layout_id = str(state.get("layout_id") or layout.layout_id)
    config = state.get("config", {})
    default_summary = (
        f"{state['step']} steps (epoch {state['epoch']} + {state['position']} faces), batch "
        f"{config.get('batch', '?')} x {state.get('world_size', 1)} process(es), Adam lr "
        f"{config.get('lr', '?')} halved every {config.get('halve_every_epochs', '?')} epochs"
        + (f", weight average (decay {state.get('ema_decay', config.get('ema_decay'))})"
           if ema and "ema" in state else "")
        + (f", gradient loss x {config['gradient_loss_weight']}"
           if float(config.get("gradient_loss_weight", 0) or 0) else "")
        + (f", mirrored samples {config['mirror_probability']}"
           if float(config.get("mirror_probability", 0) or 0) else "")
    )
    resolution = layout.resolution
    size = input_size or checkpoint_input_size(state, resolution)
    info = WeightsInfo(layout_id=layout_id, parameter_count=trainable_parameter_count(model),
                       trained=True, training=summary or default_summary, dev_nme=dev_nme,
                       input_size=0 if size == resolution else size)
    save_weights(model, out, info)
    return Path(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `train` subcommand's options."""
    a = parser.add_argument
    a("--shards", type=Path, default=REPO / "cache" / "targets" / "shards")
    a("--out", type=Path, default=REPO / "runs" / "prnet", help="run folder")
    a("--batch", type=int, default=16, help="images per process and step")
    a("--lr", type=float, default=1e-4)
    a("--halve-every-epochs", type=float, default=5.0)
    a("--epochs", type=float, default=1000.0)
    a("--max-minutes", type=float, default=None, help="wall-clock budget of this invocation")
    a("--max-steps", type=int, default=None, help="stop at this global step")
    a("--resume", action="store_true", help="continue RUN/last.pt (fresh start if absent)")
    a("--bf16", action=argparse.BooleanOptionalAction, default=None,
      help="bf16 autocast (default: only where the hardware runs bf16 natively)")
    a("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    a("--num-workers", type=int, default=1, help="DataLoader worker processes")
    a("--resolution", type=int, default=None,
      help="training input side in px (default: the layout's 256; 128 for a fast first stage)")
    a("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a("--checkpoint-minutes", type=float, default=5.0)
    a("--eval-minutes", type=float, default=15.0)
    a("--no-eval", action="store_true", help="skip the periodic dev evaluation")
    a("--seed", type=int, default=0)
    a("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    a("--init-from", type=Path, default=None, help="start from a .pt checkpoint or .safetensors")
    a("--no-augment", action="store_true")
    a("--mirror-probability", type=float, default=0.0,
      help="mirror this fraction of samples left-right (not in the paper; 0 = off)")
    a("--layout", type=Path, default=None, help="UV layout .npz (default: the shipped one)")
    a("--sync-bn", action="store_true", help="SyncBatchNorm across ranks (CUDA only)")
    a("--dist-timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
      help="collective timeout: a dead rank fails the job after at most this long")
    a("--gradient-loss-weight", type=float, default=0.0,
      help="add this x the finite-difference loss (against texel ripples; 0 = the paper)")
    a("--ema-decay", type=float, default=0.999,
      help="per-step decay of the weight average that eval and export use (0 = off)")
    a("--yaw-repeats", type=_three_counts, default=(1, 1, 1), metavar="A,B,C",
      help="per epoch, show faces with |yaw| in 0-30, 30-60, 60+ degrees A, B, C times "
           "(unknown yaw: once; default 1,1,1)")
    a("--keep-evaluated", action="store_true",
      help="keep each checkpoint the periodic evaluation scored as RUN/stepN.pt (hard links; "
           "about 210 MB each once last.pt moves on), to pick the best by a full eval later")
    a("--width", type=int, default=16, help=argparse.SUPPRESS)  # tests only


def _three_counts(text: str) -> tuple[int, int, int]:
    try:
        counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 3 or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected three whole numbers >= 1 like 1,2,3, "
                                         f"got '{text}'")
    return counts  # type: ignore[return-value]


RESUMED_OPTIONS = ("batch", "lr", "halve_every_epochs", "epochs", "seed", "augment",
                   "mirror_probability", "resolution", "gradient_loss_weight", "ema_decay",
                   "yaw_repeats", "keep_evaluated", "channels_last", "width")
"""The recipe: what `--resume` takes from the run's config.json unless given again."""
_OPTION_DESTS = {"augment": "no_augment"}
"""TrainConfig field -> argparse dest, where they differ."""


def given_options(argv: list[str]) -> set[str]:
    """The argparse dests of the `train` options written out in `argv` (not defaulted)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return set(vars(parser.parse_known_args(argv)[0]))


def _saved_value(text: object) -> object:
    try:
        return ast.literal_eval(text) if isinstance(text, str) else text
    except (ValueError, SyntaxError):
        return text


def with_run_options(config: TrainConfig, given: set[str]) -> TrainConfig:
    """For `--resume` of an existing run: the recipe options (`RESUMED_OPTIONS`) that `given`
    does not name come from the run's config.json (its last invocation), so a bare
    `--resume` goes on with the same learning rate, schedule, resolution, augmentation and
    weight average instead of the defaults. Prints what it took and what was changed."""
    path = config.out / "config.json"
    if not (config.resume and (config.out / CHECKPOINT_NAME).is_file() and path.is_file()):
        return config
    saved = json.loads(path.read_text())
    taken: dict[str, object] = {}
    changed = []
    for name in RESUMED_OPTIONS:
        if name not in saved:
            continue
        value = _saved_value(saved[name])
        if _OPTION_DESTS.get(name, name) in given:
            if value != getattr(config, name):
                changed.append(f"{name} {value} -> {getattr(config, name)}")
        else:
            taken[name] = value
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"resuming {config.out} with its recipe ("
              + ", ".join(f"{k} {v}" for k, v in taken.items()) + ")"
              + (f"; changed here: {', '.join(changed)}" if changed else ""), flush=True)
    return replace(config, **taken)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        shards=args.shards, out=args.out, batch=args.batch, lr=args.lr,
        halve_every_epochs=args.halve_every_epochs, epochs=args.epochs,
        max_minutes=args.max_minutes, max_steps=args.max_steps, resume=args.resume,
        bf16=args.bf16, channels_last=args.channels_last, num_workers=args.num_workers,
        threads=args.threads, checkpoint_minutes=args.checkpoint_minutes,
        eval_minutes=args.eval_minutes, seed=args.seed, device=args.device,
        init_from=args.init_from, augment=not args.no_augment, layout=args.layout,
        width=args.width, resolution=args.resolution, sync_bn=args.sync_bn,
        dist_timeout_s=args.dist_timeout_s, ema_decay=args.ema_decay,
        gradient_loss_weight=args.gradient_loss_weight,
        mirror_probability=args.mirror_probability, yaw_repeats=args.yaw_repeats,
        keep_evaluated=args.keep_evaluated,
    )
