"""Fixtures for the inference tests: an untrained weights file (plumbing only), a shared
in-process Reconstructor, a Python without torch, and photos written to tmp."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ASTRONAUT_FACE_BOX = (180.0, 88.0, 267.0, 175.0)
"""Approximate tight 68-landmark box of the astronaut's face in skimage.data.astronaut(), px."""


@pytest.fixture(scope="session")
def untrained_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised PRNet saved like real weights, marked trained=False."""
    import torch

    from prn_blender.core.layout import load_layout
    from prn_blender.net.prnet import PRNet, trainable_parameter_count
    from prn_blender.net.weights import WeightsInfo, save_weights

    torch.manual_seed(0)
    model = PRNet()
    path = tmp_path_factory.mktemp("weights") / "untrained.safetensors"
    info = WeightsInfo(load_layout().layout_id, trainable_parameter_count(model), trained=False)
    save_weights(model, path, info)
    return path


@pytest.fixture(scope="session")
def reconstructor(untrained_weights: Path):
    from prn_blender.inference.reconstructor import Reconstructor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reconstructor(untrained_weights, device="cpu")


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, :3])


@pytest.fixture(scope="session")
def astronaut_jpg(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    import cv2

    path = tmp_path_factory.mktemp("photos") / "astronaut.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="session")
def python_without_torch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bare virtual environment (no pip, no packages): an interpreter that lacks torch."""
    root = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   timeout=120)
    python = root / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, timeout=60)
    if probe.returncode == 0:
        pytest.skip("the base interpreter has torch installed globally")
    return str(python)
