"""Fixtures for the Blender tests (real bpy 5.0.1, headless).

* Every test starts from a fresh default scene (`wm.read_homefile(app_template="")`).
* The add-on is enabled once per session as a legacy add-on (`addon_utils.enable`).
* `synthetic_face`: the real ICT layout's neutral face rasterised into a position map and placed
  in a 640 x 480 photo at a known similarity (photo px = PX_PER_CM * ICT cm, upright, frontal),
  so every vertex and landmark position is known exactly.
* `untrained_weights`: a randomly initialised PRNet saved to a temporary .safetensors file
  (WeightsInfo(trained=False)); the worker accepts it, the results are garbage shapes, which is
  enough to check the plumbing between photo, worker and scene.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from prn_blender.core.geometry import (  # noqa: E402
    landmarks_from_position_map,
    mesh_uvs,
    position_map_from_mesh,
    position_map_to_vertices,
)
from prn_blender.core.layout import UVLayout, load_layout  # noqa: E402
from prn_blender.core.pose import estimate_pose  # noqa: E402
from prn_blender.core.result import FaceResult  # noqa: E402
from prn_blender.errors import LayoutError  # noqa: E402

PHOTO_SIZE = (640, 480)
PX_PER_CM = 6.0
"""Synthetic photo scale: 6 px per ICT centimetre."""
FACE_CENTRE_PX = (300.0, 260.0)
"""Where the ICT origin lands in the synthetic photo (x, y)."""
TEXTURE_SIZE = 256

HAS_RECONSTRUCTOR = importlib.util.find_spec("prn_blender.inference.reconstructor") is not None
needs_reconstructor = pytest.mark.skipif(
    not HAS_RECONSTRUCTOR, reason="prn_blender.inference.reconstructor not written yet")


@pytest.fixture(scope="session")
def layout() -> UVLayout:
    try:
        return load_layout()
    except LayoutError as error:
        pytest.skip(f"layout file missing: {error}")


def make_synthetic_result(layout: UVLayout, *, offset_px: tuple[float, float] = (0.0, 0.0),
                          with_mask: bool = False) -> FaceResult:
    """The ICT neutral at a known similarity in a PHOTO_SIZE photo (see module docstring)."""
    neutral_cm = np.asarray(layout.ict_neutral, dtype=np.float64)  # +Y up, +Z to the viewer
    cx, cy = FACE_CENTRE_PX[0] + offset_px[0], FACE_CENTRE_PX[1] + offset_px[1]
    photo = np.empty_like(neutral_cm)
    photo[:, 0] = cx + PX_PER_CM * neutral_cm[:, 0]
    photo[:, 1] = cy - PX_PER_CM * neutral_cm[:, 1]
    photo[:, 2] = PX_PER_CM * (neutral_cm[:, 2] - neutral_cm[:, 2].min())
    position_map = position_map_from_mesh(photo, layout)
    vertices = position_map_to_vertices(position_map, layout)
    landmarks = landmarks_from_position_map(position_map, layout)
    # Texture: red = u, green = v, blue = 128, so pixel checks know what to expect.
    ramp = np.linspace(0, 255, TEXTURE_SIZE).round().astype(np.uint8)
    texture = np.empty((TEXTURE_SIZE, TEXTURE_SIZE, 3), dtype=np.uint8)
    texture[:, :, 0] = ramp[None, :]
    texture[:, :, 1] = ramp[::-1, None]  # row 0 = top = v 1
    texture[:, :, 2] = 128
    mask = None
    if with_mask:
        mask = np.zeros((TEXTURE_SIZE, TEXTURE_SIZE), dtype=np.uint8)
        mask[:, : TEXTURE_SIZE // 2] = 255
    lm2 = landmarks[:, :2]
    box = np.array([*lm2.min(axis=0), *lm2.max(axis=0)], dtype=np.float32)
    return FaceResult(
        vertices=vertices, triangles=np.asarray(layout.triangles, dtype=np.int32),
        uvs=mesh_uvs(layout), texture=texture, texture_mask=mask, landmarks=landmarks,
        pose=estimate_pose(vertices, layout), box=box, position_map=position_map,
        photo_size=PHOTO_SIZE, layout_id=layout.layout_id,
    )


def render_synthetic_photo(result: FaceResult, path: Path) -> Path:
    """Draw `result` as a photo (the core's z-buffer rasteriser, Lambert-shaded skin, dark eyes
    and brows, red lips at its landmarks) and write it to `path` (PNG). Needs OpenCV."""
    cv2 = pytest.importorskip("cv2")
    from prn_blender.core.render import shade_mesh

    width, height = result.photo_size
    intensity, mask = shade_mesh(result.vertices, result.triangles, (height, width))
    image = np.full((height, width, 3), 60, dtype=np.uint8)
    skin = np.array([224, 172, 140], dtype=np.float32)
    image[mask] = np.clip(intensity[mask, None] * skin, 0, 255).astype(np.uint8)
    lm = np.round(result.landmarks[:, :2]).astype(np.int32)
    for eye in (lm[36:42], lm[42:48]):
        cv2.fillPoly(image, [eye], (30, 25, 20))
    for brow in (lm[17:22], lm[22:27]):
        cv2.polylines(image, [brow], False, (60, 40, 30), 5)
    cv2.fillPoly(image, [lm[48:60]], (150, 60, 60))
    cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1]))
    return path


@pytest.fixture(scope="session")
def synthetic_face(layout: UVLayout) -> FaceResult:
    return make_synthetic_result(layout)


@pytest.fixture(scope="session", autouse=True)
def addon_enabled():
    """Enable prn_blender as a legacy add-on (the repository is on sys.path) for the session."""
    import addon_utils

    module = addon_utils.enable("prn_blender", default_set=True, handle_error=None)
    assert module is not None, "enabling the prn_blender add-on failed"
    yield module
    from prn_blender.blender import operators

    operators.shutdown_client()
    addon_utils.disable("prn_blender", default_set=True)


@pytest.fixture(autouse=True)
def fresh_scene(addon_enabled):
    """A fresh default scene for every test."""
    bpy.ops.wm.read_homefile(app_template="")
    yield


@pytest.fixture(scope="session")
def untrained_weights(tmp_path_factory, layout) -> Path:
    """A randomly initialised PRNet in a temporary .safetensors (WeightsInfo trained=False)."""
    torch = pytest.importorskip("torch")
    from prn_blender.net.prnet import build_prnet
    from prn_blender.net.weights import WeightsInfo, save_weights

    torch.manual_seed(0)
    model = build_prnet()
    path = tmp_path_factory.mktemp("weights") / "prnet_untrained.safetensors"
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    save_weights(model, path, WeightsInfo(layout_id=layout.layout_id, parameter_count=count,
                                          trained=False, training="random init (tests)"))
    return path


@pytest.fixture
def addon_prefs(addon_enabled, untrained_weights):
    """The add-on preferences pointed at this venv's Python and the untrained weights."""
    prefs = bpy.context.preferences.addons["prn_blender"].preferences
    saved = (prefs.python_path, prefs.weights_path, prefs.device)
    prefs.python_path = os.environ.get("PRN_BLENDER_PYTHON", "")
    prefs.weights_path = str(untrained_weights)
    prefs.device = "cpu"
    yield prefs
    prefs.python_path, prefs.weights_path, prefs.device = saved
