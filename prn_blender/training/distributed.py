"""One code path for one process and many: torchrun + DistributedDataParallel.

`python -m prn_blender.training train ...` runs as one process (world size 1, no process
group). The same command under `torchrun --nproc_per_node=N -m prn_blender.training train ...`
(or across nodes with `--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT`) runs N x M
ranks: the process group comes from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT), NCCL on GPUs (one per local rank) and gloo on CPU, every collective with a
timeout (`--dist-timeout-s`, default 600 s). Each rank trains on a disjoint slice of every
global batch (`dataset.ResumableBatchSampler`), DistributedDataParallel averages gradients, so
one step sees `batch x world` images (the effective batch) and the learning-rate schedule
counts epochs of the whole data set, as in one process. Only rank 0 writes checkpoints, logs,
plots and evaluations; every rank reads the checkpoint on resume, and the position stored in
it is counted in global samples, so a run may resume with another world size.

BatchNorm: by default each rank normalises with its OWN batch statistics (plain BatchNorm
under DDP; DDP copies rank 0's running mean / variance to the others at each forward). The
trained parameters are then exactly those of one process that accumulates gradients over the
per-rank micro-batches (tests/training/test_distributed.py checks this), but the statistics
come from `--batch` images, not `batch x world`: with small per-rank batches (fewer than about 8
images of 256 px) they get noisy, which slows training and makes the running statistics used
at inference drift from the training-time ones. Keep `--batch` at 8-16 per rank; on CUDA,
`--sync-bn` (SyncBatchNorm) computes the statistics over the global batch instead. SyncBatchNorm
has no CPU / gloo implementation, so it is refused there.

Failure: a rank that dies (killed, out of memory) makes torchrun stop the other local ranks
and exit non-zero; ranks on other nodes see their collective fail (connection closed) or time
out after `--dist-timeout-s`, so the job fails loudly instead of hanging. Evaluation runs on
rank 0 while the others wait in their next collective: keep it shorter than the timeout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..net.device import select_device

DEFAULT_TIMEOUT_S = 600.0


class SyncBatchNormUnavailableError(ValueError):
    """--sync-bn asked for where SyncBatchNorm cannot run (CPU / gloo)."""


class NormalizedOutput(nn.Module):
    """Wraps PRNet so that forward() returns the sigmoid output (`PRNet.forward_normalized`):
    the loss scales it to pixels in float32 (loss.weighted_loss_from_normalized)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.forward_normalized(image)


@dataclass
class DistributedContext:
    """Where this process sits in the job. world_size 1 = plain single-process training."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool
    sync_bn: bool = False

    @classmethod
    def from_env(cls, device_preference: str = "auto", sync_bn: bool = False,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedContext:
        """Read torchrun's environment; initialise the process group when WORLD_SIZE > 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        device = select_device(device_preference)
        if sync_bn and device.type != "cuda":
            raise SyncBatchNormUnavailableError(
                f"--sync-bn needs CUDA GPUs (NCCL); this run is on {device.type}, where "
                "SyncBatchNorm has no implementation. Drop --sync-bn: BatchNorm then uses "
                "per-rank batch statistics (see prn_blender.training.distributed)."
            )
        if world <= 1:
            return cls(0, 1, 0, device, False, False)
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
            backend = "nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        return cls(rank, world, local_rank, device, True, sync_bn)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: returns the sigmoid output; DDP when
        distributed (SyncBatchNorm first if asked). `model` stays the unwrapped PRNet (its
        parameters are shared), which is what checkpoints and evaluation use."""
        if self.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        wrapped = NormalizedOutput(model)
        if not self.distributed:
            return wrapped
        device_ids = [self.local_rank] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids)

    def mean_and_any(self, value: float, flag: bool) -> tuple[float, bool]:
        """(mean of `value` over ranks, whether any rank raised `flag`), one all-reduce. Ranks
        must agree on stopping, or the ones that go on wait for the others until the timeout."""
        if not self.distributed:
            return value, flag
        packed = torch.tensor([value, float(flag)], dtype=torch.float64)
        if self.device.type == "cuda":
            packed = packed.to(self.device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        return float(packed[0]) / self.world_size, bool(packed[1] > 0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def log(self, message: str) -> None:
        """Print on rank 0 only."""
        if self.is_main:
            print(message, flush=True)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
