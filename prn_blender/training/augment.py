"""One training sample: storage image + target -> augmented crop + target + loss weights.

DESIGN.md section 3: the crop is the similarity centred on the target's tight 68-landmark box
with side 1.5 x mean(w, h) (as at inference), then one round of augmentation on top: rotation
+-45 deg, shift +-10 % of the side, scale 0.9-1.2, colour 0.6-1.4 per channel, synthetic
occlusion (rectangles / ellipses of one random colour or of noise), blur or down-up-sampling
(most AFLW storage crops are 120 px: the network must not expect one sharpness). The image is
warped with BORDER_REFLECT101: black borders are a trap, benchmark photos never have them.
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
    enabled: bool = True


NO_AUGMENTATION = AugmentSettings(enabled=False)


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
    image_rgb: np.ndarray, position_map: np.ndarray, box: np.ndarray, face_mask: np.ndarray,
    weight_mask: np.ndarray, rng: np.random.Generator, settings: AugmentSettings,
    resolution: int = 256,
) -> TrainingSample:
    """image_rgb: (H, W, 3) uint8 storage image; position_map: (R, R, 3) storage px, NaN outside
    the face; box: (4,) tight 68-landmark box, storage px; face_mask / weight_mask: the layout's.
    Inputs are not modified."""
    transform = sample_crop_transform(box, rng, settings, resolution)
    crop = cv2.warpAffine(image_rgb, transform.matrix, (resolution, resolution),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if settings.enabled:
        crop = augment_pixels(crop, rng, settings)

    m = transform.matrix
    source = np.asarray(position_map, dtype=np.float32)
    target = np.empty_like(source)
    target[..., :2] = source[..., :2] @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)
    target[..., 2] = source[..., 2] * np.float32(transform.scale)
    valid = face_mask & np.isfinite(target).all(axis=-1)
    if valid.any():
        target[..., 2] -= target[..., 2][valid].min()
    with np.errstate(invalid="ignore"):
        in_range = ((target >= POSITION_MIN_PX) & (target <= POSITION_MAX_PX)).all(axis=-1)
    weights = np.where(valid & in_range, weight_mask, 0.0).astype(np.float32)
    target = np.clip(np.nan_to_num(target, nan=0.0), POSITION_MIN_PX, POSITION_MAX_PX)
    return TrainingSample(crop, target.astype(np.float32), weights, transform)


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
