"""EXIF orientation of JPEG and PNG photos (numpy only: the Blender side imports this).

Phones store most portraits as landscape pixels plus an EXIF orientation tag. OpenCV applies
the tag when decoding (core.photo), so every result is in the UPRIGHT photo's pixels; Blender's
image loader does not apply it, so the camera background must be turned upright the same way
(blender/scene.py) or the mesh would overlay a sideways photo.

Orientation codes (EXIF 2.3, tag 0x0112), as the transform that makes the stored pixels upright
(top row first): 1 none, 2 mirror left-right, 3 rotate 180, 4 mirror top-bottom, 5 transpose,
6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
"""

from __future__ import annotations

import os
import struct

import numpy as np

ORIENTATION_TAG = 0x0112


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of JPEG bytes (APP1 'Exif') or PNG bytes (an eXIf chunk,
    which OpenCV's decoder applies too); 1 when absent, invalid, or another format."""
    if data[:8] == PNG_SIGNATURE:
        return _png_orientation(data)
    if data[:2] != b"\xff\xd8":
        return 1
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no more metadata
            break
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            return _tiff_orientation(segment[6:])
        pos += 2 + length
    return 1


def _png_orientation(data: bytes) -> int:
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        if kind == b"eXIf":
            return _tiff_orientation(data[pos + 8 : pos + 8 + length])
        if kind == b"IEND":
            break
        pos += 12 + length  # length, type, data, CRC
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    if tiff[:2] not in (b"II", b"MM") or len(tiff) < 8:
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    count = struct.unpack(order + "H", tiff[ifd : ifd + 2])[0]
    for i in range(count):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == ORIENTATION_TAG and kind == 3:  # SHORT
            value = struct.unpack(order + "H", entry[8:10])[0]
            return value if 1 <= value <= 8 else 1
    return 1


def file_orientation(path: str | os.PathLike[str]) -> int:
    """`exif_orientation` of a file (reads its first 256 kB, where the EXIF block lives)."""
    try:
        with open(path, "rb") as fh:
            return exif_orientation(fh.read(256 * 1024))
    except OSError:
        return 1


def make_upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) stored pixels, top row first -> the upright image (a view where possible)."""
    transforms = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, k=1),
    }
    return transforms.get(int(orientation), transforms[1])(pixels)


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) of the upright image: codes 5-8 swap the sides."""
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
