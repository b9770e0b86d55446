"""Shard format: ShardWriter -> files -> ShardDataset gives back every face exactly."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from prn_blender.training.shards import ShardDataset, ShardWriter, shard_stems, write_shard
from tests.training.synthetic_shards import (
    ellipsoid_face,
    synthetic_layout,
    write_synthetic_shards,
)


def test_shard_round_trip_keeps_every_face_across_shards(tmp_path):
    layout = synthetic_layout(32)
    rng = np.random.default_rng(1)
    faces = [ellipsoid_face(layout, 100 + 7 * i, rng) for i in range(7)]
    with ShardWriter(tmp_path, faces_per_shard=3) as writer:
        for i, (image, pm, box) in enumerate(faces):
            writer.add(image.tobytes(), pm, box, f"n{i}", "setA" if i % 2 else "setB",
                       float("nan") if i == 0 else 10.0 * i)
    assert [s.name for s in shard_stems(tmp_path)] == ["train-00000", "train-00001",
                                                       "train-00002"]
    assert (tmp_path / "train-00000.maps.npy").is_file()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["faces"] == 7
    assert [s["faces"] for s in manifest["shards"]] == [3, 3, 1]

    data = ShardDataset(tmp_path)
    assert len(data) == 7
    for i, (image, pm, box) in enumerate(faces):
        sample = data[i]
        assert sample.jpeg == image.tobytes()
        assert sample.name == f"n{i}" and sample.source == ("setA" if i % 2 else "setB")
        np.testing.assert_array_equal(sample.box, box)
        assert np.array_equal(np.isnan(sample.position_map), np.isnan(pm))
        # float16 storage: relative error below 2^-11 of values up to ~160 px
        np.testing.assert_allclose(sample.position_map, pm, atol=0.1, equal_nan=True)
    assert np.isnan(data[0].yaw_deg) and data[3].yaw_deg == pytest.approx(30.0)


def test_position_maps_are_memory_mapped_and_dataset_pickles_without_them(tmp_path):
    write_synthetic_shards(tmp_path, synthetic_layout(32), faces=4, faces_per_shard=2)
    data = ShardDataset(tmp_path)
    data[0]
    assert isinstance(data._maps[0], np.memmap)
    clone = pickle.loads(pickle.dumps(data))  # as a spawned DataLoader worker receives it
    assert clone._maps == [None, None]
    np.testing.assert_array_equal(clone[3].position_map, data[3].position_map)


def test_excluded_faces_are_left_out(tmp_path):
    write_synthetic_shards(tmp_path, synthetic_layout(32), faces=5, faces_per_shard=5)
    data = ShardDataset(tmp_path, exclude={("synthetic", "face001"), ("synthetic", "face003")})
    assert [data[i].name for i in range(len(data))] == ["face000", "face002", "face004"]


def test_incomplete_shard_is_ignored_and_empty_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="targets"):
        ShardDataset(tmp_path)
    write_synthetic_shards(tmp_path, synthetic_layout(32), faces=2)
    (tmp_path / "train-00009.tmp.npz").write_bytes(b"partial")
    assert len(ShardDataset(tmp_path)) == 2


def test_write_shard_refuses_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="boxes has 1 entries for 2 JPEGs"):
        write_shard(tmp_path / "x", [b"a", b"b"], np.zeros((2, 4, 4, 3)), np.zeros((1, 4)),
                    ["a", "b"], ["s", "s"], np.zeros(2))


def test_remove_shards_except_deletes_every_file_of_other_shards_only(tmp_path):
    from prn_blender.training.shards import remove_shards_except

    names = ["aflw-0000.npz", "aflw-0000.maps.npy", "aflw-0000.done.json",
             "aflw-0001.npz", "aflw-0001.maps.npy", "aflw-0001.tmp.npz",
             "aflw-0002.maps.tmp.npy", "aflw-0002.done.json.tmp", "300w-0007.npz",
             "manifest.json", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_shards_except(tmp_path, {"aflw-0000"})
    assert removed == ["300w-0007", "aflw-0001", "aflw-0002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "aflw-0000.done.json", "aflw-0000.maps.npy", "aflw-0000.npz", "manifest.json",
        "notes.txt"]
