"""Head pose from the dense points against the layout's canonical face.

numpy only (the Blender side imports `HeadPose`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import UVLayout


@dataclass(frozen=True, eq=False)
class HeadPose:
    """Similarity that maps the layout's canonical face (position-map axes, cm) onto the
    reconstructed face (photo pixels): p_photo = scale * rotation @ p_canonical + translation.

    Angles in degrees, right-handed about the photo-frame axes as seen by the camera:
    yaw > 0 turns the face towards image right, pitch > 0 tilts the chin up,
    roll > 0 rotates the face clockwise in the image. Exactly:
    rotation = Rz(roll) @ Ry(yaw) @ Rx(pitch) (see `rotation_from_angles`).
    """

    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    rotation: np.ndarray
    """(3, 3) float64 proper rotation (det +1) in photo axes."""
    scale: float
    """photo pixels per canonical centimetre."""
    translation: np.ndarray
    """(3,) float64 photo pixels."""


def umeyama_similarity(
    source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity without reflection (Umeyama 1991): target ~ s R source + t,
    optionally with per-point weights (the weighted means and covariance of the same solution).

    source, target: (N, D) corresponding points, D = 3 (or 2 for the image plane; rows with a
    non-finite value or a zero weight are ignored); weights: (N,) >= 0 or None.
    Returns (s, R (D, D) float64 with det +1, t (D,) float64)."""
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    ok = np.isfinite(src).all(axis=1) & np.isfinite(dst).all(axis=1)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        ok &= np.isfinite(w) & (w > 0)  # zero-weight points must not count towards the 3
        w = w[ok]
    src, dst = src[ok], dst[ok]
    if src.shape[0] < 3:
        raise ValueError(f"a similarity needs at least 3 finite point pairs, got {src.shape[0]}")
    if weights is None:
        mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
        xs, xd = src - mu_s, dst - mu_d
        cov = xd.T @ xs / src.shape[0]
        var_s = (xs**2).sum() / src.shape[0]
    else:
        w = w / w.sum()
        mu_s, mu_d = w @ src, w @ dst
        xs, xd = src - mu_s, dst - mu_d
        cov = (xd * w[:, None]).T @ xs
        var_s = float((w * (xs**2).sum(axis=1)).sum())
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(src.shape[1])
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = (u * d) @ vt
    scale = float((sigma * d).sum() / max(var_s, 1e-12))
    translation = mu_d - scale * rotation @ mu_s
    return scale, rotation, translation


def rotation_from_angles(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """(3, 3) rotation in photo axes (x right, y down, z towards the camera):
    R = Rz(roll) @ Ry(yaw) @ Rx(pitch), i.e. pitch about the camera's x axis first, then yaw
    about its vertical axis, then roll in the image plane, with

    Rx(a) = [[1, 0, 0], [0, cos a, -sin a], [0, sin a, cos a]]  (pitch > 0: chin up),
    Ry(a) = [[cos a, 0, sin a], [0, 1, 0], [-sin a, 0, cos a]]  (yaw > 0: nose to image right),
    Rz(a) = [[cos a, -sin a, 0], [sin a, cos a, 0], [0, 0, 1]]  (roll > 0: clockwise on screen).
    """
    p, y, r = np.deg2rad([pitch_deg, yaw_deg, roll_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def angles_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) degrees of a rotation in the convention of `rotation_from_angles`.

    Yaw is in [-90, 90]; pitch and roll in (-180, 180]. At yaw = +-90 deg (gimbal lock) roll
    is set to 0 and the whole in-plane part goes to pitch."""
    m = np.asarray(rotation, dtype=np.float64)
    # Third row of Rz Ry Rx is (-sin yaw, cos yaw sin pitch, cos yaw cos pitch).
    yaw = np.arcsin(np.clip(-m[2, 0], -1.0, 1.0))
    if np.cos(yaw) > 1e-6:
        pitch = np.arctan2(m[2, 1], m[2, 2])
        roll = np.arctan2(m[1, 0], m[0, 0])
    else:  # gimbal lock: R = Rz(roll) Ry(+-90) Rx(pitch) depends on pitch -+ roll only
        roll = 0.0
        pitch = np.arctan2(-m[1, 2], m[1, 1])
    return float(np.rad2deg(yaw)), float(np.rad2deg(pitch)), float(np.rad2deg(roll))


def estimate_pose(vertices: np.ndarray, layout: UVLayout) -> HeadPose:
    """Head pose of a reconstructed face: the similarity (Umeyama, no reflection) from
    `layout.canonical_vertices` (neutral ICT face, position-map axes, cm) onto `vertices`
    ((N, 3) photo pixels, x right, y down, z towards the camera; one per mesh texel, as from
    `geometry.position_map_to_vertices`). Angles follow `rotation_from_angles`: a frontal,
    upright face is (0, 0, 0). Rows with NaN are ignored."""
    v = np.asarray(vertices, dtype=np.float64)
    if v.shape != layout.canonical_vertices.shape:
        raise ValueError(
            f"vertices must be one per mesh texel {layout.canonical_vertices.shape}, got {v.shape}"
        )
    scale, rotation, translation = umeyama_similarity(layout.canonical_vertices, v)
    yaw, pitch, roll = angles_from_rotation(rotation)
    return HeadPose(yaw, pitch, roll, rotation, scale, translation)


def smooth_face_map(position_map: np.ndarray, layout: UVLayout,
                    sigma_texels: float) -> np.ndarray:
    """`geometry.smooth_position_map` over the mesh texels of a face's position map ((R, R, 3)
    photo px), smoothing only its difference to the posed mean face (`layout.
    canonical_vertices` moved by `estimate_pose`), so the face's outline does not shrink."""
    from .geometry import position_map_to_vertices, smooth_position_map

    pm = np.asarray(position_map, dtype=np.float32)
    if sigma_texels <= 0:
        return pm.copy()
    pose = estimate_pose(position_map_to_vertices(pm, layout), layout)
    posed = (pose.scale * layout.canonical_vertices @ np.asarray(pose.rotation).T
             + pose.translation)
    base = np.full_like(pm, np.nan)
    base.reshape(-1, 3)[layout.face_texels] = posed
    mesh = np.zeros(pm.shape[:2], dtype=bool)
    mesh.reshape(-1)[layout.face_texels] = True
    return smooth_position_map(pm, mesh, sigma_texels, base)


def frontalize(vertices: np.ndarray, pose: HeadPose) -> np.ndarray:
    """Undo the head rotation about the pose's origin, keeping scale and position:
    p' = R^T (p - t) + t, so a face that is s R q + t becomes s q + t (the canonical face's
    orientation: frontal, upright). (N, 3) photo pixels in and out (float32)."""
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(pose.translation, dtype=np.float64)
    return ((v - t) @ np.asarray(pose.rotation, dtype=np.float64) + t).astype(np.float32)
