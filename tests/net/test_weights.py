"""Weights I/O (safetensors + WeightsInfo metadata), lookup order, errors, BatchNorm folding."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from prn_blender.errors import LayoutError, WeightsError
from prn_blender.net import weights as weights_module
from prn_blender.net.prnet import PRNet, trainable_parameter_count
from prn_blender.net.weights import (
    WEIGHTS_ENV,
    WEIGHTS_FILENAME,
    WeightsInfo,
    default_weights_path,
    file_sha256,
    fuse_batchnorm,
    load_prnet,
    load_weights,
    read_info,
    rewrite_info,
    save_weights,
)

torch.set_num_threads(2)
LAYOUT = "test_layout_v1"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)


@pytest.fixture(scope="module")
def trained_like() -> PRNet:
    """A PRNet with non-trivial BatchNorm statistics, scales and offsets (as after training)."""
    torch.manual_seed(0)
    model = PRNet().train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, 256, 256))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _info(model: torch.nn.Module, trained: bool = True, layout_id: str = LAYOUT) -> WeightsInfo:
    return WeightsInfo(layout_id=layout_id, parameter_count=trainable_parameter_count(model),
                       trained=trained, training="unit test", dev_nme="n/a")


@pytest.fixture(scope="module")
def saved(trained_like: PRNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / WEIGHTS_FILENAME
    save_weights(trained_like, path, _info(trained_like))
    return path


def test_save_load_round_trip_keeps_bn_stats_and_metadata(trained_like: PRNet, saved: Path) -> None:
    state, info = load_weights(saved, expected_layout_id=LAYOUT)
    reference = trained_like.state_dict()
    assert set(state) == set(reference)  # includes running_mean/var and num_batches_tracked
    for key, value in reference.items():
        if value.is_floating_point():
            assert state[key].dtype == torch.float32
            torch.testing.assert_close(state[key], value, atol=2e-3, rtol=1e-3)  # fp16 on disk
        else:
            assert torch.equal(state[key], value)
    assert info == WeightsInfo(LAYOUT, 13_353_618, True, "unit test", "n/a",
                               sha256=file_sha256(saved))
    assert saved.stat().st_size < 30_000_000  # fp16: about 27 MB
    assert saved.stat().st_mode & 0o777 == 0o644  # shippable: readable by every user


def test_rewrite_info_stores_a_readout_and_keeps_the_tensors(saved: Path, tmp_path: Path) -> None:
    import dataclasses

    from safetensors.torch import load_file

    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(saved.read_bytes())
    texels = [[float(i), float(i) + 0.5] for i in range(68)]
    shifts = [[1, -2]] * 12 + [None] + [[0, 3]] * 3 + [None] + [[4, 4]] * 4
    rewrite_info(copy, dataclasses.replace(read_info(saved), landmark_texels=texels,
                                           aflw_uv_shift=shifts))
    info = read_info(copy)
    assert info.landmark_texels == texels and info.aflw_uv_shift == shifts
    assert info.training == "unit test" and info.layout_id == LAYOUT
    before, after = load_file(str(saved)), load_file(str(copy))
    assert set(before) == set(after)
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype
               for k in before)
    assert read_info(saved).landmark_texels is None  # files without a readout read as before
    assert copy.stat().st_mode & 0o777 == 0o644


def test_layout_mismatch_is_refused(saved: Path) -> None:
    with pytest.raises(WeightsError, match=r"trained for UV layout 'test_layout_v1'.*'other'"):
        load_weights(saved, expected_layout_id="other")


def test_missing_explicit_file_says_it_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")


def test_no_installed_weights_names_the_training_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(filename: str, explicit: object = None) -> Path:
        raise LayoutError("not found")

    monkeypatch.setattr(weights_module, "find_data_file", not_found)
    with pytest.raises(WeightsError, match=r"No trained PRN weights are installed yet.*"
                       r"python -m prn_blender\.training train"):
        load_weights()


def test_env_variable_file_or_folder_is_used_before_installed_copies(
    saved: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(saved))
    assert default_weights_path() == saved
    monkeypatch.setenv(WEIGHTS_ENV, str(saved.parent))
    assert default_weights_path() == saved
    monkeypatch.setattr(weights_module, "find_data_file", lambda *a: tmp_path / "installed")
    assert default_weights_path() == saved  # env before the package / repository copies
    explicit = tmp_path / "explicit.safetensors"
    explicit.write_bytes(saved.read_bytes())
    assert default_weights_path(explicit) == explicit  # explicit before env
    with pytest.raises(WeightsError, match="does not exist"):
        default_weights_path(tmp_path / "sub")  # a wrong explicit path never falls back
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match=r"\$PRN_BLENDER_WEIGHTS points at"):
        default_weights_path()


def test_truncated_file_is_refused(saved: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(WeightsError, match="not a readable safetensors weights file"):
        load_weights(path)


def test_pickle_file_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    with pytest.raises(WeightsError, match="not a readable safetensors weights file"):
        load_weights(path)


def test_safetensors_without_our_metadata_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match="not a prn-blender weights file"):
        load_weights(path)


def test_fused_batchnorm_matches_eval_output_within_a_thousandth_px(trained_like: PRNet) -> None:
    fused = fuse_batchnorm(trained_like)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trained_like.modules())  # copy
    image = torch.rand(2, 3, 256, 256)
    with torch.inference_mode():
        reference = trained_like(image)
        out = fused(image)
    assert reference.std() > 1.0  # the statistics make a non-constant map worth comparing
    assert (out - reference).abs().max().item() < 1e-3


def test_load_prnet_gives_eval_model_matching_the_saved_network(
    trained_like: PRNet, saved: Path
) -> None:
    model, info = load_prnet(saved, device="cpu", expected_layout_id=LAYOUT)
    assert info.layout_id == LAYOUT and not model.training
    image = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        out = model(image.contiguous(memory_format=torch.channels_last))
        reference = trained_like(image)
    assert (out - reference).abs().max().item() < 0.5  # fp16 storage, px


def test_load_prnet_refuses_untrained_weights(trained_like: PRNet, tmp_path: Path) -> None:
    path = tmp_path / "untrained.safetensors"
    save_weights(trained_like, path, _info(trained_like, trained=False))
    with pytest.raises(WeightsError, match="untrained"):
        load_prnet(path, device="cpu", expected_layout_id=LAYOUT)
    model, _ = load_prnet(path, device="cpu", expected_layout_id=LAYOUT, allow_untrained=True)
    assert not model.training
