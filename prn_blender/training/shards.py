"""Training shards: (storage JPEG, target position map, landmark box) per face.

One shard = two files written atomically (the .npz last, so its presence means complete):
* `<stem>.maps.npy`: (M, R, R, 3) float16 target position maps in the storage image's pixels
  (x right, y down, z towards the camera in the same pixel units, min z over the face = 0;
  NaN outside the layout's face mask). A plain .npy so readers can memory-map it.
* `<stem>.npz`: `jpeg_data` (total,) uint8 concatenated JPEG bytes of each stored crop,
  `jpeg_offsets` (M + 1,) int64, `boxes` (M, 4) float32 tight box of the target's calibrated
  68 landmarks in storage pixels, `names` (M,) str, `sources` (M,) str (face set),
  `yaw_deg` (M,) float32 (NaN if unknown).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def write_shard(
    stem: Path,
    jpegs: list[bytes],
    position_maps: np.ndarray,
    boxes: np.ndarray,
    names: list[str],
    sources: list[str],
    yaw_deg: np.ndarray,
) -> None:
    """Write one shard atomically (see module docstring)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.zeros(len(jpegs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(j) for j in jpegs])
    maps_tmp = stem.with_name(stem.name + ".maps.tmp.npy")
    np.save(maps_tmp, np.asarray(position_maps, dtype=np.float16))
    os.replace(maps_tmp, stem.with_name(stem.name + ".maps.npy"))
    meta_tmp = stem.with_name(stem.name + ".tmp.npz")
    with open(meta_tmp, "wb") as fh:
        np.savez(
            fh,
            jpeg_data=np.frombuffer(b"".join(jpegs), dtype=np.uint8),
            jpeg_offsets=offsets,
            boxes=np.asarray(boxes, dtype=np.float32),
            names=np.asarray(names),
            sources=np.asarray(sources),
            yaw_deg=np.asarray(yaw_deg, dtype=np.float32),
        )
    os.replace(meta_tmp, stem.with_name(stem.name + ".npz"))


def shard_stems(folder: Path) -> list[Path]:
    """Complete shards in a folder, sorted by name."""
    return sorted(p.with_suffix("") for p in Path(folder).glob("*.npz")
                  if not p.name.endswith(".tmp.npz"))


@dataclass(frozen=True)
class ShardSample:
    jpeg: bytes
    position_map: np.ndarray  # (R, R, 3) float32, storage pixels, NaN outside the face
    box: np.ndarray  # (4,) float32
    name: str
    source: str
    yaw_deg: float


class ShardReader:
    """Random access over all shards of a folder; position maps are memory-mapped."""

    def __init__(self, folder: Path, exclude: set[tuple[str, str]] | None = None) -> None:
        self.stems = shard_stems(folder)
        if not self.stems:
            raise FileNotFoundError(f"no shards in {folder}; run the targets step first")
        self._meta = []
        self._maps: list[np.ndarray | None] = []
        index = []
        for s, stem in enumerate(self.stems):
            with np.load(stem.with_suffix(".npz"), allow_pickle=False) as d:
                meta = {k: d[k] for k in d.files}
            self._meta.append(meta)
            self._maps.append(None)
            for i, (name, source) in enumerate(zip(meta["names"], meta["sources"], strict=True)):
                if exclude and (str(source), str(name)) in exclude:
                    continue
                index.append((s, i))
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.index)

    def _map(self, s: int) -> np.ndarray:
        maps = self._maps[s]
        if maps is None:  # opened lazily so forked DataLoader workers each get their own
            maps = np.load(self.stems[s].with_name(self.stems[s].name + ".maps.npy"),
                           mmap_mode="r")
            self._maps[s] = maps
        return maps

    def __getitem__(self, k: int) -> ShardSample:
        s, i = (int(v) for v in self.index[k])
        meta = self._meta[s]
        off = meta["jpeg_offsets"]
        return ShardSample(
            jpeg=meta["jpeg_data"][off[i] : off[i + 1]].tobytes(),
            position_map=np.asarray(self._map(s)[i], dtype=np.float32),
            box=meta["boxes"][i].astype(np.float32),
            name=str(meta["names"][i]),
            source=str(meta["sources"][i]),
            yaw_deg=float(meta["yaw_deg"][i]),
        )
