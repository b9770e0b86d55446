"""In-process reconstruction: photo -> faces -> crops -> PRNet -> textured meshes + landmarks.

    from prn_blender import Reconstructor
    faces = Reconstructor().reconstruct("photo.jpg")      # list[FaceResult], largest first

Pipeline (DESIGN.md sections 0 and 3): load the photo (core.photo) -> detect faces
(inference.detect, or the caller's tight 68-landmark boxes) -> each detector box mapped to the
tight landmark box -> crop (`crop_from_box(box, LANDMARK_BOX)`, the training crop) -> PRNet
(with its mirrored copy and copies turned by -/+12 and -/+24 degrees, each uncropped, then
averaged: `ReconstructOptions.mirror_average`, `.rotation_average_deg`) -> optional
refinement (re-crop from the tight box of the predicted 68 landmarks, the box the network
was trained on, turned upright when the face is rolled, and run again) -> mesh, UVs,
texture, visibility, landmarks (at the weights file's fitted readout when it has one,
`WeightsInfo.landmark_texels`), pose.
All crops of one pass run as one batch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ..core.crop import (
    LANDMARK_BOX,
    CropTransform,
    crop_from_box,
    crop_from_landmarks,
    rotated_crop,
    uncrop_position_map,
)
from ..core.crop import warp_photo_to_crop as _warp
from ..core.geometry import landmarks_from_position_map, mesh_uvs, position_map_to_vertices
from ..core.layout import UVLayout, load_layout
from ..core.options import FaceSelection, ReconstructOptions, box_list
from ..core.photo import as_rgb_uint8, load_photo
from ..core.pose import estimate_pose, smooth_face_map
from ..core.result import FaceResult
from ..core.texture import (
    mirror_fill,
    sample_texture,
    texture_inside_mesh,
    upsample_position_map,
    visibility_mask,
)
from ..errors import NoFaceFoundError, PhotoError
from ..net.device import configure_threads
from ..net.prnet import predict_at
from ..net.weights import WeightsInfo, default_weights_path, load_prnet
from .detect import REFINE_TO_LANDMARKS, detect_faces

__all__ = ["FaceResult", "ReconstructOptions", "Reconstructor", "UntrainedWeightsWarning"]

ProgressCallback = Callable[[float, str], None]
"""progress(fraction 0..1, what is happening); may raise CancelledError to stop the job."""

REFINE_PASSES = 2
"""Refinement passes (`ReconstructOptions.refine`): each re-crops from the previous pass's
landmarks, and the surface is the mean of the two refined ones. On the 1,000 AFLW dev faces
(whose box is only implied by the storage crop; balanced NME, step-21,035 weights, mirror
averaged): first pass 7.84 %, one refinement 7.54 %, two 7.41 %, mean of the two 7.35 %; on
300W (box from the labels) 4.01 / 4.05 / 4.06 / 4.03 %. Those figures were dev faces, which
should not choose settings; re-checked on TRAINING faces in session 8 (session-8 weights, the
whole product, 150 AFLW faces per |yaw| bin and 150 300W faces; AFLW 0-30 / 30-60 / 60+ /
balanced, 300W): one pass 4.93 / 5.11 / 6.13 / 5.39 %, 3.34 %; two passes 4.85 / 5.07 / 6.16 /
5.36 %, 3.34 %; three passes 4.81 / 5.08 / 6.29 / 5.39 %, 3.36 %. Two stays."""
REFINE_MAX_SIDE_CHANGE = 2.0
"""The refinement pass is kept only if its box side is within this factor of the first box and
its centre within half a side of it (guards against a network that missed the face)."""
REFINE_UPRIGHT_MAX_YAW_DEG = 60.0
"""The refinement crop is turned upright by the head pose's roll only while the pose's |yaw|
is at most this; beyond it the crop stays axis-aligned like the first pass's (and like the
training crops). Near profile, roll and pitch are almost the same rotation (yaw-pitch-roll's
gimbal lock at 90 degrees of yaw), so the estimated roll is unreliable there. Measured with
the session-7 weights on TRAINING faces (200 AFLW faces per |yaw| bin, balanced-NME protocol;
100 300W faces rolled in the image plane), NME %:

=====================  ============  ======  =====  ===========  ===========
refinement crop        AFLW 60+      30-60   0-30   300W rolled  300W rolled
                                                    30 degrees   60 degrees
=====================  ============  ======  =====  ===========  ===========
always upright (was)   8.41          5.53    4.89   2.85         3.64
upright to |yaw| 45    6.53          5.53           2.84         3.97
upright to |yaw| 60    6.60          5.54                        3.64
upright to |yaw| 75    6.64          5.53
never upright          6.52          5.49    4.85   3.20         7.75
no refinement at all   6.85
=====================  ============  ======  =====  ===========  ===========

On the profiles, the turned crops made the heavy tail: 95th percentile 24.7 % (always
upright) against 12.1 % (never upright)."""
MIN_FACE_BOX_PX = 4.0
FORWARD_CHUNK = 32
"""Crops per network call (each may be run mirrored too): bounds memory for crowd photos."""


class UntrainedWeightsWarning(UserWarning):
    """The weights file holds an untrained network: every result is meaningless."""


class Reconstructor:
    """Holds the network (loaded once) and the UV layout.

    weights: a .safetensors file or its folder; None = the installed weights (raises
    WeightsError naming the training command when there are none). device: "auto" (CUDA >
    MPS > CPU), "cpu", "cuda", "mps". layout: a UVLayout or its .npz path (None = shipped).
    threads: torch CPU threads (process-wide; None = torch's default). allow_untrained: accept
    an untrained weights file (tests, smoke runs) with a loud UntrainedWeightsWarning and
    `trained` False; False refuses it with a WeightsError."""

    def __init__(
        self, weights: str | os.PathLike[str] | None = None, device: str = "auto",
        layout: UVLayout | str | os.PathLike[str] | None = None, threads: int | None = None,
        *, allow_untrained: bool = True,
    ) -> None:
        self.layout = layout if isinstance(layout, UVLayout) else load_layout(layout)
        configure_threads(threads)
        self.weights_path: Path = default_weights_path(weights)
        self.model, self.weights_info = load_prnet(
            self.weights_path, device, expected_layout_id=self.layout.layout_id,
            allow_untrained=allow_untrained,
        )
        self.device: torch.device = next(self.model.parameters()).device
        self._uvs = mesh_uvs(self.layout)
        # Where these weights put the 68 landmarks (fitted on training faces), else the layout's.
        self.landmark_texels = self.weights_info.readout_texels(self.layout.landmark_texels)
        if not self.trained:
            warnings.warn(
                f"UNTRAINED WEIGHTS: '{self.weights_path.name}' holds an untrained network; "
                "every mesh and landmark it produces is meaningless. Use it for plumbing tests "
                "only; train real weights with `python -m prn_blender.training train`.",
                UntrainedWeightsWarning, stacklevel=2,
            )

    @property
    def _texels_per_output(self) -> float:
        """Layout texels per network output texel: 2 for weights that run at 128 px."""
        return self.layout.resolution / (self.weights_info.input_size or self.layout.resolution)

    @property
    def trained(self) -> bool:
        """False when the weights file says its network was never trained."""
        return bool(self.weights_info.trained)

    @property
    def device_name(self) -> str:
        """"cpu", "cuda" or "mps"."""
        return self.device.type

    @property
    def info(self) -> WeightsInfo:
        return self.weights_info

    def warm_up(self) -> None:
        """One forward pass on a blank crop, so the first real photo does not pay for kernel
        selection and memory setup."""
        r = self.layout.resolution
        self._forward(np.zeros((1, r, r, 3), dtype=np.uint8))

    # ------------------------------------------------------------------ public
    def reconstruct(
        self, image: str | os.PathLike[str] | np.ndarray,
        boxes: Sequence[Sequence[float]] | None = None,
        options: ReconstructOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[FaceResult]:
        """Faces of one photo. image: a path or an (H, W, 3) uint8 RGB array. boxes: tight
        68-landmark boxes (x0, y0, x1, y1) in photo pixels (skips detection; every box is
        reconstructed, in the given order; one flat box counts as a list of one); None =
        `options.boxes`, else detect: `options.faces` chooses the largest detected face or
        all, returned largest first by their final (refined) boxes. Raises PhotoError,
        NoFaceFoundError, CancelledError (from `progress`)."""
        options = options or ReconstructOptions()
        report = progress or (lambda fraction, message: None)
        report(0.0, "Reading the photo")
        if isinstance(image, str | os.PathLike):
            name = Path(image).name
            photo = load_photo(image)
        else:
            name = "the image"
            photo = as_rgb_uint8(image, "image")
        if boxes is None:
            boxes = options.boxes
        if boxes is not None:
            try:
                tight = [_checked_box(box, photo.shape, name) for box in box_list(boxes)]
            except ValueError as error:
                raise PhotoError(f"{error}. Give face boxes as [(x0, y0, x1, y1), ...] in "
                                 "photo pixels.") from None
        else:
            report(0.1, "Detecting faces")
            detections = detect_faces(photo, options.detector, options.yunet_model,
                                      all_faces=options.faces == FaceSelection.ALL)
            if not detections:
                raise NoFaceFoundError(
                    f"No face found in '{name}'. Use a photo where the face is clearly visible, "
                    "at least about 60 pixels wide and not cut off by the frame; or draw a face "
                    "box; or try the YuNet detector, which finds more turned faces.")
            tight = [d.box for d in detections]
            if options.faces == FaceSelection.LARGEST:
                tight = tight[:1]
        if not tight:
            return []
        report(0.3, f"Reconstructing {len(tight)} face{'s' if len(tight) > 1 else ''}")
        r = self.layout.resolution
        mirror = options.mirror_average and self.layout.is_mirror_symmetric
        turns = options.rotation_turns_deg
        maps = self._predict(photo, [crop_from_box(box, LANDMARK_BOX, r) for box in tight],
                             mirror, turns)
        if options.refine:
            # Each pass re-crops from the last one's landmarks; the result is the mean of the
            # last two refined surfaces (same texels, photo px), see REFINE_PASSES.
            refined_maps: list[list[np.ndarray]] = [[] for _ in maps]
            for attempt in range(REFINE_PASSES):
                report(0.45 + 0.05 * attempt, "Refining the crop from the face's landmarks")
                refined = [self._refined_crop(pm, box)
                           for pm, box in zip(maps, tight, strict=True)]
                redo = [i for i, crop in enumerate(refined) if crop is not None]
                if not redo:
                    break
                again = self._predict(photo, [refined[i][1] for i in redo], mirror, turns)
                for i, pm in zip(redo, again, strict=True):
                    maps[i], tight[i] = pm, refined[i][0]
                    refined_maps[i].append(pm)
            for i, passes in enumerate(refined_maps):
                if len(passes) >= 2:
                    maps[i] = 0.5 * (passes[-2] + passes[-1])
        results = []
        for index, (pm, box) in enumerate(zip(maps, tight, strict=True)):
            report(0.6 + 0.35 * index / len(maps), "Sampling the texture")
            results.append(self._result(photo, pm, box, options))
        if boxes is None:  # detected: largest first by the final (refined) box
            results.sort(key=lambda result: -_side(result.box))
        report(0.95, "Done")
        return results

    # ------------------------------------------------------------------ internals
    def _forward(self, crops: np.ndarray, mirror_average: bool = False) -> np.ndarray:
        """(N, R, R, 3) uint8 RGB crops -> (N, R, R, 3) float32 position maps, crop px;
        `mirror_average`: see ReconstructOptions."""
        out = []
        # In chunks: a crowd photo turns into hundreds of crops (x turns x mirror copies).
        for start in range(0, len(crops), FORWARD_CHUNK):
            x = torch.from_numpy(crops[start:start + FORWARD_CHUNK]).to(self.device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                y = predict_at(self.model, x, self.weights_info.input_size or None,
                               mirror_average)
            out.append(y.permute(0, 2, 3, 1).float().cpu().numpy())
        return np.concatenate(out)

    def _predict(self, photo: np.ndarray, transforms: list[CropTransform],
                 mirror_average: bool = False, turns_deg: tuple[float, ...] = (0.0,)
                 ) -> list[np.ndarray]:
        """Position maps in photo pixels, one per crop: the mean over each crop turned about
        its centre by each of `turns_deg` (one batch; `ReconstructOptions.rotation_turns_deg`),
        each surface uncropped to the photo first."""
        views = [rotated_crop(t, a) if a else t for t in transforms for a in turns_deg]
        # Reflected borders, as in training: crops never show black edges.
        crops = np.stack([_warp(photo, t, cv2.BORDER_REFLECT101) for t in views])
        maps = self._forward(crops, mirror_average)
        photo_maps = [uncrop_position_map(pm, t) for pm, t in zip(maps, views, strict=True)]
        k = len(turns_deg)
        return [np.mean(photo_maps[i * k : (i + 1) * k], axis=0, dtype=np.float32)
                for i in range(len(transforms))]

    def _refined_crop(self, position_map: np.ndarray, box: np.ndarray
                      ) -> tuple[np.ndarray, CropTransform] | None:
        """(tight box, crop) from the predicted 68 landmarks (box through REFINE_TO_LANDMARKS;
        crop upright when the face is rolled, core.crop.crop_from_landmarks, roll from the
        head pose), or None when the box is not plausible next to the first one."""
        # The layout's texels, not a fitted readout: REFINE_TO_LANDMARKS was measured on them.
        lm = landmarks_from_position_map(position_map, self.layout)[:, :2]
        if not np.isfinite(lm).all():
            return None
        new = REFINE_TO_LANDMARKS.apply(np.array([*lm.min(axis=0), *lm.max(axis=0)]))
        side_old = _side(box)
        side_new = _side(new)
        shift = np.hypot(*((new[:2] + new[2:]) - (box[:2] + box[2:])) / 2.0)
        if not (side_new >= MIN_FACE_BOX_PX
                and 1 / REFINE_MAX_SIDE_CHANGE <= side_new / side_old <= REFINE_MAX_SIDE_CHANGE
                and shift <= 0.5 * side_old):
            return None
        # Roll from the whole surface's pose: the eye line is unreliable on turned faces.
        pose = estimate_pose(position_map_to_vertices(position_map, self.layout), self.layout)
        upright = abs(pose.yaw_deg) <= REFINE_UPRIGHT_MAX_YAW_DEG
        crop = crop_from_landmarks(lm, LANDMARK_BOX, self.layout.resolution,
                                   box_mapping=REFINE_TO_LANDMARKS.apply,
                                   roll_deg=pose.roll_deg if upright else 0.0)
        return new, crop

    def _result(self, photo: np.ndarray, pm: np.ndarray, box: np.ndarray,
                options: ReconstructOptions) -> FaceResult:
        layout = self.layout
        if options.smoothing > 0:  # sigma in network output texels (ReconstructOptions)
            pm = smooth_face_map(pm, layout, options.smoothing * self._texels_per_output)
        vertices = position_map_to_vertices(pm, layout)
        upsampled = upsample_position_map(pm, layout, options.texture_size)
        texture = sample_texture(photo, pm, layout, options.texture_size, upsampled)
        mask = None
        fill = options.mirror_fill and layout.is_mirror_symmetric
        if fill or options.occlusion_mask:
            mask = visibility_mask(pm, layout, photo.shape, options.texture_size,
                                   upsampled=upsampled)
            if fill:
                texture, mask = mirror_fill(texture, mask, pm, layout)
            if options.occlusion_mask:  # the edge extension outside the mesh stays
                hidden = (mask == 0) & texture_inside_mesh(layout, options.texture_size)
                texture = np.where(hidden[:, :, None], 0, texture).astype(np.uint8)
            else:
                mask = None
        return FaceResult(
            vertices=vertices,
            triangles=layout.triangles,
            uvs=self._uvs,
            texture=texture,
            texture_mask=mask,
            # From the surface the artist gets, so the empties sit on the mesh (and, measured
            # on the dev faces, slightly closer to the labels: options.SMOOTHING_TEXELS).
            landmarks=landmarks_from_position_map(pm, layout, texels=self.landmark_texels
                                                  ).astype(np.float32),
            pose=estimate_pose(vertices, layout),
            box=np.asarray(box, dtype=np.float32),
            position_map=np.asarray(pm, dtype=np.float32),
            photo_size=(int(photo.shape[1]), int(photo.shape[0])),
            layout_id=layout.layout_id,
        )


def _side(box: np.ndarray) -> float:
    return float((box[2] - box[0] + box[3] - box[1]) / 2.0)


def _checked_box(box: Sequence[float], shape: tuple[int, ...], name: str) -> np.ndarray:
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape != (4,) or not np.isfinite(b).all() or not (b[2] > b[0] and b[3] > b[1]):
        raise PhotoError(f"The face box {tuple(b.tolist())} is not (x0, y0, x1, y1) with x1 > x0 "
                         "and y1 > y0, in photo pixels. Redraw the box.")
    h, w = shape[:2]
    if b[2] < 0 or b[3] < 0 or b[0] > w - 1 or b[1] > h - 1:
        raise PhotoError(f"The face box {tuple(np.round(b, 1))} lies outside '{name}' "
                         f"({w} x {h} pixels). Redraw the box on the photo.")
    if not MIN_FACE_BOX_PX <= _side(b) <= 2.0 * max(w, h):
        raise PhotoError(f"The face box {tuple(np.round(b, 1))} is {_side(b):.1f} pixels across; "
                         f"a face box is {MIN_FACE_BOX_PX:g} px to twice the photo's longer side "
                         f"({2 * max(w, h)} px). Draw it around the eyebrows, eyes, nose, mouth "
                         "and jaw.")
    return b
