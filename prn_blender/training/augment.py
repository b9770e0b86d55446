"""One training sample: storage image + target -> augmented 256 crop + target + loss weights.

DESIGN.md section 3: the crop is the similarity centred on the target's tight 68-landmark box
with side 1.5 x mean(w, h) (as at inference), then one round of augmentation on top: rotation
+-45 deg, shift +-10 % of the side, scale 0.9-1.2, colour 0.6-1.4 per channel, synthetic
occlusion, blur / down-up-sampling. The image is warped with BORDER_REFLECT101 (black borders
are a trap: benchmark photos never have them). The target's x, y go through the same similarity,
z is multiplied by its scale and shifted so the face's minimum z is 0; texels outside the
network's range [-76.8, 332.8] px are clamped and get weight 0.
Randomness comes only from the `rng` passed in, so a sample is a pure function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..core.crop import LANDMARK_BOX, box_center_side, crop_from_similarity

POSITION_MIN_PX, POSITION_MAX_PX = -76.8, 332.8  # net.prnet's range, without importing torch


@dataclass(frozen=True)
class AugmentSettings:
    rotation_deg: float = 45.0
    shift_fraction: float = 0.10
    scale_range: tuple[float, float] = (0.9, 1.2)
    colour_range: tuple[float, float] = (0.6, 1.4)
    occlusion_probability: float = 0.3
    blur_probability: float = 0.3
    enabled: bool = True


NO_AUGMENTATION = AugmentSettings(enabled=False)


def make_sample(
    image_rgb: np.ndarray, position_map: np.ndarray, box: np.ndarray, face_mask: np.ndarray,
    weight_mask: np.ndarray, rng: np.random.Generator, settings: AugmentSettings,
    resolution: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (crop (R, R, 3) uint8 RGB, target (R, R, 3) float32 crop px, weights (R, R))."""
    centre, side = box_center_side(box, LANDMARK_BOX)
    angle = 0.0
    if settings.enabled:
        angle = rng.uniform(-settings.rotation_deg, settings.rotation_deg)
        centre = centre + rng.uniform(-1, 1, 2) * settings.shift_fraction * side
        side = side / rng.uniform(*settings.scale_range)
    transform = crop_from_similarity(centre, side, angle, resolution)
    crop = cv2.warpAffine(image_rgb, transform.matrix, (resolution, resolution),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if settings.enabled:
        crop = _augment_pixels(crop, rng, settings)

    target = np.empty_like(position_map, dtype=np.float32)
    m = transform.matrix
    target[..., :2] = position_map[..., :2] @ m[:, :2].T + m[:, 2]
    target[..., 2] = position_map[..., 2] * transform.scale
    valid = face_mask & np.isfinite(target).all(axis=-1)
    if valid.any():
        target[..., 2] -= target[..., 2][valid].min()
    in_range = ((target >= POSITION_MIN_PX) & (target <= POSITION_MAX_PX)).all(axis=-1)
    weights = np.where(valid & in_range, weight_mask, 0.0).astype(np.float32)
    target = np.where(np.isfinite(target), target, 0.0)
    target = np.clip(target, POSITION_MIN_PX, POSITION_MAX_PX).astype(np.float32)
    return crop, target, weights


def _augment_pixels(crop: np.ndarray, rng: np.random.Generator, s: AugmentSettings) -> np.ndarray:
    out = crop.astype(np.float32) * rng.uniform(*s.colour_range, size=3)
    r = crop.shape[0]
    if rng.random() < s.occlusion_probability:
        w, h = rng.integers(r // 8, r // 2, size=2)
        x, y = rng.integers(0, r - w), rng.integers(0, r - h)
        if rng.random() < 0.5:
            out[y : y + h, x : x + w] = rng.uniform(0, 255, size=3)
        else:
            out[y : y + h, x : x + w] = rng.uniform(0, 255, size=(h, w, 3))
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
