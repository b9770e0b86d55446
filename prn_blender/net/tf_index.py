"""Read a TensorFlow 1.x tensor-bundle `.index` file without TensorFlow or protobuf; map the
official PRNet checkpoint's variables onto our PyTorch module (DESIGN.md section 6).

A checkpoint `name.index` is a LevelDB SSTable ("table" format): data blocks of key/value
entries with prefix-compressed keys and restart points, an index block whose values are the
data blocks' handles, and a 48-byte footer ending in the magic 0xdb4775248b80fb57. Each block is
followed by a 5-byte trailer: a compression byte (0 = none) and a masked CRC-32C of the block
plus that byte. The key "" holds a BundleHeaderProto; every other key is a tensor name whose
value is a serialized BundleEntryProto (tensorflow/core/protobuf/tensor_bundle.proto):

    dtype = 1 (enum)  shape = 2 (TensorShapeProto: dim = 2 {size = 1, name = 2})  shard_id = 3
    offset = 4        size = 5                      crc32c = 6 (fixed32)          slices = 7

The values themselves live in `name.data-00000-of-00001` at (offset, size) as raw
little-endian arrays in the stored shape; `read_official_checkpoint` reads them.

Standard library and numpy only (no torch, no TensorFlow, no protobuf package).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48  # two block handles padded to 40 bytes + 8-byte magic
BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) + masked crc32c (4 bytes)
_CRC_MASK_DELTA = 0xA282EAD8

TF_DTYPES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    19: "float16",
    22: "uint32",
    23: "uint64",
}
"""tensorflow/core/framework/types.proto DataType values -> numpy-style names."""


class TFIndexError(ValueError):
    """The file is not a readable, uncompressed TensorFlow tensor-bundle index."""


@dataclass(frozen=True)
class BundleEntry:
    """One tensor of a checkpoint: where its bytes are in the .data shard, and what they are."""

    dtype: str
    """numpy-style dtype name ("float32"), or "dtype<N>" for a type this reader does not name."""
    shape: tuple[int, ...]
    """Stored shape (TF layout: conv kernels kh x kw x in x out)."""
    shard_id: int
    offset: int
    """Byte offset in the .data shard."""
    size: int
    """Bytes."""
    crc32c: int
    """Masked CRC-32C of the tensor's bytes, as stored (0 if absent)."""


# ---------------------------------------------------------------------------------- low level


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; returns (value, next position)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise TFIndexError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFIndexError("varint longer than 64 bits")


def _make_crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as LevelDB and TensorFlow use it."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _unmask_crc(masked: int) -> int:
    rot = (masked - _CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """Top-level (field number, value) pairs of a protobuf message: varints as int, fixed32 /
    fixed64 as int, length-delimited as bytes."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            (value,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value = buf[pos : pos + length]
            if len(value) != length:
                raise TFIndexError("truncated length-delimited protobuf field")
            pos += length
        elif wire == 5:
            (value,) = struct.unpack_from("<I", buf, pos)
            pos += 4
        else:
            raise TFIndexError(f"unsupported protobuf wire type {wire}")
        fields.append((number, value))
    return fields


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    """TensorShapeProto: repeated Dim dim = 2 {int64 size = 1; string name = 2}."""
    dims = []
    for number, value in _proto_fields(buf):
        if number == 2 and isinstance(value, bytes):
            size = 0
            for dim_number, dim_value in _proto_fields(value):
                if dim_number == 1 and isinstance(dim_value, int):
                    size = dim_value - (1 << 64) if dim_value >= 1 << 63 else dim_value
            dims.append(size)
    return tuple(dims)


def parse_bundle_entry(buf: bytes) -> BundleEntry:
    """Decode a serialized BundleEntryProto (missing proto3 fields are 0)."""
    values: dict[str, int] = {"dtype": 0, "shard_id": 0, "offset": 0, "size": 0, "crc32c": 0}
    shape: tuple[int, ...] = ()
    names = {1: "dtype", 3: "shard_id", 4: "offset", 5: "size", 6: "crc32c"}
    for number, value in _proto_fields(buf):
        if number == 2 and isinstance(value, bytes):
            shape = _parse_shape(value)
        elif number == 7:
            raise TFIndexError("partitioned (sliced) variables are not supported")
        elif number in names and isinstance(value, int):
            values[names[number]] = value
    dtype = TF_DTYPES.get(values["dtype"], f"dtype<{values['dtype']}>")
    return BundleEntry(
        dtype=dtype,
        shape=shape,
        shard_id=values["shard_id"],
        offset=values["offset"],
        size=values["size"],
        crc32c=values["crc32c"],
    )


def _read_block(data: bytes, offset: int, size: int, what: str) -> bytes:
    """The contents of one block (without its trailer), after checking compression and CRC."""
    end = offset + size
    if end + BLOCK_TRAILER_BYTES > len(data):
        raise TFIndexError(f"{what} block at {offset} runs past the end of the file")
    compression = data[end]
    if compression != 0:
        kind = {1: "Snappy", 2: "Zlib"}.get(compression, f"type {compression}")
        raise TFIndexError(
            f"{what} block at byte {offset} is {kind}-compressed; this reader handles only "
            "uncompressed tables (TensorFlow writes checkpoint indexes uncompressed)."
        )
    (masked,) = struct.unpack_from("<I", data, end + 1)
    if crc32c(data[offset : end + 1]) != _unmask_crc(masked):
        raise TFIndexError(f"{what} block at byte {offset} fails its CRC-32C check (corrupt)")
    return data[offset:end]


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of a block, keys rebuilt from their shared prefixes."""
    if len(block) < 4:
        raise TFIndexError("block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    entries_end = len(block) - 4 - 4 * num_restarts
    if entries_end < 0:
        raise TFIndexError("block restart array is larger than the block")
    entries = []
    key = b""
    pos = 0
    while pos < entries_end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_length, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_length > entries_end:
            raise TFIndexError("malformed block entry")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + value_length]))
        pos += value_length
    return entries


def _block_handle(buf: bytes, pos: int = 0) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


# ---------------------------------------------------------------------------------- public API


def read_table(path: str | os.PathLike[str]) -> list[tuple[bytes, bytes]]:
    """All key/value pairs of an uncompressed LevelDB SSTable, in key order."""
    data = Path(path).read_bytes()
    if len(data) < FOOTER_BYTES:
        raise TFIndexError(f"'{path}' is too short to be a TensorFlow checkpoint index")
    footer = data[-FOOTER_BYTES:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_BYTES - 8)
    if magic != TABLE_MAGIC:
        raise TFIndexError(f"'{path}' is not a TensorFlow checkpoint index (wrong magic number)")
    _meta_offset, _meta_size, pos = _block_handle(footer)
    index_offset, index_size, _ = _block_handle(footer, pos)
    index_block = _read_block(data, index_offset, index_size, "index")
    entries: list[tuple[bytes, bytes]] = []
    for _last_key, handle in _block_entries(index_block):
        offset, size, _ = _block_handle(handle)
        entries.extend(_block_entries(_read_block(data, offset, size, "data")))
    return entries


def read_tf_index(path: str | os.PathLike[str]) -> dict[str, BundleEntry]:
    """{tensor name: BundleEntry} of a TF 1.x checkpoint `.index` file (including optimiser
    slots such as `.../Adam`); the bundle header (key "") is skipped."""
    return {
        key.decode("utf-8"): parse_bundle_entry(value)
        for key, value in read_table(path)
        if key != b""
    }


# ------------------------------------------------------------- official PRNet -> our PRNet names

OFFICIAL_SCOPE = "resfcn256"
_BN_TF_TO_TORCH = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
CONV_KERNEL_TO_TORCH = (3, 2, 0, 1)
"""Permutation of a TF conv2d kernel (kh, kw, in, out) to a torch Conv2d weight (out, in, kh, kw).
"""
TRANSPOSED_KERNEL_TO_TORCH = (3, 2, 0, 1)
"""Permutation of a TF conv2d_transpose kernel (kh, kw, out, in) to a torch ConvTranspose2d
weight (in, out, kh, kw). No spatial flip: both frameworks define the transposed convolution as
the adjoint (input gradient) of their cross-correlation conv2d, and with TF 'SAME' cropping
(`prnet.SameConvTranspose2d`) the two agree exactly."""


@dataclass(frozen=True)
class TensorMapping:
    """How one official TF variable becomes one entry of our PRNet state dict."""

    tf_name: str
    torch_key: str
    permute: tuple[int, ...] | None
    """Axes permutation to apply to the TF array (numpy `transpose`), None for 1-D tensors."""


def _tf_suffix(index: int) -> str:
    return "" if index == 0 else f"_{index}"


def _bn_mappings(tf_prefix: str, torch_prefix: str) -> list[TensorMapping]:
    return [
        TensorMapping(f"{tf_prefix}/BatchNorm/{tf}", f"{torch_prefix}.{torch}", None)
        for tf, torch in _BN_TF_TO_TORCH.items()
    ]


def official_tf_to_torch_names(
    num_resblocks: int = 10, num_transposed: int = 17
) -> list[TensorMapping]:
    """The one-to-one map from the official `resfcn256/*` model variables (245 tensors) to the
    keys of `net.prnet.PRNet().state_dict()` (minus the 48 `num_batches_tracked` counters).

    To convert a checkpoint the user owns: for each mapping, read the float32 array at
    (offset, size) from the .data shard, reshape to the index's shape, `transpose(permute)`,
    and copy into the state dict. TF scopes: `Conv` = first conv; `resBlock[_i]` = block i with
    `Conv` (1x1 to C/2), `Conv_1` (4x4, strided), `Conv_2` (1x1 to C, no BatchNorm),
    `shortcut` (no BatchNorm) and its own `BatchNorm` after the sum; `Conv2d_transpose[_j]` =
    decoder layer j."""
    s = OFFICIAL_SCOPE
    maps: list[TensorMapping] = []
    maps.append(TensorMapping(f"{s}/Conv/weights", "encoder.0.0.weight", CONV_KERNEL_TO_TORCH))
    maps += _bn_mappings(f"{s}/Conv", "encoder.0.1")
    for i in range(num_resblocks):
        tf_block = f"{s}/resBlock{_tf_suffix(i)}"
        torch_block = f"encoder.{i + 1}"
        for tf_conv, torch_conv in (("Conv", "conv1"), ("Conv_1", "conv2")):
            maps.append(
                TensorMapping(
                    f"{tf_block}/{tf_conv}/weights",
                    f"{torch_block}.{torch_conv}.0.weight",
                    CONV_KERNEL_TO_TORCH,
                )
            )
            maps += _bn_mappings(f"{tf_block}/{tf_conv}", f"{torch_block}.{torch_conv}.1")
        maps.append(
            TensorMapping(
                f"{tf_block}/Conv_2/weights", f"{torch_block}.conv3.weight", CONV_KERNEL_TO_TORCH
            )
        )
        # Blocks that change stride or width (every even one) have a 1x1 shortcut conv.
        if i % 2 == 0:
            maps.append(
                TensorMapping(
                    f"{tf_block}/shortcut/weights",
                    f"{torch_block}.shortcut.weight",
                    CONV_KERNEL_TO_TORCH,
                )
            )
        maps += _bn_mappings(tf_block, f"{torch_block}.bn")
    for j in range(num_transposed):
        tf_layer = f"{s}/Conv2d_transpose{_tf_suffix(j)}"
        maps.append(
            TensorMapping(
                f"{tf_layer}/weights", f"decoder.{j}.0.weight", TRANSPOSED_KERNEL_TO_TORCH
            )
        )
        maps += _bn_mappings(tf_layer, f"decoder.{j}.1")
    return maps


def torch_shape(mapping: TensorMapping, tf_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a TF tensor takes after `mapping.permute`."""
    if mapping.permute is None:
        return tuple(tf_shape)
    return tuple(tf_shape[axis] for axis in mapping.permute)


def read_official_checkpoint(
    index_path: str | os.PathLike[str], data_path: str | os.PathLike[str] | None = None
) -> dict[str, np.ndarray]:
    """Convert an official PRNet checkpoint the user owns (`256_256_resfcn256_weight.index` +
    `.data-00000-of-00001`) to {our state-dict key: float32 array in PyTorch layout}.

    Load it with `PRNet().load_state_dict({k: torch.from_numpy(v) ...}, strict=False)` (only
    the `num_batches_tracked` counters are absent). Note the official network was trained for
    the official BFM layout and scales its sigmoid by 256 * 1.1, not by our
    `prnet.normalized_to_pixels`: use `forward_normalized(image) * 256 * 1.1` with it."""
    index_path = Path(index_path)
    if data_path is None:
        data_path = index_path.with_suffix(".data-00000-of-00001")
    entries = read_tf_index(index_path)
    raw = Path(data_path).read_bytes()
    state: dict[str, np.ndarray] = {}
    for mapping in official_tf_to_torch_names():
        entry = entries.get(mapping.tf_name)
        if entry is None:
            raise TFIndexError(f"the checkpoint has no variable '{mapping.tf_name}'")
        if entry.dtype != "float32" or entry.offset + entry.size > len(raw):
            raise TFIndexError(f"'{mapping.tf_name}' is not a readable float32 tensor")
        array = np.frombuffer(raw, dtype="<f4", count=entry.size // 4, offset=entry.offset)
        array = array.reshape(entry.shape)
        if mapping.permute is not None:
            array = array.transpose(mapping.permute)
        state[mapping.torch_key] = np.array(array, dtype=np.float32, order="C")  # a writable copy
    return state
