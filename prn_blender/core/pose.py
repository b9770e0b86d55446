"""Head pose from the dense points against the layout's canonical face.

numpy only (the Blender side imports `HeadPose`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class HeadPose:
    """Similarity that maps the layout's canonical face (position-map axes, cm) onto the
    reconstructed face (photo pixels): p_photo = scale * rotation @ p_canonical + translation.

    Angles in degrees, right-handed about the photo-frame axes as seen by the camera:
    yaw > 0 turns the face towards image right, pitch > 0 tilts the chin up,
    roll > 0 rotates the face clockwise in the image.
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
