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


def _training_surfaces(product, set_name: str, faces: int):
    """(record, the product's position map, photo px) for `faces` training faces of a set,
    spread evenly over it; `product` an `evaluate.ProductLandmarks`."""
    from .evaluate import eval_box
    from .faces import iter_images
    from .point_maps import training_records

    records = training_records(set_name)
    if faces < len(records):
        records = [records[i] for i in np.linspace(0, len(records) - 1, faces).astype(int)]
    for record, (_, image) in zip(records, iter_images(records), strict=True):
        yield record, product.surface(image, eval_box(record, set_name))


def fit_readout(weights: Path, faces: int = READOUT_FACES, radius: int = READOUT_RADIUS
                ) -> tuple[np.ndarray, np.ndarray, dict[str, dict[int, tuple[float, float]]]]:
    """((68, 2) iBUG texel shifts, NaN for the jaw; (21, 2) AFLW texel shifts of their iBUG
    sources, NaN for the ears; {set: {point: (mean NME contribution at the layout's texels,
    at the fitted ones)}}) for a weights file."""
    from tqdm import tqdm

    from .evaluate import ProductLandmarks
    from .point_maps import UVShiftScores

    product = ProductLandmarks(weights, fitted_readout=False)
    layout = product.reconstructor.layout
    ibug = UVShiftScores(layout, radius, sources={k: (k,) for k in IBUG68_NON_JAW})
    for record, pm in tqdm(_training_surfaces(product, "300w", faces), total=faces,
                           desc="300W readout", unit="face"):
        ibug.add(pm, record.landmarks, np.ones(68, bool))
    aflw = UVShiftScores(layout, radius)
    for record, pm in tqdm(_training_surfaces(product, "aflw", faces), total=faces,
                           desc="AFLW readout", unit="face"):
        aflw.add(pm, record.landmarks, record.visible)
    ibug_shift, ibug_errors = ibug.best()
    aflw_shift, aflw_errors = aflw.best()
    return ibug_shift, aflw_shift, {"300w": ibug_errors, "aflw": aflw_errors}


def write_readout(weights: Path, faces: int = READOUT_FACES) -> None:
    """`fit_readout` into the weights file's metadata (tensors unchanged), with a report."""
    from ..core.layout import load_layout
    from ..net.weights import read_info, rewrite_info

    shift, aflw_shift, errors = fit_readout(weights, faces)
    shift = np.nan_to_num(shift)  # the jaw keeps the layout's texels
    for set_name, points in errors.items():
        before = np.mean([b for b, _ in points.values()])
        after = np.mean([a for _, a in points.values()])
        print(f"{set_name}: mean point error on {faces} training faces {100 * before:.2f} % at "
              f"the layout's texels -> {100 * after:.2f} % at the fitted ones")
    moved = {k: shift[k].astype(int).tolist() for k in IBUG68_NON_JAW if shift[k].any()}
    print(f"iBUG texel shifts: {moved}")
    texels = np.asarray(load_layout().landmark_texels, np.float64) + shift  # exact: whole texels
    info = dataclasses.replace(
        read_info(weights), landmark_texels=texels.tolist(),
        aflw_uv_shift=[None if np.isnan(s).any() else s.astype(int).tolist()
                       for s in aflw_shift])
    rewrite_info(weights, info)
    print(f"wrote the readout into {weights}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, required=True,
                        help="the safetensors weights file to fit and rewrite")
    parser.add_argument("--faces", type=int, default=READOUT_FACES,
                        help=f"training faces per set (default {READOUT_FACES})")
