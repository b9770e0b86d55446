"""Crop and uncrop: the similarity between photo pixels and the 256 x 256 network crop.

Pixel convention (OpenCV's): integer coordinates are pixel centres. A crop of side S centred
on c covers the photo square [c - S/2, c + S/2], which maps onto crop coordinates
[-0.5, R - 0.5]: crop = k * rot(angle) @ (photo - c) + (R - 1) / 2 with k = R / S.
DESIGN.md section 3: our crop is centred on the tight 68-landmark box, side 1.5 x mean(w, h),
identical in training (before augmentation) and inference. The official PRNet crop (scale
(R - 1) / size, corners on pixel centres 0 and R - 1) is `official_crop_from_box`, for the
official-layout path only. Depth (z) scales with the crop like x and y.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CropConvention:
    """How a face box becomes a crop: centre = box centre + center_shift * mean side (down),
    side = side_scale * mean(box w, box h)."""

    center_shift: float
    side_scale: float


LANDMARK_BOX = CropConvention(0.0, 1.5)
"""Ours (DESIGN.md section 3): tight 68-landmark box, 1.5 x its mean side."""
OFFICIAL_LANDMARKS = CropConvention(0.0, 1.6)
"""Official PRNet from 68 landmarks (api.PRN.process), official-layout path only."""
OFFICIAL_DLIB = CropConvention(0.14, 1.58)
"""Official PRNet from dlib CNN boxes, official-layout path only."""


@dataclass(frozen=True, eq=False)
class CropTransform:
    """crop_from_photo similarity. `matrix` (2, 3) float64 maps photo (x, y) to crop (x, y);
    `scale` = crop pixels per photo pixel (depth scales by it too)."""

    matrix: np.ndarray
    scale: float
    resolution: int

    def inverse_matrix(self) -> np.ndarray:
        """photo_from_crop (2, 3)."""
        return cv2.invertAffineTransform(self.matrix)


def crop_from_similarity(
    center_xy: tuple[float, float] | np.ndarray, side_px: float, angle_deg: float = 0.0,
    resolution: int = 256,
) -> CropTransform:
    """Crop of side `side_px` photo pixels centred on `center_xy` (photo px), rotated by
    `angle_deg` (positive = the crop's content appears rotated counter-clockwise on screen).
    The photo point `center_xy` lands on the crop centre ((R - 1) / 2, (R - 1) / 2)."""
    if not side_px > 0:
        raise ValueError(f"crop side must be positive, got {side_px} px")
    k = resolution / float(side_px)
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) * k
    c = np.asarray(center_xy, dtype=np.float64)
    t = (resolution - 1) / 2.0 - rot @ c
    return CropTransform(np.column_stack([rot, t]), k, resolution)


def rotated_crop(transform: CropTransform, angle_deg: float) -> CropTransform:
    """The same crop turned by `angle_deg` about its centre (sign as in `crop_from_similarity`:
    positive = the content appears rotated counter-clockwise on screen); same scale and side.
    Test-time rotation averaging runs the network on such crops of one face."""
    c = (transform.resolution - 1) / 2.0
    a = np.deg2rad(angle_deg)
    turn = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    matrix = turn @ transform.matrix
    matrix[:, 2] += c - turn @ np.array([c, c])
    return CropTransform(matrix, transform.scale, transform.resolution)


def box_center_side(
    box: np.ndarray | tuple[float, ...], convention: CropConvention = LANDMARK_BOX
) -> tuple[np.ndarray, float]:
    """(centre (2,), side px) of the crop a face box gives under `convention`."""
    x0, y0, x1, y1 = (float(v) for v in box)
    mean_side = ((x1 - x0) + (y1 - y0)) / 2.0
    centre = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0 + convention.center_shift * mean_side])
    return centre, convention.side_scale * mean_side


def crop_from_box(
    box: np.ndarray | tuple[float, ...], convention: CropConvention = LANDMARK_BOX,
    resolution: int = 256,
) -> CropTransform:
    """The network crop of a face box (x0, y0, x1, y1) in photo pixels."""
    centre, side = box_center_side(box, convention)
    return crop_from_similarity(centre, side, 0.0, resolution)


UPRIGHT_MIN_ROLL_DEG = 10.0
"""`crop_from_landmarks` rotates the crop upright only beyond this roll: nearly upright faces
keep the axis-aligned training crop exactly."""


def landmark_roll_deg(landmarks68: np.ndarray) -> float:
    """In-plane rotation of a face from its iBUG-68 points (photo px, y down): the angle of the
    line from the image-left eye's centre (points 36-41) to the other's (42-47); positive =
    the face turned clockwise on screen."""
    pts = np.asarray(landmarks68, dtype=np.float64)[:, :2]
    d = pts[42:48].mean(axis=0) - pts[36:42].mean(axis=0)
    return float(np.degrees(np.arctan2(d[1], d[0])))


def crop_from_landmarks(
    landmarks68: np.ndarray, convention: CropConvention = LANDMARK_BOX, resolution: int = 256,
    upright_min_deg: float = UPRIGHT_MIN_ROLL_DEG,
    box_mapping: Callable[[np.ndarray], np.ndarray] | None = None,
    roll_deg: float | None = None,
) -> CropTransform:
    """The network crop of a face given its 68 points (photo px): the training crop of their
    tight box (passed through `box_mapping` if given), taken in the face's own upright frame
    when its roll exceeds `upright_min_deg` (`uncrop_*` undo the rotation). Below that,
    exactly `crop_from_box` of the axis-aligned box. Training crops are axis-aligned boxes of
    mostly upright faces (then rotated by up to 45 degrees), so the upright box is the size the
    network knows best. roll_deg: the face's roll (clockwise on screen > 0), e.g. from the
    head pose, which stays reliable on turned faces whose eyes are close together on screen
    (though not near profile: inference.reconstructor.REFINE_UPRIGHT_MAX_YAW_DEG);
    None = from the eye line (`landmark_roll_deg`)."""
    pts = np.asarray(landmarks68, dtype=np.float64)[:, :2]
    roll = landmark_roll_deg(pts) if roll_deg is None else float(roll_deg)
    if abs(roll) <= upright_min_deg:
        roll = 0.0
    a = np.deg2rad(roll)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # photo -> upright
    upright = pts @ rot.T
    box = np.array([*upright.min(axis=0), *upright.max(axis=0)])
    if box_mapping is not None:
        box = box_mapping(box)
    centre, side = box_center_side(box, convention)
    return crop_from_similarity(rot.T @ centre, side, roll, resolution)


def official_crop_from_box(
    box: np.ndarray | tuple[float, ...], convention: CropConvention = OFFICIAL_LANDMARKS,
    resolution: int = 256,
) -> CropTransform:
    """The official PRNet crop (api.PRN.process), for the official-layout path only.

    size = int(side_scale x mean side) (truncated, as the official code does); the photo
    square's corners (cx - size/2, cy - size/2) and (cx + size/2, ...) map onto crop pixels
    0 and R - 1, so scale = (R - 1) / size, not R / size as in ours."""
    centre, side = box_center_side(box, convention)
    size = float(int(side))
    if not size > 0:
        raise ValueError(f"box {tuple(box)} gives an empty official crop")
    k = (resolution - 1) / size
    t = -k * (centre - size / 2.0)
    matrix = np.array([[k, 0.0, t[0]], [0.0, k, t[1]]])
    return CropTransform(matrix, k, resolution)


def warp_photo_to_crop(
    photo: np.ndarray, transform: CropTransform, border: int = cv2.BORDER_CONSTANT
) -> np.ndarray:
    """(R, R, C) crop, bilinear. BORDER_CONSTANT pads with black; training uses
    BORDER_REFLECT101 so crops never show black borders benchmark photos don't have."""
    r = transform.resolution
    return cv2.warpAffine(photo, transform.matrix, (r, r), flags=cv2.INTER_LINEAR,
                          borderMode=border)


def crop_points(points: np.ndarray, transform: CropTransform) -> np.ndarray:
    """(N, 2|3) photo points -> crop points; z (if present) is multiplied by the scale."""
    p = np.asarray(points, dtype=np.float64)
    out = p.copy()
    out[..., :2] = p[..., :2] @ transform.matrix[:, :2].T + transform.matrix[:, 2]
    if p.shape[-1] > 2:
        out[..., 2] = p[..., 2] * transform.scale
    return out.astype(np.float32)


def uncrop_points(points: np.ndarray, transform: CropTransform) -> np.ndarray:
    """Inverse of `crop_points`."""
    inv = transform.inverse_matrix()
    p = np.asarray(points, dtype=np.float64)
    out = p.copy()
    out[..., :2] = p[..., :2] @ inv[:, :2].T + inv[:, 2]
    if p.shape[-1] > 2:
        out[..., 2] = p[..., 2] / transform.scale
    return out.astype(np.float32)


def uncrop_position_map(position_map: np.ndarray, transform: CropTransform) -> np.ndarray:
    """(R, R, 3) crop-pixel position map -> photo pixels: x, y through the inverse similarity,
    z divided by the crop scale (DESIGN.md section 3)."""
    return uncrop_points(position_map, transform)
