"""Acceptance: the official PRNet checkpoint index (read by our own reader) maps one-to-one,
shape for shape, onto our module (DESIGN.md section 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prn_blender.net.prnet import PRNet, trainable_parameter_count
from prn_blender.net.tf_index import (
    CONV_KERNEL_TO_TORCH,
    official_tf_to_torch_names,
    read_official_checkpoint,
    read_tf_index,
    torch_shape,
)
from tests.conftest import SHARED_DATA, needs_shared

OFFICIAL = SHARED_DATA / "prnet-official"
INDEX = OFFICIAL / "net-data" / "256_256_resfcn256_weight.index"

pytestmark = needs_shared


@pytest.fixture(scope="module")
def model_variables() -> dict:
    entries = read_tf_index(INDEX)
    assert len(entries) == 545  # model variables + Adam slots + beta1/beta2 powers
    return {
        name: entry
        for name, entry in entries.items()
        if name.startswith("resfcn256/") and "/Adam" not in name
    }


def test_reader_agrees_with_the_published_variable_table(model_variables: dict) -> None:
    table = {}
    for line in (OFFICIAL / "index_variables.tsv").read_text().splitlines():
        if line.startswith("#"):
            continue
        name, dtype, shape, offset, size = line.split("\t")
        table[name] = (dtype, tuple(int(d) for d in shape.split("x")), int(offset), int(size))
    assert len(model_variables) == 245
    read = {n: (e.dtype, e.shape, e.offset, e.size) for n, e in model_variables.items()}
    assert read == table


def test_every_official_tensor_maps_one_to_one_onto_the_module(model_variables: dict) -> None:
    state = PRNet().state_dict()
    model_keys = {k for k in state if not k.endswith("num_batches_tracked")}
    mappings = official_tf_to_torch_names()
    assert {m.tf_name for m in mappings} == set(model_variables)
    assert {m.torch_key for m in mappings} == model_keys
    assert len(mappings) == len(model_variables) == len(model_keys) == 245
    for mapping in mappings:
        tf_shape = model_variables[mapping.tf_name].shape
        assert torch_shape(mapping, tf_shape) == tuple(state[mapping.torch_key].shape), mapping


def test_official_kernels_are_53_with_25_of_them_1x1(model_variables: dict) -> None:
    kernels = {n: e.shape for n, e in model_variables.items() if n.endswith("/weights")}
    assert len(kernels) == 53
    assert sum(shape[:2] == (1, 1) for shape in kernels.values()) == 25
    assert sum("Conv2d_transpose" in n for n in kernels) == 17
    state = PRNet().state_dict()
    assert sum(k.endswith(".weight") and state[k].ndim == 4 for k in state) == 53
    first = next(m for m in official_tf_to_torch_names() if m.tf_name == "resfcn256/Conv/weights")
    assert first.permute == CONV_KERNEL_TO_TORCH
    assert model_variables[first.tf_name].shape == (4, 4, 3, 16)  # kh x kw x in x out


def test_official_trainable_values_equal_the_module_parameter_count(
    model_variables: dict,
) -> None:
    trainable_names = ("weights", "gamma", "beta")
    trainable = [e for n, e in model_variables.items() if n.rsplit("/", 1)[-1] in trainable_names]
    total = sum(e.size for e in trainable) // 4  # float32
    assert total == 13_353_618 == trainable_parameter_count(PRNet())
    moving = [n for n in model_variables if n.endswith("/moving_mean")]
    assert len(moving) == 48  # one BatchNorm per layer except conv3 and shortcut convs


def test_converted_checkpoint_reproduces_the_network_it_was_written_from(
    tmp_path: Path, model_variables: dict
) -> None:
    # Write a .data shard at the official offsets from a known PRNet (TF layout: inverse
    # permutation), convert it back, and check the rebuilt network gives identical outputs.
    torch.manual_seed(3)
    source = PRNet().eval()
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    state = source.state_dict()
    size = max(e.offset + e.size for e in model_variables.values())
    shard = bytearray(size)
    for mapping in official_tf_to_torch_names():
        value = state[mapping.torch_key].numpy()
        if mapping.permute is not None:
            value = value.transpose(np.argsort(mapping.permute))
        entry = model_variables[mapping.tf_name]
        assert value.shape == entry.shape
        shard[entry.offset : entry.offset + entry.size] = value.astype("<f4").tobytes()
    index = tmp_path / "ckpt.index"
    index.write_bytes(INDEX.read_bytes())
    (tmp_path / "ckpt.data-00000-of-00001").write_bytes(bytes(shard))
    converted = read_official_checkpoint(index)
    rebuilt = PRNet().eval()
    missing, unexpected = rebuilt.load_state_dict(
        {k: torch.from_numpy(v) for k, v in converted.items()}, strict=False
    )
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    image = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        assert torch.equal(rebuilt(image), source(image))
