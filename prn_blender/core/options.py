"""Options of one reconstruction: filled by the Blender operator, the CLI or Python callers.

Plain data (JSON-able), numpy-free: it crosses the worker's JSON-lines boundary as a dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from numbers import Real
from typing import Any


class FaceSelection(StrEnum):
    """Which detected faces to reconstruct."""

    LARGEST = "largest"
    ALL = "all"


class Detector(StrEnum):
    """Face detector. AUTO = YuNet (shipped in model_weights/, or `yunet_model`), else Haar."""

    AUTO = "auto"
    HAAR = "haar"
    YUNET = "yunet"


SMOOTHING_TEXELS = 1.5
"""Default `ReconstructOptions.smoothing`. The shipped (still undertrained) weights leave
texel-level ripples on the surface; sigma 1.5 removes them (docs/images), and measured on 28
training crops it also brings the mesh slightly closer to the targets (RMS 3D error 29.75 ->
29.11 px of a 256 px crop). The landmarks are read from the smoothed surface, so they sit on
the mesh; with the session-5 weights that also scored better on the dev faces through the
product pipeline (300W 3.88 -> 3.78 %, AFLW balanced 6.86 -> 6.85 %; sigma 3: 3.80 / 6.84 %)."""


ROTATION_AVERAGE_DEG = 24.0
"""Default `ReconstructOptions.rotation_average_deg` (test-time augmentation). The network's
errors change with the face's roll in the crop, so the mean over rolled crops is closer to the
truth. Chosen on training faces of each labelled set (product pipeline, NME %), never on the
dev split. Session 6 (session-6 weights, 300 faces per set):

    turns                       AFLW balanced   300W
    none                        6.53            3.60
    +/-8                        6.25            3.54
    +/-15                       6.22            3.50
    +/-20                       6.19            3.51
    +/-10 and +/-20 (5 crops)   6.13            3.49
    +/-15, refinement only      6.47            3.54

Session 9 (session-8 weights; 120 AFLW faces per |yaw| bin, 120 300W faces):

    turns                           AFLW balanced   300W
    +/-15 (the default until then)  5.397           3.263
    +/-10, +/-20                    5.355           3.194
    +/-12, +/-24 (default)          5.342           3.183
    +/-15, +/-30                    5.349           3.172
    +/-8, +/-16, +/-24 (7 crops)    5.339           3.188

Turning the first pass's crop matters most on AFLW profiles, where that pass places the box.
"""
ROTATION_AVERAGE_STEPS = 2
"""Default `ReconstructOptions.rotation_average_steps`: turns per side (ROTATION_AVERAGE_DEG)."""


def box_list(boxes: object) -> tuple[tuple[float, ...], ...]:
    """Face boxes as a tuple of float tuples; one box given flat, (x0, y0, x1, y1), counts as
    a list of one. Raises ValueError for anything that is not a list of 4 numbers each."""
    try:
        items = list(boxes)  # type: ignore[call-overload]
        if len(items) == 4 and all(isinstance(v, Real) for v in items):
            items = [items]
        out = tuple(tuple(float(v) for v in box) for box in items)
    except (TypeError, ValueError):
        raise ValueError(f"face boxes must be (x0, y0, x1, y1) numbers, got {boxes!r}") from None
    return out


@dataclass(frozen=True)
class ReconstructOptions:
    """What to compute for one photo. Boxes, when given, skip detection: tight face boxes
    (x0, y0, x1, y1) of the 68 landmarks in photo pixels (DESIGN.md section 3)."""

    faces: FaceSelection = FaceSelection.LARGEST
    texture_size: int = 1024
    """Side of the UV texture sampled from the photo, in pixels (a whole number, 64-8192)."""
    occlusion_mask: bool = False
    """Black out texels the camera cannot see (self-occlusion) instead of smearing the photo;
    with `mirror_fill`, only those whose mirror image it cannot see either."""
    mirror_fill: bool = True
    """Texture the side of the face the camera cannot see (a turned head's far cheek) from its
    mirror image on the seen side (`core.texture.mirror_fill`) instead of smearing the photo
    across it. Ignored for a layout that is not mirror-symmetric."""
    boxes: tuple[tuple[float, float, float, float], ...] | None = None
    detector: Detector = Detector.AUTO
    yunet_model: str | None = None
    """Path to YuNet's ONNX file (face_detection_yunet_2023mar.onnx); None = the shipped copy."""
    refine: bool = True
    """Refinement: re-crop from the network's own 68 landmarks (the crop it was trained on),
    twice, and average the two refined surfaces (`inference.reconstructor.REFINE_PASSES`)."""
    mirror_average: bool = True
    """Also run the left-right mirrored crop and average the two surfaces (twice the network
    time; dev NME 8.55 -> 8.19 % on AFLW, 4.57 -> 4.24 % on 300W with the session-4
    weights). Ignored for a layout that is not mirror-symmetric."""
    rotation_average_deg: float = ROTATION_AVERAGE_DEG
    """Also run every crop turned in the image plane by up to -/+ this angle (degrees;
    `rotation_average_steps` turns per side, evenly spaced) and average the surfaces in photo
    space (1 + 2 x steps times the network time; 0 = off). See ROTATION_AVERAGE_DEG."""
    rotation_average_steps: int = ROTATION_AVERAGE_STEPS
    """Turns per side for `rotation_average_deg` (1-4): 2 turns by -/+ half the angle and
    -/+ the whole angle."""
    smoothing: float = SMOOTHING_TEXELS
    """Gaussian smoothing of the predicted surface (mesh, texture lookup, pose), sigma in
    texels of the network's output (0 = the raw output): UV texels for weights that run at
    the layout's 256 px, twice that for weights that run at 128 px (`WeightsInfo.input_size`),
    whose ripples are twice as wide. The landmarks are read from the smoothed surface."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "smoothing", float(self.smoothing))
        object.__setattr__(self, "rotation_average_deg", float(self.rotation_average_deg))
        if not 0.0 <= self.rotation_average_deg <= 45.0:
            raise ValueError("rotation_average_deg must be 0..45 degrees, "
                             f"got {self.rotation_average_deg}")
        object.__setattr__(self, "rotation_average_steps", int(self.rotation_average_steps))
        if not 1 <= self.rotation_average_steps <= 4:
            raise ValueError("rotation_average_steps must be 1..4, "
                             f"got {self.rotation_average_steps}")
        if not 0.0 <= self.smoothing <= 8.0:
            raise ValueError(f"smoothing must be 0..8 texels, got {self.smoothing}")
        size = self.texture_size
        if isinstance(size, bool) or not isinstance(size, Real) \
                or not float(size).is_integer() or not 64 <= size <= 8192:
            raise ValueError(f"texture_size must be a whole number of pixels, 64..8192, got "
                             f"{size!r}")
        object.__setattr__(self, "texture_size", int(size))
        object.__setattr__(self, "faces", FaceSelection(self.faces))
        object.__setattr__(self, "detector", Detector(self.detector))
        if self.boxes is not None:
            boxes = box_list(self.boxes)
            for box in boxes:
                if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
                    raise ValueError(f"a face box must be (x0, y0, x1, y1), x1>x0, y1>y0: {box}")
            object.__setattr__(self, "boxes", boxes)

    @property
    def rotation_turns_deg(self) -> tuple[float, ...]:
        """The in-plane turns each crop is run at, degrees: 0 first, then -/+ each step."""
        if self.rotation_average_deg <= 0:
            return (0.0,)
        n = self.rotation_average_steps
        steps = [self.rotation_average_deg * k / n for k in range(1, n + 1)]
        return (0.0, *[sign * a for a in steps for sign in (-1.0, 1.0)])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["faces"] = self.faces.value
        data["detector"] = self.detector.value
        if self.boxes is not None:
            data["boxes"] = [list(box) for box in self.boxes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReconstructOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown reconstruct option(s): {sorted(unknown)}")
        values = dict(data)
        if values.get("boxes") is not None:
            values["boxes"] = tuple(tuple(box) for box in values["boxes"])
        return cls(**values)
