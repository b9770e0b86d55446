"""Face-set readers and the fixed dev split (DESIGN.md section 5)."""

from __future__ import annotations

import numpy as np
import pytest

from prn_blender.training import faces
from tests.conftest import SHARED, needs_shared


def test_source_photo_strips_face_index_suffix_only():
    assert faces.source_photo("afw_1130084326_2") == "afw_1130084326"
    assert faces.source_photo("helen_train_2302182824_1") == "helen_train_2302182824"
    assert faces.source_photo("image04380") == "image04380"


@pytest.mark.parametrize(
    ("yaw_deg", "expected"),
    [(0.0, 0), (29.99, 0), (30.0, 1), (-45.0, 1), (60.0, 2), (90.0, 2), (95.0, 2), (np.nan, -1)],
)
def test_yaw_bin_edges_are_closed_on_the_left(yaw_deg, expected):
    assert faces.yaw_bin(yaw_deg) == expected


def test_unknown_set_name_raises():
    with pytest.raises(ValueError, match="unknown face set 'lfpw'"):
        faces.load_face_set("lfpw")


@needs_shared
def test_sets_have_the_readme_counts_and_label_shapes():
    sets = {name: faces.load_face_set(name, SHARED) for name in faces.FACE_SETS}
    assert {k: len(v) for k, v in sets.items()} == {"300w": 1531, "aflw": 4421, "utkface": 2586}
    first_300w = sets["300w"][0]
    assert first_300w.name == "afw_1051618982_1"
    assert first_300w.landmarks.shape == (68, 2) and first_300w.box is None
    aflw = sets["aflw"]
    assert all(r.size == 120 and r.landmarks.shape == (21, 2) for r in aflw)
    yaw_counts = np.bincount([faces.yaw_bin(r.yaw_deg) for r in aflw])
    assert yaw_counts.tolist() == [1536, 1505, 1380]
    # Unlabelled AFLW points are NaN and marked invisible; the ears are the least labelled.
    visible = np.stack([r.visible for r in aflw])
    labels = np.stack([r.landmarks for r in aflw])
    assert np.array_equal(np.isfinite(labels).all(-1), visible)
    assert set(np.argsort(visible.sum(0))[:2]) == set(faces.AFLW_EAR_INDICES)
    utk = sets["utkface"][0]
    assert utk.landmarks is None and utk.box.shape == (4,) and np.isnan(utk.yaw_deg)


@needs_shared
def test_images_decode_as_rgb_of_the_recorded_size():
    for set_name in faces.FACE_SETS:
        records = faces.load_face_set(set_name, SHARED)[::400]
        for record, image in faces.iter_images(records, SHARED):
            assert image.dtype == np.uint8 and image.shape == (record.size, record.size, 3)
    # 300W sizes vary (crops smaller than 256 px are stored unscaled).
    assert {r.size for r in faces.load_face_set("300w", SHARED)} > {256, 227}
    record = faces.load_face_set("300w", SHARED)[0]
    image = faces.load_image(record, SHARED)
    # Labels lie inside the crop, and the face (around the nose tip) is not black padding.
    assert np.all((record.landmarks >= 0) & (record.landmarks < record.size))
    nose_x, nose_y = np.round(record.landmarks[30]).astype(int)
    assert image[nose_y - 3 : nose_y + 4, nose_x - 3 : nose_x + 4].mean() > 40


@needs_shared
def test_dev_split_is_pinned():
    dev_300w = faces.dev_names("300w", SHARED)
    dev_aflw = faces.dev_names("aflw", SHARED)
    assert len(dev_300w) == 300 and len(dev_aflw) == 1000
    assert faces.dev_names("utkface", SHARED) == frozenset()
    assert {"afw_111076519_1", "afw_111076519_2", "helen_train_2302927584_1"} <= dev_300w
    assert {"image04392", "image04398", "image71303"} <= dev_aflw
    assert not faces.is_dev("300w", "afw_1051618982_1", SHARED)
    assert not faces.is_dev("aflw", "image04378", SHARED)
    aflw = faces.load_face_set("aflw", SHARED)
    per_bin = np.bincount([faces.yaw_bin(r.yaw_deg) for r in aflw if r.name in dev_aflw])
    assert per_bin.tolist() == list(faces.DEV_AFLW_PER_BIN)


@needs_shared
def test_dev_split_is_deterministic_and_keeps_source_photos_together():
    recomputed = faces._dev_names.__wrapped__("300w", str(SHARED))
    assert recomputed == faces.dev_names("300w", SHARED)
    assert faces._dev_names.__wrapped__("aflw", str(SHARED)) == faces.dev_names("aflw", SHARED)
    dev = faces.dev_names("300w", SHARED)
    names = [r.name for r in faces.load_face_set("300w", SHARED)]
    dev_photos = {faces.source_photo(n) for n in names if n in dev}
    train_photos = {faces.source_photo(n) for n in names if n not in dev}
    assert not dev_photos & train_photos
    # Some dev photos have several faces, so the grouping matters.
    assert len(dev_photos) < len(dev)
