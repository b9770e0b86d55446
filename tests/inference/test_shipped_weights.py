"""The shipped trained weights (model_weights/prnet_ict256.safetensors): format, default use,
and accuracy on real faces against references they were never trained on.

Skipped only while no weights are shipped (before the first weights commit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_shared

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "model_weights" / "prnet_ict256.safetensors"
YUNET = REPO / "model_weights" / "face_detection_yunet_2023mar.onnx"

pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="no trained weights shipped yet")


@pytest.fixture(scope="module")
def shipped():
    from prn_blender.inference.reconstructor import Reconstructor
    from prn_blender.net.weights import WEIGHTS_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(WEIGHTS_ENV, raising=False)  # the installed weights, whatever the env says
        return Reconstructor(device="cpu")


def test_shipped_weights_are_trained_fp16_for_this_layout_and_the_default(shipped) -> None:
    from safetensors import safe_open

    assert shipped.weights_path.resolve() == SHIPPED.resolve()
    assert shipped.trained and shipped.info.layout_id == shipped.layout.layout_id
    with safe_open(str(SHIPPED), "pt") as fh:
        tensors = [fh.get_tensor(k) for k in fh.keys()]
    assert {str(t.dtype) for t in tensors if t.is_floating_point()} == {"torch.float16"}
    assert shipped.info.dev_nme, "the model card figures travel with the weights"


def test_landmarks_sit_on_the_smoothed_surface(shipped, astronaut) -> None:
    """The landmarks are read from the surface the artist gets: with the default smoothing
    they move off the raw output's by about its ripples (the trained weights' raw surface has
    them, 1.5 px roughness) and stay on the smoothed mesh, at the file's fitted readout."""
    from prn_blender.core.geometry import landmarks_from_position_map
    from prn_blender.core.options import ReconstructOptions

    raw_options = ReconstructOptions(texture_size=64, smoothing=0.0)
    (raw,) = shipped.reconstruct(astronaut, options=raw_options)
    (smooth,) = shipped.reconstruct(astronaut, options=ReconstructOptions(texture_size=64))
    for face in (raw, smooth):
        np.testing.assert_allclose(
            face.landmarks, landmarks_from_position_map(face.position_map, shipped.layout,
                                                        texels=shipped.landmark_texels),
            atol=1e-3)
    moved = np.linalg.norm(smooth.landmarks[:, :2] - raw.landmarks[:, :2], axis=1)
    assert 0.05 < np.median(moved) < 3.0, np.median(moved)  # measured 0.33 px


def _yunet_five_points(rgb: np.ndarray) -> np.ndarray:
    """YuNet's 5 points of the largest face (right eye, left eye, nose tip, right and left
    mouth corner as the viewer sees them: image-left first), photo px."""
    import cv2

    detector = cv2.FaceDetectorYN.create(str(YUNET), "", (rgb.shape[1], rgb.shape[0]), 0.6)
    _, faces = detector.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    face = faces[np.argmax(faces[:, 2] * faces[:, 3])]
    return face[4:14].reshape(5, 2)


def test_astronaut_landmarks_agree_with_an_independent_detector(shipped, astronaut) -> None:
    """The shipped network's eyes, nose tip and mouth corners on the public-domain astronaut
    photo against YuNet's 5 points (a different model, different training data)."""
    (face,) = shipped.reconstruct(astronaut)
    lm = face.landmarks[:, :2]
    ours = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    theirs = _yunet_five_points(astronaut)
    interocular = np.linalg.norm(theirs[0] - theirs[1])
    errors = np.linalg.norm(ours - theirs, axis=1) / interocular
    assert errors.max() < MAX_FIVE_POINT_ERROR, errors
    # Frontal photo: the estimated head pose is near frontal.
    assert abs(face.pose.yaw_deg) < 20 and abs(face.pose.roll_deg) < 15


@needs_shared
def test_dev_faces_nme_is_close_to_the_model_card(shipped) -> None:
    """NME on the first dev faces (never trained on) of 300W and AFLW."""
    from prn_blender.training.evaluate import NetworkLandmarks, dev_data, score

    run = NetworkLandmarks(shipped.model, shipped.layout, shipped.device,
                           input_size=shipped.info.input_size or None)
    for set_name, (records, images, boxes) in dev_data(limit=60).items():
        figures = score(records, run(images, boxes, set_name), set_name)
        assert figures["all"] < MAX_DEV_NME[set_name], (set_name, figures)


@needs_shared
def test_mirror_averaging_lowers_dev_nme(shipped) -> None:
    """The product's default mirror averaging (a mirrored crop through the network, its map
    unmirrored and averaged) scores better than one pass on the same dev faces: a wrong
    unmirroring (x off by a pixel, columns not swapped) would score far worse."""
    from prn_blender.training.evaluate import NetworkLandmarks, dev_data, score

    for set_name, (records, images, boxes) in dev_data(limit=60).items():
        figures = [score(records, NetworkLandmarks(
            shipped.model, shipped.layout, shipped.device, input_size=shipped.info.input_size
            or None, mirror_average=mirror)(images, boxes, set_name), set_name)["all"]
            for mirror in (False, True)]
        assert figures[1] < figures[0], (set_name, figures)


MAX_FIVE_POINT_ERROR = 0.15
"""Fraction of YuNet's interocular distance. The first shipped weights (session 3): 0.02 /
0.05 / 0.03 / 0.09 / 0.02 (eyes, nose tip, mouth corners)."""
MAX_DEV_NME = {"300w": 3.9, "aflw": 7.4}
"""Percent, on 60 spread dev faces, the network's single pass (AFLW through the fitted texels
of DESIGN section 5 since session 6; the layout's readout). Session-10 weights: 3.56 and 6.85
(all 1,300 dev faces: 3.87 and 6.51 balanced); session 9's 3.71 and 7.19 (3.98 and 6.84);
session 8's 3.75 and 7.13; session 7's 3.80 and
7.16; session 6's 3.90 and 7.34. Through the old iBUG means: session 5's 3.96 and 8.18; session
4's 4.25 and 9.07; session 3's 6.49 and 11.70. Raise the bar when better weights ship."""
MAX_PRODUCT_DEV_NME = {"300w": 3.1, "aflw": 6.1}
"""The same faces through the product pipeline (evaluate.ProductLandmarks: mirror and rotation
averaging, two refinement passes, landmarks on the smoothed surface at the file's fitted
readout; rotation averaging over -/+12 and -/+24 degrees since session 9). Session-10
weights: 2.85 and 5.65 (all dev faces: 3.10 and 5.39 balanced); session 9's 2.98 and 5.90
(3.21 and 5.65). Session 8's, with -/+15 degrees: 2.96
and 5.94. Session 7's: 2.98 and 7.39, when the refinement crops of profiles were still turned
by an unreliable roll (a few turned faces of these 60 lost in refinement). Session 6's: 3.22
and 7.54 with rotation averaging, 3.28 and 7.92 without, both at the layout's readout."""


@needs_shared
def test_product_pipeline_dev_faces_nme_is_close_to_the_model_card() -> None:
    from prn_blender.net.weights import default_weights_path
    from prn_blender.training.evaluate import ProductLandmarks, dev_data, score

    product = ProductLandmarks(default_weights_path(SHIPPED))
    for set_name, (records, images, boxes) in dev_data(limit=60).items():
        figures = score(records, product(images, boxes, set_name), set_name)
        assert figures["all"] < MAX_PRODUCT_DEV_NME[set_name], (set_name, figures)


def test_a_rolled_face_is_refined_in_an_upright_crop(shipped, astronaut) -> None:
    """The astronaut turned 40 degrees in the image plane: the refinement pass crops it upright
    (core.crop.crop_from_landmarks), so its landmarks match the upright photo's, turned."""
    import cv2

    (upright,) = shipped.reconstruct(astronaut)
    h, w = astronaut.shape[:2]
    for angle in (40.0, -40.0):
        turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        rolled = cv2.warpAffine(astronaut, turn, (w, h), borderMode=cv2.BORDER_REFLECT101)
        expected = upright.landmarks[:, :2] @ turn[:, :2].T + turn[:, 2]
        # The box a detector gives: axis-aligned around the turned face.
        (face,) = shipped.reconstruct(rolled, boxes=[_box(expected)])
        lm = face.landmarks[:, :2]
        interocular = np.linalg.norm(expected[36:42].mean(0) - expected[42:48].mean(0))
        error = np.linalg.norm(lm - expected, axis=1).mean() / interocular
        assert error < MAX_ROLLED_ERROR, (angle, error)
        assert face.pose.roll_deg == pytest.approx(upright.pose.roll_deg - angle, abs=8.0)


def _box(points: np.ndarray) -> np.ndarray:
    return np.array([*points.min(axis=0), *points.max(axis=0)])


MAX_ROLLED_ERROR = 0.10
"""Mean landmark distance / interocular against the upright photo's landmarks, turned. With the
session-3 weights at +-40 and 25 degrees: 0.053-0.077 with the upright crop, 0.118-0.148 with
the axis-aligned one (what the test guards against)."""


def test_shipped_weights_carry_a_plausible_fitted_readout(shipped) -> None:
    """`training readout` was run on the shipped file: the 51 non-jaw landmarks at whole-texel
    shifts within its radius of the layout's texels, the jaw unshifted, and AFLW's 19 points
    with shifts (ears none)."""
    from prn_blender.training.metrics import AFLW19_INDICES
    from prn_blender.training.readout import READOUT_RADIUS

    info = shipped.weights_info
    assert info.landmark_texels is not None and info.aflw_uv_shift is not None
    shift = np.asarray(info.landmark_texels) - shipped.layout.landmark_texels
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-3)
    assert np.abs(shift).max() <= READOUT_RADIUS
    assert not shift[:17].any()
    assert 0.5 < np.abs(shift[17:]).sum(axis=1).mean() < 4.0  # session 7: 2.6 texels
    assert all((info.aflw_uv_shift[k] is not None) == (k in AFLW19_INDICES) for k in range(21))
