"""The three real face sets in ../shared/data/faces and the fixed dev split (DESIGN.md section 5).

Sets (research-only terms; read straight from the tars, never copied into the repo). Every
coordinate is in the STORED crop's pixels: x right, y down, 0-based, pixel centres at integers.
* "300w": 1,531 square crops of 1.6x the landmark box (side up to 256 px) with 68 hand labels
  (iBUG order). Several crops may come from one source photo (name suffix _1, _2, ...).
* "aflw": 4,421 3DDFA-style 120x120 crops of AFLW with its 21 hand labels (+ visibility) and
  |yaw| in degrees. Disjoint from the AFLW2000-3D benchmark.
* "utkface": 2,586 square crops (side up to 256 px) with an OpenCV Haar face box; no landmarks.
Each tar's README.txt describes its arrays; `load_face_set` turns them into `FaceRecord`s and
`iter_images` / `load_image` decode the JPEGs on demand (the tar is indexed once, then read by
offset: all ~8,500 faces decode in a few seconds).

Dev split, fixed, never trained on (`dev_names`, `is_dev`):
* 300W: 300 faces. Faces cut from the same source photo stay together: photo groups (the name
  without its _<digits> suffix) are ranked by the sha1 hex digest of that stem and taken in that
  order, skipping a group that would overshoot, until exactly 300 faces.
* AFLW: 1,000 faces, stratified over |yaw| bins [0, 30) / [30, 60) / [60, 90]: 333 / 333 / 334,
  the first of each bin when ranked by the sha1 hex digest of the name.
* UTKFace: train only (no labels to measure with).
Changing this rule changes every reported figure: don't.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SHARED_DIR = REPO.parent / "shared"
FACE_SETS = ("300w", "aflw", "utkface")
# set name -> (tar file in shared/data/faces, top folder inside the tar)
_TARS = {
    "300w": ("300w.tar", "300w"),
    "aflw": ("aflw_gt_crop.tar", "aflw_gt_crop"),
    "utkface": ("utkface.tar", "utkface"),
}
# Stored crops are downscaled (INTER_AREA) to this side when larger (300W and UTKFace READMEs).
MAX_STORED_SIDE_PX = 256

DEV_300W_COUNT = 300
DEV_AFLW_PER_BIN = (333, 333, 334)
YAW_BIN_EDGES_DEG = (0.0, 30.0, 60.0, 90.0)
"""|yaw| bins [0, 30), [30, 60), [60, 90] in degrees (AFLW README `yaw_bin`)."""

AFLW21_NAMES = (
    "left_brow_left", "left_brow_center", "left_brow_right",
    "right_brow_left", "right_brow_center", "right_brow_right",
    "left_eye_left", "left_eye_center", "left_eye_right",
    "right_eye_left", "right_eye_center", "right_eye_right",
    "left_ear", "nose_left", "nose_center", "nose_right", "right_ear",
    "mouth_left", "mouth_center", "mouth_right", "chin_center",
)  # fmt: skip
"""AFLW's 21 points in the README's order and naming ("left/right" as in the AFLW
documentation; `metrics.AFLW21_FROM_IBUG68` records which image side that is)."""
AFLW_EAR_INDICES = (12, 16)


@dataclass(frozen=True, eq=False)
class FaceRecord:
    """One stored face crop and its labels. Coordinates in the stored crop's pixels
    (x right, y down, 0-based); the image itself is decoded on demand (`load_image`)."""

    set_name: str
    """"300w", "aflw" or "utkface"."""
    name: str
    """File stem, unique within the set (e.g. 'afw_1051618982_1', 'image04380')."""
    member: str
    """Path of the JPEG inside the set's tar."""
    landmarks: np.ndarray | None
    """Hand labels, float32 crop px: (68, 2) for 300W (iBUG order), (21, 2) for AFLW (README
    order, NaN where not labelled), None for UTKFace."""
    yaw_deg: float
    """|yaw| in degrees where the set gives it (AFLW), else NaN."""
    box: np.ndarray | None
    """(4,) float32 x0, y0, x1, y1 detector box in crop px (UTKFace's Haar box), else None."""
    size: int
    """Side of the square stored crop in pixels (AFLW 120; 300W and UTKFace up to 256)."""
    visible: np.ndarray | None = None
    """(21,) bool for AFLW: the point is labelled (visible); None for the other sets."""


def faces_dir(shared_dir: Path | str | None = None) -> Path:
    """The folder holding the face tars: <shared_dir>/data/faces (default ../shared)."""
    return (Path(shared_dir) if shared_dir else DEFAULT_SHARED_DIR) / "data" / "faces"


def tar_path(set_name: str, shared_dir: Path | str | None = None) -> Path:
    """Path of one set's tar."""
    _check_set(set_name)
    return faces_dir(shared_dir) / _TARS[set_name][0]


def _check_set(set_name: str) -> None:
    if set_name not in _TARS:
        raise ValueError(f"unknown face set {set_name!r}; choose from {FACE_SETS}")


@lru_cache(maxsize=8)
def _tar_index(path: Path) -> dict[str, tuple[int, int]]:
    """Member name -> (byte offset of its data, size in bytes), read once per tar."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


def _read_member(handle: io.BufferedReader, index: dict[str, tuple[int, int]], name: str) -> bytes:
    offset, size = index[name]
    handle.seek(offset)
    return handle.read(size)


@lru_cache(maxsize=8)
def _load_records(set_name: str, shared_dir: str) -> tuple[FaceRecord, ...]:
    path = tar_path(set_name, shared_dir)
    top = _TARS[set_name][1]
    index = _tar_index(path)
    with open(path, "rb") as handle:
        raw = _read_member(handle, index, f"{top}/annotations.npz")
    with np.load(io.BytesIO(raw), allow_pickle=False) as ann:
        arrays = {key: ann[key] for key in ann.files}
    names = [str(n) for n in arrays["names"]]
    n = len(names)
    members = [f"{top}/images/{name}.jpg" for name in names]
    landmarks: list[np.ndarray | None] = [None] * n
    visible: list[np.ndarray | None] = [None] * n
    boxes: list[np.ndarray | None] = [None] * n
    yaws = np.full(n, np.nan)
    if set_name == "aflw":
        sizes = np.full(n, int(arrays["crop_size"]))
        points = arrays["pts21_crop"].transpose(0, 2, 1).astype(np.float32)  # (N, 21, 2)
        points[~arrays["visible"]] = np.nan
        landmarks = list(points)
        visible = list(arrays["visible"].astype(bool))
        yaws = arrays["yaw_abs_deg"].astype(np.float64)
    else:
        crop_side_src = arrays["crop_box_src"][:, 2] - arrays["crop_box_src"][:, 0]
        sizes = np.minimum(crop_side_src, MAX_STORED_SIDE_PX)
        if set_name == "300w":
            landmarks = list(arrays["pts68"].astype(np.float32))
        else:
            boxes = list(arrays["face_box"].astype(np.float32))
    return tuple(
        FaceRecord(
            set_name,
            names[i],
            members[i],
            landmarks[i],
            float(yaws[i]),
            boxes[i],
            int(sizes[i]),
            visible[i],
        )
        for i in range(n)
    )


def load_face_set(set_name: str, shared_dir: Path | str | None = None) -> list[FaceRecord]:
    """All records of one set, in the order of its annotations file (cached after first call)."""
    _check_set(set_name)
    return list(_load_records(set_name, str(shared_dir or DEFAULT_SHARED_DIR)))


def iter_jpeg_bytes(
    records: Iterable[FaceRecord], shared_dir: Path | str | None = None
) -> Iterator[tuple[FaceRecord, bytes]]:
    """Yield (record, the stored JPEG's bytes), keeping one open file per tar."""
    handles: dict[str, io.BufferedReader] = {}
    try:
        for record in records:
            path = tar_path(record.set_name, shared_dir)
            handle = handles.get(record.set_name)
            if handle is None:
                handle = handles[record.set_name] = open(path, "rb")
            yield record, _read_member(handle, _tar_index(path), record.member)
    finally:
        for handle in handles.values():
            handle.close()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> HWC uint8 RGB."""
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def iter_images(
    records: Iterable[FaceRecord], shared_dir: Path | str | None = None
) -> Iterator[tuple[FaceRecord, np.ndarray]]:
    """Yield (record, HWC uint8 RGB image of the stored crop)."""
    for record, data in iter_jpeg_bytes(records, shared_dir):
        yield record, decode_jpeg(data)


def load_image(record: FaceRecord, shared_dir: Path | str | None = None) -> np.ndarray:
    """The stored crop of one record as HWC uint8 RGB (size x size x 3)."""
    return next(iter_images([record], shared_dir))[1]


def yaw_bin(yaw_deg: float) -> int:
    """|yaw| bin index: 0 for [0, 30), 1 for [30, 60), 2 for [60, 90] and beyond; -1 if NaN."""
    if not np.isfinite(yaw_deg):
        return -1
    return int(min(np.searchsorted(YAW_BIN_EDGES_DEG, abs(yaw_deg), side="right") - 1, 2))


def source_photo(name: str) -> str:
    """300W crops of one source photo share a stem: 'afw_123_1' and 'afw_123_2' -> 'afw_123'."""
    stem, _, suffix = name.rpartition("_")
    return stem if suffix.isdigit() else name


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@lru_cache(maxsize=8)
def _dev_names(set_name: str, shared_dir: str) -> frozenset[str]:
    if set_name == "utkface":
        return frozenset()
    records = _load_records(set_name, shared_dir)
    if set_name == "300w":
        groups: dict[str, list[str]] = {}
        for record in records:
            groups.setdefault(source_photo(record.name), []).append(record.name)
        chosen: list[str] = []
        for stem in sorted(groups, key=_sha1):
            if len(chosen) + len(groups[stem]) <= DEV_300W_COUNT:
                chosen.extend(groups[stem])
            if len(chosen) == DEV_300W_COUNT:
                break
        return frozenset(chosen)
    chosen = []
    for bin_index, count in enumerate(DEV_AFLW_PER_BIN):
        in_bin = [r.name for r in records if yaw_bin(r.yaw_deg) == bin_index]
        chosen.extend(sorted(in_bin, key=_sha1)[:count])
    return frozenset(chosen)


def dev_names(set_name: str, shared_dir: Path | str | None = None) -> frozenset[str]:
    """Names of the fixed dev faces of a set (rule in the module docstring; empty for UTKFace)."""
    _check_set(set_name)
    return _dev_names(set_name, str(shared_dir or DEFAULT_SHARED_DIR))


def is_dev(set_name: str, name: str, shared_dir: Path | str | None = None) -> bool:
    """Whether a face belongs to the dev split (never trained on)."""
    return name in dev_names(set_name, shared_dir)
