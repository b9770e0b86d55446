"""Face detection: Haar (bundled with OpenCV) and YuNet boxes mapped to the tight 68-landmark
box, multiple faces sorted by size, huge photos detected on a downscaled copy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from prn_blender.core.photo import load_photo
from prn_blender.errors import DependencyError
from prn_blender.inference.detect import (
    HAAR_FRONTAL_TO_LANDMARKS,
    BoxMapping,
    box_iou,
    detect_faces,
    find_yunet_model,
)
from tests.conftest import SHARED_DATA, needs_shared
from tests.inference.conftest import ASTRONAUT_FACE_BOX

PHOTOS = SHARED_DATA / "photos"
YUNET = SHARED_DATA / "yunet" / "face_detection_yunet_2023mar.onnx"


def _centre_side(box: np.ndarray) -> tuple[np.ndarray, float]:
    b = np.asarray(box, dtype=np.float64)
    return (b[:2] + b[2:]) / 2, float((b[2] - b[0] + b[3] - b[1]) / 2)


def _assert_near_astronaut(box: np.ndarray) -> None:
    centre, side = _centre_side(box)
    true_centre, true_side = _centre_side(np.array(ASTRONAUT_FACE_BOX))
    assert np.hypot(*(centre - true_centre)) < 0.12 * true_side
    assert abs(side / true_side - 1) < 0.15


def test_box_mapping_shifts_and_scales_about_the_box_centre() -> None:
    m = BoxMapping(0.1, 0.2, 0.5, 2.0)
    np.testing.assert_allclose(m.apply(np.array([0, 0, 100, 100])), [35, -30, 85, 170])
    np.testing.assert_allclose(m.apply(np.array([0, 0, 100, 100]), mirrored=True),
                               [15, -30, 65, 170])


def test_haar_finds_the_astronaut_with_the_landmark_box(astronaut: np.ndarray) -> None:
    faces = detect_faces(astronaut, "haar")
    assert len(faces) == 1
    assert faces[0].detector == "haar_frontal"
    _assert_near_astronaut(faces[0].box)
    np.testing.assert_allclose(faces[0].box, HAAR_FRONTAL_TO_LANDMARKS.apply(faces[0].raw_box))


def test_photo_without_face_gives_no_detection() -> None:
    gradient = np.tile(np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None], (300, 1, 3))
    assert detect_faces(gradient, "haar") == []


@needs_shared
def test_two_faces_are_returned_largest_first() -> None:
    faces = detect_faces(load_photo(PHOTOS / "multi_two_faces.jpg"), "haar")
    assert len(faces) == 2
    assert faces[0].size_px >= faces[1].size_px
    assert box_iou(faces[0].box, faces[1].box) == 0


@needs_shared
def test_group_poster_finds_many_faces_sorted_by_size() -> None:
    faces = detect_faces(load_photo(PHOTOS / "multi_group_poster.jpg"), "haar")
    assert len(faces) >= 8
    sizes = [f.size_px for f in faces]
    assert sizes == sorted(sizes, reverse=True)


@needs_shared
@pytest.mark.skipif(not YUNET.is_file(), reason="YuNet model not in ../shared")
def test_yunet_box_matches_the_landmark_box(astronaut: np.ndarray) -> None:
    faces = detect_faces(astronaut, "yunet", str(YUNET))
    assert len(faces) == 1 and faces[0].detector == "yunet"
    _assert_near_astronaut(faces[0].box)


@needs_shared
@pytest.mark.skipif(not YUNET.is_file(), reason="YuNet model not in ../shared")
def test_yunet_finds_the_tilted_face_haar_misses() -> None:
    photo = load_photo(PHOTOS / "tilted_stubble_man.jpg")
    assert len(detect_faces(photo, "yunet", str(YUNET))) == 1


def test_shipped_yunet_is_the_default_detector_and_is_the_published_file(
    astronaut: np.ndarray,
) -> None:
    import hashlib

    shipped = find_yunet_model()
    assert shipped is not None and shipped.endswith("face_detection_yunet_2023mar.onnx")
    assert hashlib.sha256(open(shipped, "rb").read()).hexdigest() == (
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4")
    for faces in (detect_faces(astronaut), detect_faces(astronaut, "yunet", None)):
        assert len(faces) == 1 and faces[0].detector == "yunet"
        _assert_near_astronaut(faces[0].box)


def test_yunet_with_a_missing_model_file_says_what_to_do(astronaut: np.ndarray,
                                                         tmp_path) -> None:
    with pytest.raises(DependencyError, match="does not exist"):
        detect_faces(astronaut, "yunet", str(tmp_path / "missing.onnx"))


def test_face_in_12000x8000_panorama_is_found_at_full_resolution(
    tmp_path, astronaut: np.ndarray
) -> None:
    from prn_blender.core.photo import load_photo as load

    pano = np.full((8000, 12000, 3), 90, np.uint8)
    x0, y0, k = 5000, 2000, 8  # the astronaut, 8x enlarged, pasted at (5000, 2000)
    pano[y0:y0 + 512 * k, x0:x0 + 512 * k] = cv2.resize(
        astronaut, (512 * k, 512 * k), interpolation=cv2.INTER_LINEAR)
    path = tmp_path / "pano.jpg"
    cv2.imwrite(str(path), pano, [cv2.IMWRITE_JPEG_QUALITY, 80])
    del pano
    photo = load(path)
    assert photo.shape == (8000, 12000, 3)
    faces = detect_faces(photo, "haar")
    assert len(faces) == 1
    # Back in the astronaut's own pixels (centres): p = (photo + 0.5 - offset) / k - 0.5.
    box = (faces[0].box.reshape(2, 2) + 0.5 - [x0, y0]) / k - 0.5
    _assert_near_astronaut(box.reshape(4))


@needs_shared
def test_small_faces_in_a_large_photo_are_found_beside_a_large_one(astronaut) -> None:
    """The group poster's ten ~40 px faces pasted on a 4096 px canvas with a large face: at
    640 px they shrink below YuNet's reach, so all-faces detection adds a pass at 1280 px."""
    poster = load_photo(PHOTOS / "multi_group_poster.jpg")
    alone = detect_faces(poster, "yunet")
    canvas = np.full((2730, 4096, 3), 110, np.uint8)
    h, w = poster.shape[:2]
    canvas[100:100 + h, 100:100 + w] = poster
    canvas[1200:1200 + 1024, 2800:2800 + 1024] = cv2.resize(astronaut, (1024, 1024))
    faces = detect_faces(canvas, "yunet", all_faces=True)
    sizes = [f.size_px for f in faces]
    assert sizes == sorted(sizes, reverse=True)
    _assert_near_astronaut((faces[0].box - [2800, 1200, 2800, 1200]) / 2)
    found = [f for f in faces[1:] if f.box[2] < 100 + w and f.box[3] < 100 + h]
    assert len(found) >= len(alone) - 1 >= 7
    # The largest face alone still needs only the first pass.
    largest = detect_faces(canvas, "yunet", all_faces=False)
    _assert_near_astronaut((largest[0].box - [2800, 1200, 2800, 1200]) / 2)


def test_detection_from_several_threads_gives_the_single_thread_boxes(astronaut) -> None:
    """The OpenCV detectors are shared objects with per-call state: concurrent calls on
    photos of different sizes must neither fail nor mix their boxes up."""
    from concurrent.futures import ThreadPoolExecutor

    photos = [astronaut, cv2.resize(astronaut, (300, 300)), cv2.resize(astronaut, (900, 700))]
    for detector in ("yunet", "haar"):
        expected = [[f.box for f in detect_faces(p, detector)] for p in photos]
        with ThreadPoolExecutor(3) as pool:
            runs = list(pool.map(lambda i, d=detector: (i % 3, detect_faces(photos[i % 3], d)),
                                 range(24)))
        for index, faces in runs:
            np.testing.assert_array_equal([f.box for f in faces], expected[index])
