"""Synthetic training data for the trainer tests: a small UV layout and shards of smooth
'faces' whose position maps are half-ellipsoids of known geometry.

Layout (resolution R): the face is the disc of radius 0.45 R around the map centre; 68
landmark texels on integer texel centres spread over it; weight 16 at landmark texels, 4 in a
central 'nose' square, 3 elsewhere in the face, 0 outside. Face i of the storage images
(side S px): the texel (row, col) of the disc maps to x = cx + a (col - c) / rho,
y = cy + b (row - c) / rho, z = d sqrt(1 - r^2) (towards the camera; min 0 on the rim), with
rho = 0.45 R, so position maps and images agree exactly.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from prn_blender.core.layout import UVLayout
from prn_blender.training.shards import ShardWriter


def synthetic_layout(resolution: int = 64) -> UVLayout:
    r = resolution
    rows, cols = np.mgrid[0:r, 0:r].astype(np.float32)
    c, rho = (r - 1) / 2.0, 0.45 * r
    face = (rows - c) ** 2 + (cols - c) ** 2 <= rho**2
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    radii = rho * (0.15 + 0.7 * (np.arange(68) % 5) / 4)
    landmarks = np.stack([c + radii * np.cos(angles), c + radii * np.sin(angles)], 1).round()
    weights = np.where(face, 3.0, 0.0).astype(np.float32)
    weights[int(c - r / 10) : int(c + r / 10), int(c - r / 10) : int(c + r / 10)] = 4.0
    lm = landmarks.astype(np.int64)
    weights[lm[:, 1], lm[:, 0]] = 16.0
    texels = np.flatnonzero(face.ravel()).astype(np.int64)
    zeros2 = np.zeros((0, 2), np.float32)
    return UVLayout(
        layout_id=f"synthetic{r}", resolution=r, face_mask=face, mesh_mask=face,
        face_texels=texels, triangles=np.zeros((0, 3), np.int32), weight_mask=weights,
        landmark_texels=landmarks.astype(np.float32), ict_landmark_texels=zeros2,
        ict_landmark_vertices=np.zeros(0, np.int32),
        canonical_vertices=np.zeros((len(texels), 3), np.float32),
        ict_vertex_ids=np.zeros(0, np.int32), ict_vertex_texels=zeros2,
        ict_triangles=np.zeros((0, 3), np.int32), ict_neutral=np.zeros((0, 3), np.float32),
        texel_triangle=np.full((r, r), -1, np.int32),
        texel_barycentric=np.zeros((r, r, 3), np.float32),
    )


def ellipsoid_face(layout: UVLayout, side_px: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(storage image (S, S, 3) uint8 RGB, position map (R, R, 3) float32 storage px with NaN
    outside the face, tight box (4,) of the 68 landmark positions)."""
    r = layout.resolution
    c, rho = (r - 1) / 2.0, 0.45 * r
    cx, cy = side_px * rng.uniform(0.45, 0.55, 2)
    a, b = side_px * rng.uniform(0.22, 0.3), side_px * rng.uniform(0.28, 0.36)
    depth = 0.8 * a
    rows, cols = np.mgrid[0:r, 0:r].astype(np.float64)
    u, v = (cols - c) / rho, (rows - c) / rho
    pm = np.stack([cx + a * u, cy + b * v, depth * np.sqrt(np.clip(1 - u**2 - v**2, 0, 1))], -1)
    pm[~layout.face_mask] = np.nan
    pm[..., 2] -= np.nanmin(pm[..., 2])
    yy, xx = np.mgrid[0:side_px, 0:side_px].astype(np.float32)
    background = np.stack([xx / side_px * 200 + 30, yy / side_px * 150 + 50,
                           np.full_like(xx, 90.0)], -1)
    inside = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
    shade = np.clip(1 - ((xx - cx) / a) ** 2 - ((yy - cy) / b) ** 2, 0, 1)[..., None]
    skin = np.array([220, 170, 140], np.float32) * (0.6 + 0.4 * np.sqrt(shade))
    image = np.where(inside[..., None], skin, background)
    image = cv2.GaussianBlur(image, (0, 0), 1.0).clip(0, 255).astype(np.uint8)
    lm = layout.landmark_texels.astype(np.int64)
    points = pm[lm[:, 1], lm[:, 0], :2]
    box = np.array([*points.min(0), *points.max(0)], np.float32)
    return image, pm.astype(np.float32), box


def write_synthetic_shards(folder: Path, layout: UVLayout, faces: int = 8,
                           faces_per_shard: int = 5, seed: int = 0) -> None:
    """`faces` ellipsoid faces of storage sides 96-160 px into ShardWriter shards."""
    rng = np.random.default_rng(seed)
    with ShardWriter(folder, faces_per_shard=faces_per_shard) as writer:
        for i in range(faces):
            side = int(rng.integers(96, 161))
            image, pm, box = ellipsoid_face(layout, side, rng)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert ok
            writer.add(jpeg.tobytes(), pm, box, f"face{i:03d}", "synthetic",
                       float(rng.uniform(-60, 60)))
