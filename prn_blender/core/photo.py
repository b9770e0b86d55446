"""Read a photo as (H, W, 3) uint8 RGB, whatever a phone or an editor wrote (numpy + OpenCV).

Handled: EXIF orientation (OpenCV's IMREAD_COLOR applies it, `cv2.imdecode` too, checked on
4.11), 16-bit (scaled to 8 bits), grayscale (replicated), RGBA / grey + alpha (composited over
mid-grey, so transparent cut-outs do not turn black), CMYK JPEG (converted by libjpeg).
Refused with a sentence saying what to do (`PhotoError`): a missing path or a folder, an empty
file, a file that is no image OpenCV reads (HEIC named as such), a truncated JPEG or PNG, and
photos above `MAX_PHOTO_PIXELS` or with a side above `MAX_PHOTO_SIDE_PX` (checked from the
header before decoding where possible).

Huge photos up to the cap are kept at full resolution (the texture is sampled from it); face
detection runs on a downscaled copy (`detection_copy`), so memory is about 2 x the photo's bytes.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from ..errors import PhotoError

MAX_PHOTO_PIXELS = 150_000_000
MAX_PHOTO_SIDE_PX = 32_766
"""OpenCV's warpAffine and remap (crop, texture) take images with sides below 32,767 px."""
"""Largest photo accepted, in pixels (a 12000 x 8000 panorama is 96 MP: accepted; 150 MP of
RGB is 450 MB in memory)."""
ALPHA_BACKGROUND = 128
"""Grey level transparent pixels are composited onto."""
SUPPORTED = "JPEG, PNG, TIFF, WebP or BMP"


def load_photo(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W, 3) uint8 RGB of the photo at `path`, upright (EXIF orientation applied).

    Raises PhotoError with an actionable message for anything that cannot be used."""
    path = Path(path)
    name = path.name
    if not path.exists():
        raise PhotoError(f"The photo '{path}' does not exist. Check the path (and that the "
                         "drive or network share is available).")
    if path.is_dir():
        raise PhotoError(f"'{path}' is a folder, not a photo. Choose an image file.")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # not cv2.imread: non-ASCII paths
    except OSError as error:
        raise PhotoError(f"Cannot read '{path}' ({error.strerror or error}). Check the file's "
                         "permissions.") from error
    return decode_photo(data.tobytes(), name)


def decode_photo(data: bytes, name: str = "photo") -> np.ndarray:
    """`load_photo` for bytes already in memory; `name` is used in messages."""
    if len(data) == 0:
        raise PhotoError(f"'{name}' is empty (0 bytes): the download or copy failed. "
                         "Copy the photo again.")
    kind = _sniff(data)
    if kind == "heic":
        raise PhotoError(f"'{name}' is a HEIC/HEIF photo, which OpenCV cannot read. Export it "
                         "as JPEG (on a phone: 'Most Compatible' camera format) and try again.")
    size = _header_size(data, kind)
    if size is not None:
        _check_pixels(size[0], size[1], name)
    buffer = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)  # 8-bit, 3 channels, EXIF-rotated, CMYK->BGR
    if bgr is None:
        if (kind == "jpeg" and not _jpeg_complete(data)) or (
                kind == "png" and b"IEND" not in data[-64:]):
            raise PhotoError(_truncated(name))
        if kind is None:
            raise PhotoError(f"'{name}' is not an image OpenCV can read. Use a {SUPPORTED} file.")
        raise PhotoError(f"'{name}' looks like a {kind.upper()} file but cannot be decoded (it "
                         "may be damaged). Re-export or re-download it.")
    _check_pixels(bgr.shape[1], bgr.shape[0], name)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: huge photos
    if kind != "jpeg" and _may_have_alpha(data, kind):
        rgb = _composite_alpha(buffer, rgb)
    return rgb


def as_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an in-memory image for the API: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA,
    uint8 (or uint16, scaled). Returns (H, W, 3) uint8 RGB (a new array unless already so)."""
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) * 255 + 32767) // 65535
        img = img.astype(np.uint8)
    if img.dtype != np.uint8:
        raise PhotoError(f"The {name} array must be uint8 RGB (H, W, 3), got {img.dtype}. "
                         "Convert it with (array * 255).round().astype(np.uint8) if it holds "
                         "values in [0, 1].")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or min(img.shape[:2]) < 1:
        raise PhotoError(f"The {name} array must be (H, W, 3) RGB, got shape {img.shape}.")
    _check_pixels(img.shape[1], img.shape[0], name)
    if img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        img = (img[:, :, :3] * alpha + ALPHA_BACKGROUND * (1.0 - alpha)).round()
        img = img.astype(np.uint8)
    return np.ascontiguousarray(img)


def detection_copy(photo: np.ndarray, max_side_px: int) -> tuple[np.ndarray, float]:
    """(copy scaled so its longer side is at most `max_side_px` (INTER_AREA), scale factor
    copy px per photo px). Scale 1.0 and the photo itself when it is small enough. A point
    maps back as photo = (copy + 0.5) / scale - 0.5 (pixel centres)."""
    h, w = photo.shape[:2]
    k = min(1.0, max_side_px / float(max(h, w)))
    if k >= 1.0:
        return photo, 1.0
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA), k


# ---------------------------------------------------------------------------------- internals


def _truncated(name: str) -> str:
    return (f"'{name}' is truncated: the file ends before the image does (an interrupted "
            "download or copy?). Copy or download it again.")


def _check_pixels(width: int, height: int, name: str) -> None:
    if max(width, height) > MAX_PHOTO_SIDE_PX:
        raise PhotoError(
            f"'{name}' is {width} x {height} pixels; sides up to {MAX_PHOTO_SIDE_PX:,} px are "
            "supported. Scale it down (a face needs only a few hundred pixels) or crop around "
            "the face.")
    if width * height > MAX_PHOTO_PIXELS:
        raise PhotoError(
            f"'{name}' is {width} x {height} pixels ({width * height / 1e6:.0f} MP); the limit is "
            f"{MAX_PHOTO_PIXELS / 1e6:.0f} MP. Scale it down (a face needs only a few hundred "
            "pixels) or crop around the face.")


def _sniff(data: bytes) -> str | None:
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heim",
                                               b"heis", b"hevc", b"avif"):
        return "heic"
    return None


def _header_size(data: bytes, kind: str | None) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None if unknown."""
    try:
        if kind == "png" and len(data) >= 24:
            return struct.unpack(">II", data[16:24])
        if kind == "jpeg":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    i += 1
                    continue
                marker = data[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                    i += 1 if marker == 0xFF else 2
                    continue
                length = struct.unpack(">H", data[i + 2:i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    height, width = struct.unpack(">HH", data[i + 5:i + 9])
                    return width, height
                i += 2 + length
    except struct.error:
        return None
    return None


def _jpeg_complete(data: bytes) -> bool:
    """A JPEG ends with the EOI marker (FF D9), possibly followed by zero padding (only asked
    after decoding failed: phones may append trailers after EOI)."""
    return data.rstrip(b"\x00").endswith(b"\xff\xd9")


def _may_have_alpha(data: bytes, kind: str | None) -> bool:
    if kind == "png":
        return len(data) > 25 and data[25] in (4, 6)  # IHDR colour type: grey+alpha, RGBA
    return kind in ("tiff", "webp")


def _composite_alpha(buffer: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Composite `rgb` over mid-grey using the file's alpha channel (if it has one)."""
    raw = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 3 or raw.shape[2] != 4 or raw.shape[:2] != rgb.shape[:2]:
        return rgb
    alpha = raw[:, :, 3].astype(np.float32)
    alpha /= 65535.0 if raw.dtype == np.uint16 else 255.0
    alpha = alpha[:, :, None]
    out = rgb.astype(np.float32) * alpha + ALPHA_BACKGROUND * (1.0 - alpha)
    return out.round().astype(np.uint8)
