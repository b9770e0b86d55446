"""One training sample: storage image + target -> augmented crop + target + loss weights.

DESIGN.md section 3: the crop is the similarity centred on the target's tight 68-landmark box
with side 1.5 x mean(w, h) (as at inference), then one round of augmentation on top: rotation
+-45 deg, shift +-10 % of the side, scale 0.9-1.2, colour 0.6-1.4 per channel, synthetic
occlusion (rectangles / ellipses of one random colour or of noise), blur or down-up-sampling
(most AFLW storage crops are 120 px: the network must not expect one sharpness). The image is
warped with BORDER_REFLECT101: black borders are a trap, benchmark photos never have them. Some
storage images (UTKFace: a face pasted in a black canvas, corners of rotated alignments) carry
black borders themselves: `remove_black_canvas` trims the all-black margin and fills the
remaining near-black regions that touch the border with blurred neighbouring content first.
The target's x, y go through the same similarity, z is multiplied by its scale and shifted so
the face's minimum z is 0; texels outside the network's range [-76.8, 332.8] px are clamped and
get weight 0, as do texels where the target is undefined (NaN, outside the face mask).

numpy + OpenCV only. Randomness comes only from the `rng` passed in, so a sample is a pure
function of (image, target, rng seed): the trainer seeds it with (seed, epoch, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..core.crop import LANDMARK_BOX, CropTransform, box_center_side, crop_from_similarity

POSITION_MIN_PX, POSITION_MAX_PX = -76.8, 332.8
"""net.prnet's output range (DESIGN.md section 3), repeated here so this module needs no torch;
tests/training/test_augment.py checks they agree."""


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the one round of augmentation (DESIGN.md section 3). `enabled=False` gives the
    plain inference crop (for evaluation and tests)."""

    rotation_deg: float = 45.0
    shift_fraction: float = 0.10
    """Of the crop side, per axis."""
    scale_range: tuple[float, float] = (0.9, 1.2)
    """Zoom factor: > 1 makes the face larger in the crop."""
    colour_range: tuple[float, float] = (0.6, 1.4)
    occlusion_probability: float = 0.3
    blur_probability: float = 0.3
    """Half Gaussian blur, half down-up-sampling to 1/4-1/2 of the crop side."""
    mirror_probability: float = 0.0
    """Left-right mirroring (not in the paper's list, so off by default). Needs a
    mirror-symmetric layout (`core.layout.is_mirror_symmetric`)."""
    enabled: bool = True


NO_AUGMENTATION = AugmentSettings(enabled=False)

BLACK_LEVEL = 12
"""Pixels whose channels are all at or below this (JPEG noise on black) count as canvas."""
MIN_CANVAS_FRACTION = 0.01
"""Border-connected black regions smaller than this fraction of the image are left alone."""


@dataclass(frozen=True, eq=False)
class TrainingSample:
    """A network input with its target, all in crop pixels of side R."""

    crop: np.ndarray
    """(R, R, 3) uint8 RGB."""
    target_px: np.ndarray
    """(R, R, 3) float32 target position map, crop pixels, clamped to the network's range;
    0 where undefined."""
    weights: np.ndarray
    """(R, R) float32 loss weights: the layout's weight mask, 0 where the target is undefined
    or was clamped."""
    transform: CropTransform
    """crop_from_storage similarity actually used (augmentation included)."""
    mirrored: bool = False
    """The crop was then mirrored left-right: crop x = R - 1 - (transform's x)."""


def sample_crop_transform(
    box: np.ndarray, rng: np.random.Generator, settings: AugmentSettings, resolution: int
) -> CropTransform:
    """The inference crop of the tight landmark box (storage px), jittered by `settings`."""
    centre, side = box_center_side(box, LANDMARK_BOX)
    angle = 0.0
    if settings.enabled:
        angle = rng.uniform(-settings.rotation_deg, settings.rotation_deg)
        centre = centre + rng.uniform(-1.0, 1.0, 2) * settings.shift_fraction * side
        side = side / rng.uniform(*settings.scale_range)
    return crop_from_similarity(centre, side, angle, resolution)


def make_sample(
    image_rgb: np.ndarray | None, position_map: np.ndarray, box: np.ndarray,
    face_mask: np.ndarray, weight_mask: np.ndarray, rng: np.random.Generator,
    settings: AugmentSettings, resolution: int = 256,
    content: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainingSample:
    """image_rgb: (H, W, 3) uint8 storage image; position_map: (R, R, 3) storage px, NaN outside
    the face; box: (4,) tight 68-landmark box, storage px; face_mask / weight_mask: the layout's;
    content: `remove_black_canvas(image_rgb)` if the caller has it already (it is the same every
    epoch, and its wide blur costs more than the rest of a sample); `image_rgb` is then not
    needed (None). Inputs are not modified."""
    transform = sample_crop_transform(box, rng, settings, resolution)
    if content is None:
        if image_rgb is None:
            raise ValueError("make_sample needs the storage image or its content")
        content = remove_black_canvas(image_rgb)
    content, offset = content
    matrix = transform.matrix.copy()  # crop_from_content = crop_from_storage o shift(offset)
    matrix[:, 2] += matrix[:, :2] @ offset
    crop = cv2.warpAffine(content, matrix, (resolution, resolution),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if settings.enabled:
        crop = augment_pixels(crop, rng, settings)

    m = transform.matrix
    source = np.asarray(position_map, dtype=np.float32)
    target = np.empty_like(source)
    target[..., :2] = source[..., :2] @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)
    target[..., 2] = source[..., 2] * np.float32(transform.scale)
    mirrored = settings.enabled and settings.mirror_probability > 0 and \
        rng.random() < settings.mirror_probability
    # Texel column c and R-1-c are mirror points of the face. The loss weights stay the
    # layout's per output texel (the weight mask is not exactly symmetric around landmarks).
    if mirrored:
        crop = np.ascontiguousarray(crop[:, ::-1])
        target = np.ascontiguousarray(target[:, ::-1])
        target[..., 0] = (resolution - 1) - target[..., 0]
    valid = face_mask & np.isfinite(target).all(axis=-1)
    if valid.any():
        target[..., 2] -= target[..., 2][valid].min()
    with np.errstate(invalid="ignore"):
        in_range = ((target >= POSITION_MIN_PX) & (target <= POSITION_MAX_PX)).all(axis=-1)
    weights = np.where(valid & in_range, weight_mask, 0.0).astype(np.float32)
    target = np.clip(np.nan_to_num(target, nan=0.0), POSITION_MIN_PX, POSITION_MAX_PX)
    return TrainingSample(crop, target.astype(np.float32), weights, transform, mirrored)


def remove_black_canvas(image_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(content image, (2,) float64 offset x, y of its pixel (0, 0) in the input, px).

    Trims rows and columns that are entirely black (<= BLACK_LEVEL), then replaces near-black
    regions connected to the border (alignment wedges) by a normalised Gaussian blur of the
    other pixels, so that BORDER_REFLECT101 and the crop see photo-like content. An image
    without black margins is returned unchanged (the same array)."""
    dark = image_rgb.max(axis=-1) <= BLACK_LEVEL
    rows, cols = np.flatnonzero(~dark.all(axis=1)), np.flatnonzero(~dark.all(axis=0))
    if rows.size == 0 or cols.size == 0:
        return image_rgb, np.zeros(2)
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = dark.shape
    seam = 2  # where a margin was trimmed, its JPEG-blurred edge goes too
    y0, x0 = y0 + seam * (y0 > 0), x0 + seam * (x0 > 0)
    y1, x1 = y1 - seam * (y1 < h), x1 - seam * (x1 < w)
    if y1 - y0 < 8 or x1 - x0 < 8:
        return image_rgb, np.zeros(2)
    content, dark = image_rgb[y0:y1, x0:x1], dark[y0:y1, x0:x1]
    offset = np.array([x0, y0], dtype=np.float64)
    if not dark.any():
        return content, offset
    _, labels = cv2.connectedComponents(dark.astype(np.uint8), connectivity=8)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    canvas = np.isin(labels, edge[edge > 0])
    if canvas.sum() < MIN_CANVAS_FRACTION * canvas.size:
        return content, offset
    # also the anti-aliased / JPEG-ringing seam between canvas and photo
    canvas = cv2.dilate(canvas.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2) > 0
    keep = (~canvas).astype(np.float32)
    sigma = 0.08 * max(content.shape[:2])
    total = cv2.GaussianBlur(content.astype(np.float32) * keep[..., None], (0, 0), sigma)
    weight = cv2.GaussianBlur(keep, (0, 0), sigma)[..., None]
    filled = total / np.maximum(weight, 1e-3)
    out = np.where(canvas[..., None], filled, content).clip(0, 255).astype(np.uint8)
    return out, offset


def augment_pixels(crop: np.ndarray, rng: np.random.Generator, s: AugmentSettings) -> np.ndarray:
    """Colour gain per channel, then maybe one occluder, then maybe blur or down-up-sampling.
    (R, R, 3) uint8 in, new (R, R, 3) uint8 out."""
    r = crop.shape[0]
    out = crop.astype(np.float32) * rng.uniform(*s.colour_range, size=3).astype(np.float32)
    if rng.random() < s.occlusion_probability:
        w, h = (int(v) for v in rng.integers(r // 8, r // 2, size=2))
        x, y = int(rng.integers(0, r - w)), int(rng.integers(0, r - h))
        mask = np.zeros((r, r), np.uint8)
        if rng.random() < 0.5:
            mask[y : y + h, x : x + w] = 1
        else:
            cv2.ellipse(mask, (x + w // 2, y + h // 2), (w // 2, h // 2),
                        float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
        if rng.random() < 0.5:
            fill = np.broadcast_to(rng.uniform(0, 255, size=3).astype(np.float32), out.shape)
        else:
            fill = rng.uniform(0, 255, size=out.shape).astype(np.float32)
        out = np.where(mask[..., None] > 0, fill, out)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < s.blur_probability:
        if rng.random() < 0.5:
            k = int(rng.choice([3, 5, 7]))
            out = cv2.GaussianBlur(out, (k, k), 0)
        else:
            small = int(rng.integers(r // 4, r // 2 + 1))
            out = cv2.resize(cv2.resize(out, (small, small), interpolation=cv2.INTER_AREA),
                             (r, r), interpolation=cv2.INTER_LINEAR)
    return out
