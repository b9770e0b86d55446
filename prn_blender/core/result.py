"""The result of reconstructing one face: what `Reconstructor.reconstruct` returns, what the
worker sends back (as .npz) and what the Blender side turns into a scene. numpy only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .frames import metres_per_pixel
from .pose import HeadPose


@dataclass(frozen=True, eq=False)
class FaceResult:
    """One reconstructed face. Frames: photo pixels, x right, y down, z = depth towards the
    camera in pixels (larger = closer; its zero is the network's, not the face's nearest or
    farthest point: compare z values, don't read them as distances). See core.frames for the
    Blender conversion."""

    vertices: np.ndarray
    """(N, 3) float32 photo pixels, one per mesh texel (layout.face_texels)."""
    triangles: np.ndarray
    """(T, 3) int32 indices into vertices; outward winding in the Blender frame."""
    uvs: np.ndarray
    """(N, 2) float32 UV of each vertex (v up)."""
    texture: np.ndarray
    """(S, S, 3) uint8 RGB: the photo sampled into UV space (row 0 = v 1, the top)."""
    texture_mask: np.ndarray | None
    """(S, S) uint8 visibility, 255 = seen by the camera; None unless requested."""
    landmarks: np.ndarray
    """(68, 3) float32 photo pixels, iBUG order, calibrated (benchmark-compatible) set."""
    pose: HeadPose
    box: np.ndarray
    """(4,) float32 tight face box (x0, y0, x1, y1) in photo pixels: the box of the last crop
    (after refinement, the axis-aligned box of the predicted 68 landmarks; a rolled face's
    crop is turned upright about it)."""
    position_map: np.ndarray
    """(R, R, 3) float32 the uncropped position map, photo pixels."""
    photo_size: tuple[int, int]
    """(width, height) of the photo in pixels (after EXIF orientation)."""
    layout_id: str

    @property
    def metres_per_px(self) -> float:
        """Assumed-adult-face scale: outer eye corners 9 cm apart (DESIGN.md section 3)."""
        return metres_per_pixel(self.landmarks)

    def save_npz(self, path: str | os.PathLike[str]) -> None:
        """Write every field to an uncompressed .npz (no pickle)."""
        arrays: dict[str, np.ndarray] = {
            "vertices": self.vertices,
            "triangles": self.triangles,
            "uvs": self.uvs,
            "texture": self.texture,
            "landmarks": self.landmarks,
            "box": self.box,
            "position_map": self.position_map,
            "photo_size": np.asarray(self.photo_size, dtype=np.int64),
            "layout_id": np.asarray(self.layout_id),
            "pose_angles_deg": np.asarray(
                [self.pose.yaw_deg, self.pose.pitch_deg, self.pose.roll_deg], dtype=np.float64
            ),
            "pose_rotation": self.pose.rotation,
            "pose_scale": np.asarray(self.pose.scale, dtype=np.float64),
            "pose_translation": self.pose.translation,
        }
        if self.texture_mask is not None:
            arrays["texture_mask"] = self.texture_mask
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load_npz(cls, path: str | os.PathLike[str]) -> FaceResult:
        with np.load(path, allow_pickle=False) as d:
            yaw, pitch, roll = (float(a) for a in d["pose_angles_deg"])
            pose = HeadPose(
                yaw_deg=yaw,
                pitch_deg=pitch,
                roll_deg=roll,
                rotation=np.array(d["pose_rotation"]),
                scale=float(d["pose_scale"]),
                translation=np.array(d["pose_translation"]),
            )
            width, height = (int(v) for v in d["photo_size"])
            return cls(
                vertices=np.array(d["vertices"]),
                triangles=np.array(d["triangles"]),
                uvs=np.array(d["uvs"]),
                texture=np.array(d["texture"]),
                texture_mask=np.array(d["texture_mask"]) if "texture_mask" in d else None,
                landmarks=np.array(d["landmarks"]),
                pose=pose,
                box=np.array(d["box"]),
                position_map=np.array(d["position_map"]),
                photo_size=(width, height),
                layout_id=str(d["layout_id"]),
            )
