"""A weights file's own landmark readout, fitted on TRAINING faces (never dev faces):
`python -m prn_blender.training readout --weights FILE`.

The targets put each hand label exactly at its texel (a local correction on the fitted face),
but a network that has not fully learnt those corrections reproduces them only in part, so
some of its landmarks sit a few texels off on its surface (measured with the session-6
weights on 200 300W training faces: inner brow ends 2.6-4.4 % of the face apart from the
labels, the mouth corners 1.6-1.7 % left). Reading each point at the whole-texel shift, within
`READOUT_RADIUS`, that brings the product's surfaces closest to the labels corrects it. The
teachers get the same treatment in the evaluation (their AFLW and MediaPipe's 68 points are
fitted on their own outputs, point_maps.py).

* iBUG 68 (what the product reports): the 51 non-jaw points on 300W training faces. The jaw
  keeps the layout's texels: 300W's jaw is the 2D silhouette, a different place on the
  surface for every head pose, so no texel shift fits it.
* AFLW's 19 points (evaluation only): shifts of their iBUG sources on AFLW training faces,
  every pose, in place of the layout's (metrics.POINT_MAPS_FILE).

Both go into the weights file's metadata (`WeightsInfo.landmark_texels`, `.aflw_uv_shift`);
the tensors are unchanged. The surfaces are the product's (`Reconstructor.reconstruct` with
the faces' tight boxes and default options, landmarks from the layout's texels).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from .metrics import IBUG68_NON_JAW

READOUT_RADIUS = 6
"""Largest texel shift tried per axis (a texel is about 1.1 mm on the ICT face)."""
READOUT_FACES = 700
"""Training faces per set, spread evenly over it (about 4 minutes on 2 CPU cores)."""


def _training_surfaces(weights: Path, set_name: str, faces: int):
    """(records, product position maps in photo px) for `faces` training faces of a set."""
    from ..core.options import ReconstructOptions
    from ..inference.reconstructor import Reconstructor
    from .evaluate import aflw_eval_box
    from .faces import dev_names, iter_images, load_face_set

    reconstructor = Reconstructor(weights, device="cpu", allow_untrained=False)
    options = ReconstructOptions(texture_size=64, mirror_fill=False)
    dev = dev_names(set_name)
    records = [r for r in load_face_set(set_name) if r.name not in dev]
    if faces < len(records):
        records = [records[i] for i in np.linspace(0, len(records) - 1, faces).astype(int)]
    for record, (_, image) in zip(records, iter_images(records), strict=True):
        box = (np.array([*record.landmarks.min(0), *record.landmarks.max(0)])
               if set_name == "300w" else aflw_eval_box(record.size))
        face = reconstructor.reconstruct(image, boxes=[box], options=options)[0]
        yield record, face.position_map


def fit_readout(weights: Path, faces: int = READOUT_FACES, radius: int = READOUT_RADIUS
                ) -> tuple[np.ndarray, np.ndarray, dict[str, dict[int, tuple[float, float]]]]:
    """((68, 2) landmark texels, (21, 2) AFLW texel shifts with NaN ears, {set: {point: (mean
    NME contribution at the layout's texels, at the fitted ones)}}) for a weights file."""
    from tqdm import tqdm

    from ..core.layout import load_layout
    from .point_maps import UVShiftScores

    layout = load_layout()
    ibug = UVShiftScores(layout, radius, sources={k: (k,) for k in IBUG68_NON_JAW},
                         point_count=68)
    for record, pm in tqdm(_training_surfaces(weights, "300w", faces), total=faces,
                           desc="300W readout", unit="face"):
        ibug.add(pm, record.landmarks, np.ones(68, bool))
    aflw = UVShiftScores(layout, radius)
    for record, pm in tqdm(_training_surfaces(weights, "aflw", faces), total=faces,
                           desc="AFLW readout", unit="face"):
        aflw.add(pm, record.landmarks, record.visible)
    ibug_shift, ibug_errors = ibug.best()
    aflw_shift, aflw_errors = aflw.best()
    texels = np.asarray(layout.landmark_texels, np.float64) + np.nan_to_num(ibug_shift)
    return texels, aflw_shift, {"300w": ibug_errors, "aflw": aflw_errors}


def write_readout(weights: Path, faces: int = READOUT_FACES) -> None:
    """`fit_readout` into the weights file's metadata (tensors unchanged), with a report."""
    from ..core.layout import load_layout
    from ..net.weights import read_info, rewrite_info

    texels, aflw_shift, errors = fit_readout(weights, faces)
    shift = texels - load_layout().landmark_texels
    for set_name, points in errors.items():
        before = np.mean([b for b, _ in points.values()])
        after = np.mean([a for _, a in points.values()])
        print(f"{set_name}: mean point error on {faces} training faces {100 * before:.2f} % at "
              f"the layout's texels -> {100 * after:.2f} % at the fitted ones")
    moved = {k: shift[k].astype(int).tolist() for k in IBUG68_NON_JAW if shift[k].any()}
    print(f"iBUG texel shifts: {moved}")
    info = dataclasses.replace(
        read_info(weights), landmark_texels=texels.tolist(),  # layout's + whole texels, exact
        aflw_uv_shift=[None if np.isnan(s).any() else s.astype(int).tolist()
                       for s in aflw_shift])
    rewrite_info(weights, info)
    print(f"wrote the readout into {weights}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, required=True,
                        help="the safetensors weights file to fit and rewrite")
    parser.add_argument("--faces", type=int, default=READOUT_FACES,
                        help=f"training faces per set (default {READOUT_FACES})")
