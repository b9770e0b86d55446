"""Training shards: (storage JPEG, target position map, landmark box) per face.

A shard folder (default cache/targets/shards/, git-ignored) holds, per shard `<stem>` (for
example `train-00000` or `aflw-0003`), two files written atomically, the .npz last so that its
presence means the shard is complete:

* `<stem>.maps.npy`: (M, R, R, 3) float16 target position maps in the STORAGE image's pixels
  (x right, y down, z towards the camera in the same pixel units, min z over the face = 0;
  NaN outside the layout's face mask). A plain .npy rather than an .npz member so readers can
  memory-map it (`np.load(mmap_mode="r")` does not work inside an .npz): 8,000 faces are about
  3 GB of maps, which stay on disk and in the page cache, not in each process's heap.
* `<stem>.npz` (uncompressed): `jpeg_data` (total,) uint8 = concatenated JPEG bytes of each
  face's storage image (the crop as stored in the face tars, 120-256 px), `jpeg_offsets`
  (M + 1,) int64, `boxes` (M, 4) float32 tight box (x0, y0, x1, y1) of the target's calibrated
  68 landmarks in storage pixels, `names` (M,) str, `sources` (M,) str (face set),
  `yaw_deg` (M,) float32 (NaN if unknown).

plus `manifest.json` = {"format": 1, "shards": [{"stem", "faces"}...], "faces": total}, rewritten
by `write_manifest` (called by `ShardWriter.close`; parallel writers call it once at the end).
Readers do not need it: they list the complete `*.npz` files, in name order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARD_FORMAT = 1
MANIFEST = "manifest.json"


def _maps_path(stem: Path) -> Path:
    return stem.with_name(stem.name + ".maps.npy")


def write_shard(
    stem: Path,
    jpegs: list[bytes],
    position_maps: np.ndarray,
    boxes: np.ndarray,
    names: list[str],
    sources: list[str],
    yaw_deg: np.ndarray,
) -> None:
    """Write one shard atomically (see the module docstring for the arrays and their frames).

    position_maps: (M, R, R, 3) storage pixels (stored as float16); boxes (M, 4) storage px."""
    stem = Path(stem)
    count = len(jpegs)
    for label, value in (("position_maps", position_maps), ("boxes", boxes), ("names", names),
                         ("sources", sources), ("yaw_deg", yaw_deg)):
        if len(value) != count:
            raise ValueError(f"{label} has {len(value)} entries for {count} JPEGs")
    stem.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.zeros(count + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(j) for j in jpegs])
    # The .npz is what marks a shard present: drop an old one first so that a crash between
    # the two replaces never pairs new maps with old metadata.
    stem.with_name(stem.name + ".npz").unlink(missing_ok=True)
    maps_tmp = stem.with_name(stem.name + ".maps.tmp.npy")
    with open(maps_tmp, "wb") as fh:
        np.save(fh, np.asarray(position_maps, dtype=np.float16))
        fh.flush()
        os.fsync(fh.fileno())  # durable before any record says the shard is done
    os.replace(maps_tmp, _maps_path(stem))
    meta_tmp = stem.with_name(stem.name + ".tmp.npz")
    with open(meta_tmp, "wb") as fh:
        np.savez(
            fh,
            jpeg_data=np.frombuffer(b"".join(jpegs), dtype=np.uint8),
            jpeg_offsets=offsets,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(count, 4),
            names=np.asarray(names, dtype=str),
            sources=np.asarray(sources, dtype=str),
            yaw_deg=np.asarray(yaw_deg, dtype=np.float32),
        )
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(meta_tmp, stem.with_name(stem.name + ".npz"))


SHARD_FILE_SUFFIXES = (".tmp.npz", ".maps.tmp.npy", ".done.json.tmp", ".maps.npy", ".done.json",
                       ".npz")
"""Most specific first: `a.tmp.npz` belongs to shard `a`."""


def remove_shards_except(folder: Path, keep: set[str]) -> list[str]:
    """Delete the files of every shard (maps, metadata, done record, temporaries) whose stem is
    not in `keep`: shards of chunks that are not done under the current settings, or of
    chunks that no longer exist, must not be read as training data. Returns the removed
    stems, sorted."""
    removed = set()
    for path in Path(folder).iterdir():
        for suffix in SHARD_FILE_SUFFIXES:
            if path.name.endswith(suffix):
                stem = path.name[: -len(suffix)]
                if stem not in keep:
                    path.unlink(missing_ok=True)
                    removed.add(stem)
                break
    return sorted(removed)


def shard_stems(folder: Path) -> list[Path]:
    """Complete shards in a folder, sorted by name."""
    return sorted(p.with_suffix("") for p in Path(folder).glob("*.npz")
                  if not p.name.endswith(".tmp.npz"))


def write_manifest(folder: Path) -> dict:
    """(Re)write `manifest.json` listing the folder's complete shards and their face counts."""
    folder = Path(folder)
    shards = []
    for stem in shard_stems(folder):
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as data:
            shards.append({"stem": stem.name, "faces": len(data["names"])})
    manifest = {"format": SHARD_FORMAT, "shards": shards,
                "faces": sum(s["faces"] for s in shards)}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return manifest


class ShardWriter:
    """Accumulates faces and writes `<prefix>-NNNNN` shards of `faces_per_shard` faces.

    with ShardWriter(out_dir) as writer:
        writer.add(jpeg_bytes, position_map, box, name, source, yaw_deg)
    `close()` (or leaving the `with`) writes the last partial shard and the manifest."""

    def __init__(self, out_dir: Path, faces_per_shard: int = 500, prefix: str = "train") -> None:
        if faces_per_shard < 1:
            raise ValueError(f"faces_per_shard must be at least 1, got {faces_per_shard}")
        self.out_dir = Path(out_dir)
        self.faces_per_shard = faces_per_shard
        self.prefix = prefix
        self.shards_written = 0
        self._rows: list[tuple[bytes, np.ndarray, np.ndarray, str, str, float]] = []

    def add(self, jpeg: bytes, position_map: np.ndarray, box: np.ndarray, name: str,
            source: str, yaw_deg: float = float("nan")) -> None:
        """One face: its storage JPEG bytes, (R, R, 3) position map in storage px (NaN outside
        the face mask), tight 68-landmark box (4,) storage px, unique name, face set, yaw."""
        position_map = np.asarray(position_map, dtype=np.float16)
        if position_map.ndim != 3 or position_map.shape[2] != 3:
            raise ValueError(f"position map must be (R, R, 3), got {position_map.shape}")
        self._rows.append((bytes(jpeg), position_map, np.asarray(box, np.float32).reshape(4),
                           str(name), str(source), float(yaw_deg)))
        if len(self._rows) >= self.faces_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        jpegs, maps, boxes, names, sources, yaws = zip(*self._rows, strict=True)
        stem = self.out_dir / f"{self.prefix}-{self.shards_written:05d}"
        write_shard(stem, list(jpegs), np.stack(maps), np.stack(boxes), list(names),
                    list(sources), np.asarray(yaws, np.float32))
        self.shards_written += 1
        self._rows = []

    def close(self) -> None:
        """Write the remaining faces and the manifest."""
        self._flush()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(self.out_dir)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ShardSample:
    """One stored face (storage-image frame, see the module docstring)."""

    jpeg: bytes
    position_map: np.ndarray
    """(R, R, 3) float32, storage pixels, NaN outside the face mask."""
    box: np.ndarray
    """(4,) float32 tight 68-landmark box, storage pixels."""
    name: str
    source: str
    yaw_deg: float


class ShardDataset:
    """Random access over all complete shards of a folder (name order, then order in shard).

    Metadata and JPEG bytes (about 3 % of the data) are loaded at construction; position maps
    are memory-mapped lazily on first use, so each forked DataLoader worker maps its own.
    `exclude`: (source, name) pairs to leave out (e.g. dev faces, should any be present)."""

    def __init__(self, folder: Path, exclude: set[tuple[str, str]] | None = None) -> None:
        self.folder = Path(folder)
        self.stems = shard_stems(self.folder)
        if not self.stems:
            raise FileNotFoundError(
                f"No complete shards in '{self.folder}'. Make them with "
                "`python -m prn_blender.training targets` (docs/TRAINING.md)."
            )
        self._meta: list[dict[str, np.ndarray]] = []
        self._maps: list[np.ndarray | None] = []
        index = []
        for s, stem in enumerate(self.stems):
            with np.load(stem.with_suffix(".npz"), allow_pickle=False) as data:
                meta = {key: data[key] for key in data.files}
            self._meta.append(meta)
            self._maps.append(None)
            for i, (name, source) in enumerate(zip(meta["names"], meta["sources"], strict=True)):
                if exclude and (str(source), str(name)) in exclude:
                    continue
                index.append((s, i))
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def yaw_deg(self) -> np.ndarray:
        """(N,) float32 stored yaw of every face in index order (NaN where unknown)."""
        if not len(self.index):
            return np.zeros(0, np.float32)
        return np.array([self._meta[s]["yaw_deg"][i] for s, i in self.index], np.float32)

    def _map(self, s: int) -> np.ndarray:
        maps = self._maps[s]
        if maps is None:
            maps = np.load(_maps_path(self.stems[s]), mmap_mode="r")
            self._maps[s] = maps
        return maps

    def __getstate__(self) -> dict:  # memory maps are reopened in the receiving process
        state = self.__dict__.copy()
        state["_maps"] = [None] * len(self._maps)
        return state

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


ShardReader = ShardDataset
"""Former name, kept for callers written against it."""
