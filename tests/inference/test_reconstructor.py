"""In-process Reconstructor: weights handling, the pipeline's plumbing with an untrained
network (geometry is meaningless, shapes and frames are not), errors and cancellation."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from prn_blender.core.crop import LANDMARK_BOX, crop_from_box, crop_points
from prn_blender.core.geometry import landmarks_from_position_map
from prn_blender.core.options import ReconstructOptions
from prn_blender.errors import CancelledError, NoFaceFoundError, PhotoError, WeightsError
from prn_blender.inference.reconstructor import Reconstructor, UntrainedWeightsWarning
from prn_blender.net.weights import WEIGHTS_ENV, default_weights_path
from tests.inference.conftest import ASTRONAUT_FACE_BOX


def _without_installed_weights(monkeypatch) -> None:
    """As on a machine where model_weights/ has no weights file (whether or not this one has)."""
    import prn_blender.net.weights as weights_module
    from prn_blender.errors import LayoutError

    def missing(filename: str, explicit=None):
        raise LayoutError(f"Cannot find '{filename}'")

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(weights_module, "find_data_file", missing)


def test_no_installed_weights_names_the_training_command(monkeypatch) -> None:
    _without_installed_weights(monkeypatch)
    with pytest.raises(WeightsError, match="No trained PRN weights"):
        default_weights_path()
    with pytest.raises(WeightsError, match=r"python -m prn_blender\.training train"):
        Reconstructor()


def test_untrained_weights_warn_loudly(untrained_weights: Path) -> None:
    with pytest.warns(UntrainedWeightsWarning, match="UNTRAINED WEIGHTS"):
        r = Reconstructor(untrained_weights, device="cpu")
    assert r.trained is False and r.device_name == "cpu"


def test_untrained_weights_can_be_refused(untrained_weights: Path) -> None:
    with pytest.raises(WeightsError, match="untrained"):
        Reconstructor(untrained_weights, device="cpu", allow_untrained=False)


def test_given_box_gives_a_full_face_result(reconstructor, astronaut: np.ndarray) -> None:
    options = ReconstructOptions(texture_size=256, occlusion_mask=True, refine=False)
    (face,) = reconstructor.reconstruct(astronaut, boxes=[ASTRONAUT_FACE_BOX], options=options)
    layout = reconstructor.layout
    n = layout.vertex_count
    assert face.vertices.shape == (n, 3) and face.vertices.dtype == np.float32
    assert face.uvs.shape == (n, 2) and face.triangles is layout.triangles
    assert face.texture.shape == (256, 256, 3) and face.texture.dtype == np.uint8
    assert face.texture_mask is not None and face.texture_mask.shape == (256, 256)
    # Blacked out: only mesh pixels the photo shows neither directly nor mirrored; the edge
    # extension outside the mesh (against dark seams when filtered) stays.
    from prn_blender.core.texture import texture_inside_mesh

    inside = texture_inside_mesh(reconstructor.layout, 256)
    hidden = inside & (face.texture_mask == 0)
    assert (face.texture[hidden] == 0).all()
    assert (face.texture[~inside].max(axis=-1) > 0).mean() > 0.9
    assert face.landmarks.shape == (68, 3) and np.isfinite(face.landmarks).all()
    assert face.photo_size == (512, 512) and face.layout_id == layout.layout_id
    np.testing.assert_allclose(face.box, ASTRONAUT_FACE_BOX)
    # The position map is in photo pixels: cropping it again gives the network's crop-pixel
    # output, whose range is the sigmoid's (-76.8, 332.8) px (DESIGN.md section 3).
    crop_xy = crop_points(face.position_map.reshape(-1, 3), crop_from_box(face.box, LANDMARK_BOX))
    assert crop_xy[:, :2].min() > -76.9 and crop_xy[:, :2].max() < 332.9


def test_detected_face_matches_the_given_box_path(reconstructor, astronaut_jpg: Path) -> None:
    options = ReconstructOptions(texture_size=128, refine=False)
    (detected,) = reconstructor.reconstruct(astronaut_jpg, options=options)
    (given,) = reconstructor.reconstruct(astronaut_jpg, boxes=[detected.box], options=options)
    np.testing.assert_allclose(detected.position_map, given.position_map, atol=1e-3)


def test_all_faces_returns_each_face_largest_first(reconstructor, astronaut) -> None:
    import cv2

    two = np.full((512, 1024, 3), 90, np.uint8)
    two[:, :512] = astronaut
    two[128:384, 640:896] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    options = ReconstructOptions(faces="all", texture_size=64)
    faces = reconstructor.reconstruct(two, options=options)
    assert len(faces) == 2
    sides = [float(f.box[2] - f.box[0] + f.box[3] - f.box[1]) for f in faces]
    assert sides == sorted(sides, reverse=True)  # by the final (refined) boxes
    assert len(reconstructor.reconstruct(two, options=ReconstructOptions(texture_size=64))) == 1


def test_photo_without_face_raises_no_face_found(reconstructor, tmp_path: Path) -> None:
    import cv2

    cv2.imwrite(str(tmp_path / "wall.jpg"), np.full((300, 400, 3), 127, np.uint8))
    with pytest.raises(NoFaceFoundError, match=r"No face found in 'wall\.jpg'"):
        reconstructor.reconstruct(tmp_path / "wall.jpg")


def test_box_outside_the_photo_is_refused(reconstructor, astronaut) -> None:
    with pytest.raises(PhotoError, match="outside"):
        reconstructor.reconstruct(astronaut, boxes=[(900, 900, 1000, 1000)])


QUICK = {"texture_size": 64, "refine": False, "mirror_average": False,
         "rotation_average_deg": 0.0}


def test_one_flat_box_is_a_list_of_one_and_implausible_boxes_are_refused(
        reconstructor, astronaut) -> None:
    from tests.inference.conftest import ASTRONAUT_FACE_BOX

    options = ReconstructOptions(**QUICK)
    flat = reconstructor.reconstruct(astronaut, boxes=list(ASTRONAUT_FACE_BOX), options=options)
    listed = reconstructor.reconstruct(astronaut, boxes=[ASTRONAUT_FACE_BOX], options=options)
    assert len(flat) == 1
    np.testing.assert_array_equal(flat[0].vertices, listed[0].vertices)
    assert ReconstructOptions(boxes=ASTRONAUT_FACE_BOX).boxes == (tuple(ASTRONAUT_FACE_BOX),)
    for box, message in (((100, 100, 101, 101), r"is 1\.0 pixels across"),
                         ((-5e4, -5e4, 5e4, 5e4), r"twice the photo's longer side \(1024 px\)"),
                         (("a", "b", "c", "d"), r"face boxes must be \(x0, y0, x1, y1\)")):
        with pytest.raises(PhotoError, match=message):
            reconstructor.reconstruct(astronaut, boxes=[box], options=options)


def test_texture_size_must_be_a_whole_number_of_pixels() -> None:
    assert ReconstructOptions(texture_size=np.int64(512)).texture_size == 512
    assert ReconstructOptions(texture_size=512.0).texture_size == 512
    for bad in (300.7, "512", True, 32, 10000):
        with pytest.raises(ValueError, match="texture_size must be a whole number of pixels"):
            ReconstructOptions(texture_size=bad)


def test_network_calls_in_chunks_give_the_same_surface(reconstructor, astronaut,
                                                       monkeypatch) -> None:
    from prn_blender.inference import reconstructor as module

    options = ReconstructOptions(texture_size=64, refine=False)  # 5 turns x mirrored: 10 crops
    whole = reconstructor.reconstruct(astronaut, options=options)[0]
    monkeypatch.setattr(module, "FORWARD_CHUNK", 3)
    chunked = reconstructor.reconstruct(astronaut, options=options)[0]
    np.testing.assert_allclose(chunked.vertices, whole.vertices, atol=1e-3)


def test_progress_callback_can_cancel(reconstructor, astronaut) -> None:
    seen = []

    def progress(fraction: float, message: str) -> None:
        seen.append(fraction)
        if fraction >= 0.3:
            raise CancelledError("stop")

    with pytest.raises(CancelledError):
        reconstructor.reconstruct(astronaut, boxes=[ASTRONAUT_FACE_BOX], progress=progress)
    assert seen[0] == 0.0 and seen == sorted(seen)


def test_package_exposes_reconstructor_lazily() -> None:
    import prn_blender

    with warnings.catch_warnings():
        assert prn_blender.Reconstructor is Reconstructor


def test_smoothing_smooths_the_mesh_and_the_landmarks_stay_on_it(reconstructor, astronaut
                                                                  ) -> None:
    """The untrained network's output is rough: smoothing must make neighbouring vertices
    closer, and the landmarks are read from the smoothed surface (the mesh the artist gets)."""
    raw_options = ReconstructOptions(texture_size=256, refine=False, smoothing=0.0)
    smooth_options = ReconstructOptions(texture_size=256, refine=False, smoothing=2.0)
    (raw,) = reconstructor.reconstruct(astronaut, [ASTRONAUT_FACE_BOX], raw_options)
    (smooth,) = reconstructor.reconstruct(astronaut, [ASTRONAUT_FACE_BOX], smooth_options)
    edges = raw.triangles[:, :2]

    def roughness(vertices: np.ndarray) -> float:
        return float(np.median(np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]],
                                              axis=1)))

    assert roughness(smooth.vertices) < 0.7 * roughness(raw.vertices)
    for face in (raw, smooth):
        on_surface = landmarks_from_position_map(face.position_map, reconstructor.layout)
        np.testing.assert_allclose(face.landmarks, on_surface, atol=1e-3)
    with pytest.raises(ValueError, match="smoothing"):
        ReconstructOptions(smoothing=-1.0)


def test_smoothing_is_in_network_output_texels(untrained_weights, tmp_path, astronaut,
                                               monkeypatch) -> None:
    """Weights that run at 128 px give maps whose ripples are 2 layout texels wide: the same
    option smooths them with twice the sigma in layout texels."""
    import prn_blender.inference.reconstructor as module
    from prn_blender.net.prnet import PRNet
    from prn_blender.net.weights import load_weights, save_weights

    state, info = load_weights(untrained_weights)
    model = PRNet()
    model.load_state_dict(state)
    coarse = tmp_path / "coarse.safetensors"
    save_weights(model, coarse, replace(info, input_size=128))
    sigmas = []
    real = module.smooth_face_map
    monkeypatch.setattr(module, "smooth_face_map",
                        lambda pm, layout, sigma: sigmas.append(sigma) or real(pm, layout, sigma))
    options = ReconstructOptions(texture_size=64, refine=False, smoothing=1.5)
    for path in (untrained_weights, coarse):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module.Reconstructor(path, device="cpu").reconstruct(
                astronaut, [ASTRONAUT_FACE_BOX], options)
    assert sigmas == [1.5, 3.0]


def test_rotation_average_uncrops_each_turned_crop_before_averaging(reconstructor,
                                                                    monkeypatch) -> None:
    """A stand-in network that reports the crop position of a bright dot everywhere: every
    turned crop sees the dot elsewhere, and each uncropped surface, so their mean, must be
    the dot's photo position. Uncropping the turned crops without their turn puts each of
    them 10 px off and their mean 0.9 px off (measured), which the 0.3 px tolerance catches."""
    import cv2

    photo = np.zeros((400, 400, 3), np.uint8)
    dot = np.array([243.0, 161.0])
    cv2.circle(photo, (int(dot[0]), int(dot[1])), 3, (255, 255, 255), -1)
    box = (160.0, 120.0, 250.0, 210.0)  # crop centre (205, 165): the dot is 38 px off it
    seen: list[np.ndarray] = []

    def dot_finder(crops: np.ndarray, mirror_average: bool = False) -> np.ndarray:
        maps = []
        for crop in crops:
            weight = crop[..., 0].astype(np.float64)
            ys, xs = np.indices(weight.shape)
            centre = [(xs * weight).sum() / weight.sum(), (ys * weight).sum() / weight.sum()]
            seen.append(np.array(centre))
            maps.append(np.broadcast_to(np.array([*centre, 0.0], np.float32), crop.shape))
        return np.stack(maps)

    monkeypatch.setattr(reconstructor, "_forward", dot_finder)
    for turn, steps, crops in ((0.0, 2, 1), (15.0, 1, 3), (24.0, 2, 5)):
        seen.clear()
        options = ReconstructOptions(texture_size=64, refine=False, smoothing=0.0,
                                     rotation_average_deg=turn, rotation_average_steps=steps,
                                     mirror_fill=False)
        (face,) = reconstructor.reconstruct(photo, boxes=[box], options=options)
        mask = reconstructor.layout.face_mask
        np.testing.assert_allclose(face.position_map[mask][:, :2].mean(axis=0), dot, atol=0.3)
        assert len(seen) == crops
        # Each turned crop saw the dot elsewhere (72 crop px off centre: 19 px apart at 15
        # degrees), and no two crops saw it at the same place.
        distances = [np.linalg.norm(a - b) for i, a in enumerate(seen) for b in seen[:i]]
        assert all(d > 8.0 for d in distances)
    assert ReconstructOptions(rotation_average_deg=24.0).rotation_turns_deg == (
        0.0, -12.0, 12.0, -24.0, 24.0)
    assert ReconstructOptions(rotation_average_deg=0.0).rotation_turns_deg == (0.0,)
    with pytest.raises(ValueError, match="rotation_average_deg"):
        ReconstructOptions(rotation_average_deg=60.0)
    with pytest.raises(ValueError, match="rotation_average_steps"):
        ReconstructOptions(rotation_average_steps=0)


def test_weights_readout_moves_the_landmarks_on_the_same_surface(untrained_weights, tmp_path,
                                                                  astronaut, monkeypatch) -> None:
    """A weights file whose readout puts most non-jaw landmarks 3 texels right of the layout's
    (fitted readouts leave the jaw where it is): the
    surface is the same, and the landmarks are read from it at those texels. With a stand-in
    network whose map holds each texel's own column and row (crop px), that is 3 crop px to
    the right. A readout of the wrong shape is refused with a clear error."""
    import dataclasses

    from prn_blender.net.weights import read_info, rewrite_info

    readout = tmp_path / "readout.safetensors"
    readout.write_bytes(untrained_weights.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = Reconstructor(untrained_weights, device="cpu")
        shift = np.zeros((68, 2))
        shift[17:, 0] = 3.0
        # Not the few eye points whose shifted texel touches the eye holes (read differently).
        corner = np.floor(plain.layout.landmark_texels + shift).astype(int)
        inside = np.ones(68, bool)
        for dx in (0, 1):
            for dy in (0, 1):
                inside &= plain.layout.face_mask[corner[:, 1] + dy, corner[:, 0] + dx]
        shift[~inside] = 0.0
        assert inside[17:].sum() > 40
        rewrite_info(readout, dataclasses.replace(
            read_info(untrained_weights),
            landmark_texels=(plain.layout.landmark_texels + shift).tolist()))
        fitted = Reconstructor(readout, device="cpu")
    rows, cols = np.indices((256, 256), dtype=np.float32)
    grid = np.stack([cols, rows, np.zeros_like(rows)], axis=-1)
    options = ReconstructOptions(texture_size=64, refine=False, smoothing=0.0,
                                 mirror_average=False, rotation_average_deg=0.0)
    faces = []
    for r in (plain, fitted):
        monkeypatch.setattr(r, "_forward", lambda crops, mirror=False: np.stack([grid] * len(crops
                                                                                        )))
        faces += r.reconstruct(astronaut, [ASTRONAUT_FACE_BOX], options)
    a, b = faces
    np.testing.assert_array_equal(a.position_map, b.position_map)
    scale = crop_from_box(ASTRONAUT_FACE_BOX, LANDMARK_BOX).scale  # crop px per photo px
    np.testing.assert_allclose(b.landmarks[:, :2] - a.landmarks[:, :2],
                               shift / scale, atol=1e-3)
    rewrite_info(readout, dataclasses.replace(
        read_info(untrained_weights), landmark_texels=plain.layout.landmark_texels[:5].tolist()))
    with pytest.raises(WeightsError, match="landmark readout"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Reconstructor(readout, device="cpu")


@pytest.mark.parametrize(("yaw_deg", "expected_angle_deg"), [(20.0, 25.0), (-40.0, 25.0),
                                                             (80.0, 0.0), (-75.0, 0.0)])
def test_refinement_crop_turns_upright_by_the_roll_except_near_profile(
        reconstructor, yaw_deg: float, expected_angle_deg: float) -> None:
    """The ICT neutral rolled 25 degrees: the refinement crop is turned upright by the head
    pose's roll, unless the pose is beyond REFINE_UPRIGHT_MAX_YAW_DEG (near profile roll and
    pitch are almost the same rotation and the estimate is unreliable; turning by it was
    measured to raise AFLW training profiles' NME from 6.6 to 8.4 %)."""
    from prn_blender.inference.reconstructor import REFINE_UPRIGHT_MAX_YAW_DEG
    from tests.core.conftest import pose_ict_neutral

    assert abs(yaw_deg) <= REFINE_UPRIGHT_MAX_YAW_DEG or expected_angle_deg == 0.0
    layout = reconstructor.layout
    face = pose_ict_neutral(layout, yaw_deg, 0.0, 25.0, 8.0, (320.0, 240.0, 100.0))
    landmarks = landmarks_from_position_map(face.position_map, layout)[:, :2]
    box = np.array([*landmarks.min(axis=0), *landmarks.max(axis=0)])
    _, crop = reconstructor._refined_crop(face.position_map, box)
    angle = np.degrees(np.arctan2(crop.matrix[0, 1], crop.matrix[0, 0]))
    assert angle == pytest.approx(expected_angle_deg, abs=1.0)
