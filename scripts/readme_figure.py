"""The README's before/after figure: photo | mesh over the photo | landmarks | the textured mesh
turned 50 degrees | the shaded mesh turned 50 degrees, all cropped around the face.

    .venv/bin/python scripts/readme_figure.py PHOTO OUT.png [--weights W.safetensors]

Uses the installed weights by default. Only publish photos you may publish (in this project:
astronaut_frontal.jpg, a NASA public-domain image)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from prn_blender.core.options import ReconstructOptions
from prn_blender.core.photo import load_photo
from prn_blender.core.pose import rotation_from_angles
from prn_blender.core.render import draw_landmarks, rasterize, render_mesh_over, shade_mesh
from prn_blender.core.result import FaceResult
from prn_blender.inference.reconstructor import Reconstructor

PANEL_PX = 256
TURN_DEG = 50.0
BACKGROUND = 235


def _face_window(landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(x0, y0, side) of a square around the landmarks, 1.8x their box, inside the photo."""
    lo, hi = landmarks[:, :2].min(0), landmarks[:, :2].max(0)
    side = int(min(1.8 * (hi - lo).max(), *shape[:2]))
    centre = (lo + hi) / 2
    x0 = int(np.clip(centre[0] - side / 2, 0, shape[1] - side))
    y0 = int(np.clip(centre[1] - side / 2, 0, shape[0] - side))
    return x0, y0, side


def _turned(face: FaceResult, side: int, turn_deg: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices in a side x side panel, rasterised triangle image, barycentrics): the mesh
    turned `turn_deg` about its own vertical axis (photo frame: x right, y down, z to camera)."""
    v = face.vertices.astype(np.float64)
    centre = np.nanmean(v, axis=0)
    rotated = (v - centre) @ rotation_from_angles(turn_deg, 0.0, 0.0).T
    extent = np.nanmax(np.abs(rotated[:, :2])) * 2.2
    panel = rotated * (side / extent)
    panel[:, :2] += side / 2
    raster = rasterize(panel, face.triangles, (side, side))
    return panel, raster.triangle, raster.barycentric


def figure(face: FaceResult, photo: np.ndarray, turn_deg: float = TURN_DEG) -> np.ndarray:
    x0, y0, side = _face_window(face.landmarks, photo.shape)

    def crop(image: np.ndarray) -> np.ndarray:
        window = image[y0 : y0 + side, x0 : x0 + side]
        return cv2.resize(window, (PANEL_PX, PANEL_PX), interpolation=cv2.INTER_AREA)

    panels = [crop(photo), crop(render_mesh_over(photo, face.vertices, face.triangles)),
              crop(draw_landmarks(photo, face.landmarks, radius_px=max(1, side // 120)))]
    # The turned mesh, textured from the UV texture and shaded.
    size = PANEL_PX * 2  # rendered at 2x, then area-downsampled: smooth edges
    vertices, triangle_img, bary = _turned(face, size, turn_deg)
    mask = triangle_img >= 0
    corners = face.triangles[triangle_img[mask]]
    uv = (face.uvs[corners] * bary[mask][:, :, None]).sum(axis=1)
    tex = face.texture
    res = tex.shape[0]
    # UV (0, 0) = bottom-left (Blender convention): texture row = (1 - v) * res.
    cols = np.clip(uv[:, 0] * res, 0, res - 1).astype(np.int64)
    rows = np.clip((1.0 - uv[:, 1]) * res, 0, res - 1).astype(np.int64)
    textured = np.full((size, size, 3), BACKGROUND, np.uint8)
    intensity, shaded_mask = shade_mesh(vertices, face.triangles, (size, size))
    light = np.clip(0.35 + 0.65 * intensity[mask], 0, 1)[:, None]
    textured[mask] = np.clip(tex[rows, cols] * light, 0, 255).astype(np.uint8)
    grey = np.full((size, size, 3), BACKGROUND, np.uint8)
    grey[shaded_mask] = np.clip(intensity[shaded_mask, None] * [200, 200, 205], 0, 255)
    for image in (textured, grey):
        panels.append(cv2.resize(image, (PANEL_PX, PANEL_PX), interpolation=cv2.INTER_AREA))
    gap = np.full((PANEL_PX, 4, 3), 255, np.uint8)
    row = [p for panel in panels for p in (panel, gap)][:-1]
    return np.concatenate(row, axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--smoothing", type=float, default=None,
                        help="surface smoothing in texels (default: ReconstructOptions')")
    parser.add_argument("--turn", type=float, default=TURN_DEG,
                        help=f"degrees to turn the mesh views (default {TURN_DEG:g})")
    parser.add_argument("--no-mirror-fill", action="store_true",
                        help="leave the unseen side's texture smeared (to compare)")
    args = parser.parse_args()
    photo = load_photo(args.photo)
    reconstructor = Reconstructor(args.weights, device="cpu")
    options = ReconstructOptions(mirror_fill=not args.no_mirror_fill)
    if args.smoothing is not None:
        options = replace(options, smoothing=args.smoothing)
    (face,) = reconstructor.reconstruct(photo, options=options)[:1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(figure(face, photo, args.turn), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} (yaw {face.pose.yaw_deg:.1f}, pitch {face.pose.pitch_deg:.1f}, "
          f"roll {face.pose.roll_deg:.1f} deg)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
