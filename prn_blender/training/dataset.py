"""torch side of the training data: shards -> augmented (image, target, weights) batches.

Determinism (exact resume): the sample order of epoch e is a permutation seeded by (seed, e),
and the augmentation of sample i in epoch e is seeded by (seed, e, i), so a batch depends only
on (seed, epoch, position in the epoch), not on workers, world size or what ran before.

Distributed: `ResumableBatchSampler` plays the role of `DistributedSampler` (disjoint
per-rank subsets of the same permutation, `set_epoch`-like construction per epoch) and also
starts mid-epoch: each global batch of `batch x world` consecutive samples of the epoch's
permutation is split into `world` disjoint slices of `batch`, rank r taking slice r. The
position in the epoch is counted in global samples, so a run can resume with another world
size. The last partial global batch of an epoch is dropped.

Oversampling (`yaw_repeats`): a face may appear several times per epoch; the epoch then has
one sample position per appearance, and each appearance gets its own augmentation seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ..core.layout import UVLayout
from .augment import AugmentSettings, make_sample, remove_black_canvas
from .shards import ShardDataset

YAW_BIN_EDGES_DEG = (30.0, 60.0)
"""|yaw| bin edges of `yaw_repeats`: the dev protocol's bins (DESIGN section 5)."""

CONTENT_CACHE_FACES = 10_000
"""Faces whose canvas-filled storage image a `ShardSamples` keeps by default (about 200 kB
each; per process: the trainer divides it among its DataLoader workers)."""


def downsample_sample(crop: np.ndarray, target_px: np.ndarray, weights: np.ndarray,
                      size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training sample at a coarser resolution `size` (a divisor of the crop side R):
    crop (R, R, 3) uint8 -> (size, size, 3) by area averaging; target (R, R, 3) and weights
    (R, R) -> (size, size) by averaging each block over its valid (weight > 0) texels only, so
    invalid texels' arbitrary values never leak in.

    Target values stay in R-crop pixels: the network's normalised output times R (`PRNet`'s
    256 scale) then still means R-crop pixels at any input size, because position / side is
    what the sigmoid regresses. The weight of a block is the mean weight of its texels.
    At the face mask's border a block is only partly valid, so its target is the mean of the
    valid texels, not of the block's centre: up to half a coarse texel off along the border.
    Those blocks have a lower weight, and the 256 px stage that follows removes the bias."""
    side = crop.shape[0]
    if side % size:
        raise ValueError(f"training resolution {size} must divide the crop side {side}")
    f = side // size
    small = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    valid = (weights > 0).astype(np.float32).reshape(size, f, size, f)
    count = valid.sum(axis=(1, 3))
    blocks = np.where(valid[..., None] > 0, target_px.reshape(size, f, size, f, 3), 0.0)
    target = blocks.sum(axis=(1, 3)) / np.maximum(count, 1.0)[..., None]
    weight = weights.reshape(size, f, size, f).mean(axis=(1, 3))
    return small, target.astype(np.float32), weight.astype(np.float32)


def yaw_repeats(yaw_deg: np.ndarray, repeats: Sequence[int]) -> np.ndarray:
    """How often each face appears per epoch: `repeats[b]` for a face whose |yaw| falls in
    bin b of (0-30, 30-60, 60+ degrees); once when its yaw is unknown (NaN: 300W and UTKFace,
    which are nearly all frontal). The dev metric weights the three bins equally, while AFLW's
    training faces are 14 % profiles (|yaw| >= 60), so repeating those gives the network more
    of the poses it is worst at."""
    repeats = np.asarray(repeats, dtype=np.int64)
    if repeats.shape != (len(YAW_BIN_EDGES_DEG) + 1,) or (repeats < 1).any():
        raise ValueError(f"yaw repeats must be {len(YAW_BIN_EDGES_DEG) + 1} whole numbers "
                         f">= 1 (for |yaw| 0-30, 30-60, 60+ degrees), got {repeats.tolist()}")
    yaw = np.abs(np.asarray(yaw_deg, dtype=np.float64))
    known = np.isfinite(yaw)
    out = np.ones(len(yaw), np.int64)
    out[known] = repeats[np.digitize(yaw[known], YAW_BIN_EDGES_DEG)]
    return out


class ShardSamples(torch.utils.data.Dataset):
    """Item (epoch, k) -> (image (3, S, S) float32 RGB in [0, 1], target (3, S, S) float32
    crop pixels of the layout-resolution crop, weights (S, S) float32), S = `size` (default:
    the layout resolution). A pure function of (seed, epoch, k). Sample k is shard face
    `face_of[k]`: each face once (k = face index) unless `repeats` (per face, see
    `yaw_repeats`) lists some several times."""

    def __init__(self, shards: Path | ShardDataset, layout: UVLayout, seed: int,
                 augment: AugmentSettings, size: int | None = None,
                 content_cache_faces: int = CONTENT_CACHE_FACES,
                 repeats: np.ndarray | None = None) -> None:
        self.shards = shards if isinstance(shards, ShardDataset) else ShardDataset(shards)
        faces = len(self.shards)
        if repeats is None:
            self.face_of = np.arange(faces)
        else:
            repeats = np.asarray(repeats, dtype=np.int64)
            if repeats.shape != (faces,) or (repeats < 1).any():
                raise ValueError(f"need one repeat count >= 1 per face ({faces})")
            self.face_of = np.repeat(np.arange(faces), repeats)
        self.face_mask = layout.face_mask
        self.weight_mask = layout.weight_mask.astype(np.float32)
        self.resolution = int(layout.resolution)
        self.size = self.resolution if size is None else int(size)
        self.seed = int(seed)
        self.augment = augment
        self.content_cache_faces = int(content_cache_faces)
        self._content: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict:  # a process that receives this rebuilds its own cache
        return {**self.__dict__, "_content": {}}

    def __len__(self) -> int:
        return len(self.face_of)

    def _canvas_filled(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The face's storage image after `remove_black_canvas` (image, offset), cached per
        process for `content_cache_faces` faces: it is the same every epoch, and its wide
        Gaussian blur is costly (benchmarks/bench_loader.py: 9.5 ms per sample at first use,
        7.4 ms cached). A cache hit skips the JPEG decode too."""
        content = self._content.get(index)
        if content is not None:
            return content
        stored = self.shards[index]
        bgr = cv2.imdecode(np.frombuffer(stored.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"shard face '{stored.source}/{stored.name}' has unreadable JPEG")
        content = remove_black_canvas(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if len(self._content) < self.content_cache_faces:
            self._content[index] = content
        return content

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor,
                                                         torch.Tensor]:
        epoch, k = key
        index = int(self.face_of[k])
        stored = self.shards[index]
        rng = np.random.default_rng([self.seed, int(epoch), int(k)])
        sample = make_sample(None, stored.position_map, stored.box, self.face_mask,
                             self.weight_mask, rng, self.augment, self.resolution,
                             self._canvas_filled(index))
        crop, target_px, weights = sample.crop, sample.target_px, sample.weights
        if self.size != self.resolution:
            crop, target_px, weights = downsample_sample(crop, target_px, weights, self.size)
        image = torch.from_numpy(crop).permute(2, 0, 1).float().div_(255.0)
        target = torch.from_numpy(target_px).permute(2, 0, 1).contiguous()
        return image, target, torch.from_numpy(weights)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of sample indices for one epoch (same on every rank)."""
    return np.random.default_rng([int(seed), int(epoch), 7]).permutation(n)


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Batches of (epoch, index) keys: this rank's slice of each global batch of one epoch,
    from global sample position `start` (a multiple of nothing in particular: any position),
    then, up to `end_epoch` (exclusive; default: just this one), the following epochs from
    their start. One sampler over many epochs lets the trainer keep one DataLoader, so its
    worker processes (and their caches) live for the whole run."""

    def __init__(self, n: int, batch: int, seed: int, epoch: int, start: int = 0,
                 rank: int = 0, world: int = 1, end_epoch: int | None = None) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of {world}")
        self.n, self.batch, self.seed, self.epoch = n, batch, seed, epoch
        self.start, self.rank, self.world = start, rank, world
        self.end_epoch = epoch + 1 if end_epoch is None else end_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        global_batch = self.batch * self.world
        for epoch in range(self.epoch, self.end_epoch):
            order = epoch_order(self.n, self.seed, epoch)
            start = self.start if epoch == self.epoch else 0
            for pos in range(start, self.n - global_batch + 1, global_batch):
                mine = order[pos + self.rank * self.batch : pos + (self.rank + 1) * self.batch]
                yield [(epoch, int(i)) for i in mine]

    def __len__(self) -> int:
        per_epoch = self.n // (self.batch * self.world)
        first = max(0, (self.n - self.start) // (self.batch * self.world))
        return first + per_epoch * max(0, self.end_epoch - self.epoch - 1)
