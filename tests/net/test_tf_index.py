"""The stdlib tensor-bundle index reader on hand-built tables (known values, corruptions)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from prn_blender.net.tf_index import (
    TABLE_MAGIC,
    BundleEntry,
    TFIndexError,
    _unmask_crc,
    crc32c,
    parse_bundle_entry,
    read_tf_index,
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _entry_proto(dtype: int, shape: tuple[int, ...], offset: int, size: int, crc: int) -> bytes:
    dims = b"".join(_field(2, 2, _varint(len(d)) + d) for d in (_field(1, 0, _varint(s))
                                                               for s in shape))
    msg = _field(1, 0, _varint(dtype)) + _field(2, 2, _varint(len(dims)) + dims)
    if offset:
        msg += _field(4, 0, _varint(offset))
    return msg + _field(5, 0, _varint(size)) + _field(6, 5, struct.pack("<I", crc))


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 2) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        out += key[shared:] + value
        previous = key
    for r in restarts:
        out += struct.pack("<I", r)
    return bytes(out + struct.pack("<I", len(restarts)))


def _with_trailer(block: bytes, compression: int = 0) -> bytes:
    body = block + bytes([compression])
    return body + struct.pack("<I", _mask(crc32c(body)))


def _table(entries: list[tuple[bytes, bytes]], compression: int = 0) -> bytes:
    data_block = _block(entries)
    data = _with_trailer(data_block, compression)
    handle = _varint(0) + _varint(len(data_block))
    index_block = _block([(entries[-1][0], handle)])
    index_offset = len(data)
    data += _with_trailer(index_block)
    meta_block = _block([])
    meta_offset = len(data)
    data += _with_trailer(meta_block)
    footer = _varint(meta_offset) + _varint(len(meta_block))
    footer += _varint(index_offset) + _varint(len(index_block))
    footer = footer.ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    return data + footer


ENTRIES = [
    (b"", _field(1, 0, _varint(1))),  # bundle header: num_shards = 1
    (b"net/conv/weights", _entry_proto(1, (4, 4, 3, 16), 0, 3072, 123)),
    (b"net/conv/weights/Adam", _entry_proto(1, (4, 4, 3, 16), 3072, 3072, 7)),
    (b"net/deconv/BatchNorm/beta", _entry_proto(19, (512,), 300_000, 1024, 2**32 - 1)),
]


def test_crc32c_matches_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert _unmask_crc(_mask(0xDEADBEEF)) == 0xDEADBEEF


def test_reader_decodes_prefix_compressed_keys_and_entries(tmp_path: Path) -> None:
    path = tmp_path / "model.index"
    path.write_bytes(_table(ENTRIES))
    entries = read_tf_index(path)
    assert list(entries) == ["net/conv/weights", "net/conv/weights/Adam",
                             "net/deconv/BatchNorm/beta"]
    assert entries["net/conv/weights"] == BundleEntry("float32", (4, 4, 3, 16), 0, 0, 3072, 123)
    assert entries["net/conv/weights/Adam"].offset == 3072
    beta = entries["net/deconv/BatchNorm/beta"]
    assert (beta.dtype, beta.shape, beta.offset, beta.crc32c) == ("float16", (512,), 300_000,
                                                                  2**32 - 1)


def test_scalar_entry_has_empty_shape() -> None:
    entry = parse_bundle_entry(_field(1, 0, _varint(1)) + _field(5, 0, _varint(4)))
    assert entry.shape == () and entry.size == 4 and entry.offset == 0


def test_compressed_block_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "snappy.index"
    path.write_bytes(_table(ENTRIES, compression=1))
    with pytest.raises(TFIndexError, match="Snappy-compressed"):
        read_tf_index(path)


def test_corrupt_block_fails_its_checksum(tmp_path: Path) -> None:
    raw = bytearray(_table(ENTRIES))
    raw[raw.index(b"deconv")] ^= 0x20  # flip one key byte inside the data block
    path = tmp_path / "corrupt.index"
    path.write_bytes(bytes(raw))
    with pytest.raises(TFIndexError, match="CRC-32C"):
        read_tf_index(path)


def test_non_index_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not.index"
    path.write_bytes(b"\x89PNG" + bytes(100))
    with pytest.raises(TFIndexError, match="magic"):
        read_tf_index(path)
