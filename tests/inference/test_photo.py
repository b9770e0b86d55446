"""load_photo: every kind of file an artist may drop gives RGB uint8 or one clear PhotoError."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from prn_blender.core.photo import (
    ALPHA_BACKGROUND,
    MAX_PHOTO_PIXELS,
    as_rgb_uint8,
    detection_copy,
    load_photo,
)
from prn_blender.errors import PhotoError


def _write_jpeg(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_missing_photo_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(PhotoError, match=r"'.*nope\.jpg' does not exist"):
        load_photo(tmp_path / "nope.jpg")


def test_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PhotoError, match="is a folder"):
        load_photo(tmp_path)


def test_empty_file_says_copy_failed(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(PhotoError, match=r"empty \(0 bytes\)"):
        load_photo(tmp_path / "empty.jpg")


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("my holiday photo, honest")
    with pytest.raises(PhotoError, match=r"not an image OpenCV can read.*JPEG, PNG"):
        load_photo(tmp_path / "notes.jpg")


def test_heic_gets_export_advice(tmp_path: Path) -> None:
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 100)
    with pytest.raises(PhotoError, match=r"HEIC.*Export it as JPEG"):
        load_photo(tmp_path / "IMG_0001.HEIC")


def test_truncated_jpeg_is_reported_as_truncated(tmp_path: Path, astronaut: np.ndarray) -> None:
    data = _write_jpeg(tmp_path / "full.jpg", astronaut).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(PhotoError, match=r"truncated.*download it again"):
        load_photo(tmp_path / "cut.jpg")


def test_truncated_png_is_reported_as_truncated(tmp_path: Path, astronaut: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", astronaut)
    assert ok
    (tmp_path / "cut.png").write_bytes(buf.tobytes()[: buf.size // 2])
    with pytest.raises(PhotoError, match="truncated"):
        load_photo(tmp_path / "cut.png")


def test_16bit_png_is_scaled_to_8_bits(tmp_path: Path) -> None:
    bgr16 = np.zeros((4, 4, 3), np.uint16)
    bgr16[..., 2] = 65535  # red
    bgr16[..., 1] = 32896  # green: 128.5 * 256
    cv2.imwrite(str(tmp_path / "deep.png"), bgr16)
    rgb = load_photo(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    np.testing.assert_array_equal(rgb[0, 0], [255, 128, 0])


def test_grayscale_is_replicated_to_rgb(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (5, 1))
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    rgb = load_photo(tmp_path / "gray.png")
    assert rgb.shape == (5, 25, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], gray)


def test_rgba_is_composited_over_grey(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent black
    rgba[1, :] = (0, 0, 255, 128)  # half-transparent blue
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    rgb = load_photo(tmp_path / "cutout.png")
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], [ALPHA_BACKGROUND] * 3)
    np.testing.assert_allclose(rgb[1, 0], [64, 64, 191], atol=1)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    Image.new("RGB", (16, 16), (200, 50, 10)).convert("CMYK").save(tmp_path / "print.jpg")
    rgb = load_photo(tmp_path / "print.jpg")
    assert rgb.shape == (16, 16, 3)
    np.testing.assert_allclose(rgb[8, 8], [200, 50, 10], atol=6)


def test_exif_rotated_phone_photo_is_upright(tmp_path: Path) -> None:
    # Stored 80 wide x 40 tall, left half white; EXIF orientation 6 = rotate 90 deg clockwise
    # to display: the upright photo is 40 wide x 80 tall with the white half on top.
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :40] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    (tmp_path / "phone.jpg").write_bytes(buffer.getvalue())
    rgb = load_photo(tmp_path / "phone.jpg")
    assert rgb.shape == (80, 40, 3)
    assert rgb[:30].mean() > 240 and rgb[50:].mean() < 15


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def test_oversized_photo_is_refused_before_decoding(tmp_path: Path) -> None:
    (tmp_path / "huge.png").write_bytes(_png_header_only(20000, 10000))
    with pytest.raises(PhotoError, match=r"20000 x 10000 pixels \(200 MP\).*Scale it down"):
        load_photo(tmp_path / "huge.png")
    assert 12000 * 8000 <= MAX_PHOTO_PIXELS  # a 96 MP panorama is accepted (test_detect)


def test_a_side_too_long_for_opencv_is_refused(tmp_path: Path) -> None:
    # 33,000 x 10 px is only 0.3 MP, but OpenCV's warpAffine and remap stop at 32,767 px.
    (tmp_path / "strip.png").write_bytes(_png_header_only(33000, 10))
    with pytest.raises(PhotoError, match=r"33000 x 10 pixels; sides up to 32,766 px"):
        load_photo(tmp_path / "strip.png")
    with pytest.raises(PhotoError, match="sides up to 32,766 px"):
        as_rgb_uint8(np.zeros((10, 33000, 3), np.uint8))


def test_non_ascii_path_is_read(tmp_path: Path, astronaut: np.ndarray) -> None:
    path = _write_jpeg(tmp_path / "photo_é_文字.jpg", astronaut)
    assert load_photo(path).shape == (512, 512, 3)


def test_in_memory_arrays_are_validated() -> None:
    with pytest.raises(PhotoError, match="uint8 RGB"):
        as_rgb_uint8(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(PhotoError, match=r"shape \(4, 4, 2\)"):
        as_rgb_uint8(np.zeros((4, 4, 2), np.uint8))
    assert as_rgb_uint8(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)


def test_detection_copy_maps_pixel_centres_back() -> None:
    photo = np.zeros((1000, 2000, 3), np.uint8)
    copy, k = detection_copy(photo, 500)
    assert copy.shape == (250, 500, 3) and k == 0.25
    # Copy pixel 0's centre covers photo pixels 0..3: centre 1.5.
    assert (0 + 0.5) / k - 0.5 == pytest.approx(1.5)
