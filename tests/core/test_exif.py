"""EXIF orientation: the parser and the upright transform agree with OpenCV's decoder."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from prn_blender.core.exif import exif_orientation, file_orientation, make_upright, upright_size


def jpeg_with_orientation(rgb: np.ndarray, orientation: int, byte_order: str = "MM") -> bytes:
    """JPEG bytes of `rgb` with an APP1 EXIF block whose IFD0 holds only the orientation tag."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    o = ">" if byte_order == "MM" else "<"
    tiff = (byte_order.encode() + struct.pack(o + "HI", 42, 8) + struct.pack(o + "H", 1)
            + struct.pack(o + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(o + "I", 0))
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    data = encoded.tobytes()
    return data[:2] + app1 + data[2:]


def _test_image() -> np.ndarray:
    yy, xx = np.mgrid[0:48, 0:80]
    img = np.stack([xx * 3, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    img[5:15, 10:20] = (255, 0, 0)  # an asymmetric mark: every orientation looks different
    return img


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("byte_order", ["MM", "II"])
def test_make_upright_matches_opencv_decoding(orientation: int, byte_order: str) -> None:
    data = jpeg_with_orientation(_test_image(), orientation, byte_order)
    assert exif_orientation(data) == orientation
    buffer = np.frombuffer(data, np.uint8)
    stored = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    upright = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(make_upright(stored, orientation), upright)
    assert upright_size(80, 48, orientation) == (upright.shape[1], upright.shape[0])


def test_photos_without_exif_are_upright(tmp_path) -> None:
    _, png = cv2.imencode(".png", _test_image())
    assert exif_orientation(png.tobytes()) == 1
    _, jpg = cv2.imencode(".jpg", _test_image())
    assert exif_orientation(jpg.tobytes()) == 1
    assert exif_orientation(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00XX") == 1  # truncated
    assert file_orientation(tmp_path / "missing.jpg") == 1
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg_with_orientation(_test_image(), 6))
    assert file_orientation(path) == 6


def png_with_orientation(rgb: np.ndarray, orientation: int, byte_order: str = "MM") -> bytes:
    """PNG bytes of `rgb` with an eXIf chunk (a bare TIFF block) holding the orientation tag,
    placed before the image data as the PNG spec asks."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    o = ">" if byte_order == "MM" else "<"
    tiff = (byte_order.encode() + struct.pack(o + "HI", 42, 8) + struct.pack(o + "H", 1)
            + struct.pack(o + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(o + "I", 0))
    chunk = (struct.pack(">I", len(tiff)) + b"eXIf" + tiff
             + struct.pack(">I", zlib.crc32(b"eXIf" + tiff)))
    data = encoded.tobytes()
    ihdr_end = 8 + 12 + 13  # signature, then the IHDR chunk (13 data bytes)
    return data[:ihdr_end] + chunk + data[ihdr_end:]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_png_exif_orientation_matches_opencv_decoding(orientation: int, tmp_path) -> None:
    """OpenCV turns PNGs upright by their eXIf chunk too: the parser (which the Blender side
    uses for the camera background) must see the same orientation."""
    data = png_with_orientation(_test_image(), orientation, "II")
    assert exif_orientation(data) == orientation
    buffer = np.frombuffer(data, np.uint8)
    stored = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    upright = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    assert not np.array_equal(stored.shape, upright.shape) or not np.array_equal(stored, upright)
    np.testing.assert_array_equal(make_upright(stored, orientation), upright)
    path = tmp_path / "rotated.png"
    path.write_bytes(data)
    assert file_orientation(path) == orientation
