"""One code path for one process and many: torchrun / DistributedDataParallel.

`python -m prn_blender.training train ...` runs in one process; the same command under
`torchrun --nproc_per_node=N -m prn_blender.training train ...` (or multi-node with `--nnodes`
and `--rdzv-endpoint`) runs N ranks: the process group comes from torchrun's environment
(NCCL on GPUs, gloo on CPU), each rank trains on a disjoint slice of every global batch,
gradients are averaged by DDP, and only rank 0 writes checkpoints, logs and exports.

BatchNorm: statistics are computed per rank (plain BatchNorm under DDP). With a per-rank batch
of 16 that matches single-process training; with small per-rank batches (a few images) the
batch statistics get noisy and the running averages differ from a single large batch: keep
the per-rank batch at 8 or more, or use --sync-bn on CUDA (SyncBatchNorm does not run on CPU
/ gloo, so it is refused there).

A rank that dies makes the others fail within `COLLECTIVE_TIMEOUT` instead of hanging
(and torchrun then stops the job with a non-zero exit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..net.device import select_device

COLLECTIVE_TIMEOUT = timedelta(seconds=int(os.environ.get("PRN_DIST_TIMEOUT_S", "120")))


class NormalizedOutput(nn.Module):
    """Wraps PRNet so that forward() returns the sigmoid output the loss is computed on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.forward_normalized(image)


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @classmethod
    def from_env(cls, device_preference: str = "auto", sync_bn: bool = False) -> \
            DistributedContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, 0, select_device(device_preference), False)
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = select_device(device_preference)
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
            backend = "nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        return cls(rank, world, local_rank, device, True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        wrapped = NormalizedOutput(model)
        if not self.distributed:
            return wrapped
        device_ids = [self.local_rank] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids)

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
