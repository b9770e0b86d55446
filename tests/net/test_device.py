"""Device choice logic with GPU availability monkeypatched."""

from __future__ import annotations

import pytest
import torch

from prn_blender.errors import PrnError
from prn_blender.net import device as device_module
from prn_blender.net.device import (
    DeviceUnavailableError,
    configure_threads,
    prepare_for_inference,
    select_device,
)


def _available(monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(device_module, "_cuda_available", lambda: cuda)
    monkeypatch.setattr(device_module, "_mps_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"), (True, False, "cuda")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str
) -> None:
    _available(monkeypatch, cuda, mps)
    assert select_device("auto") == torch.device(expected)
    assert select_device("") == torch.device(expected)


def test_explicit_cpu_is_always_available(monkeypatch: pytest.MonkeyPatch) -> None:
    _available(monkeypatch, True, True)
    assert select_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_unavailable_explicit_gpu_raises_artist_error(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _available(monkeypatch, False, False)
    with pytest.raises(DeviceUnavailableError, match="Choose 'auto' or 'cpu'") as info:
        select_device(name)
    assert isinstance(info.value, PrnError)


def test_explicit_available_gpu_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    _available(monkeypatch, True, True)
    assert select_device("mps") == torch.device("mps")
    assert select_device("cuda") == torch.device("cuda")


def test_unknown_device_string_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="'tpu'"):
        select_device("tpu")


def test_configure_threads_sets_and_validates() -> None:
    before = torch.get_num_threads()
    try:
        configure_threads(1)
        assert torch.get_num_threads() == 1
        configure_threads(None)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_prepare_for_inference_puts_model_in_eval_channels_last_on_cpu() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    prepared = prepare_for_inference(model, torch.device("cpu"))
    assert not prepared.training
    assert prepared[0].weight.is_contiguous(memory_format=torch.channels_last)
