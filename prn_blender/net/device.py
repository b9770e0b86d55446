"""Device choice (CUDA when present, else Apple MPS, else CPU; overridable), CPU threads, and
putting a model in inference form."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DeviceUnavailableError

DEVICES = ("auto", "cpu", "cuda", "mps")
"""Accepted `select_device` preferences."""




def _cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(preference: str = "auto") -> torch.device:
    """"auto" = cuda > mps > cpu; "cpu", "cuda", "mps" = exactly that device.

    Raises ValueError for an unknown string and DeviceUnavailableError (a PrnError) when an
    explicit GPU choice is not available here."""
    choice = (preference or "auto").strip().lower()
    if choice not in DEVICES:
        raise ValueError(f"unknown device {preference!r}; choose one of {', '.join(DEVICES)}")
    if choice == "auto":
        if _cuda_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not _cuda_available():
        raise DeviceUnavailableError(
            "CUDA was requested, but this torch installation sees no usable NVIDIA GPU "
            f"(torch {torch.__version__}). Choose 'auto' or 'cpu', or install a CUDA build of "
            "torch in the worker environment."
        )
    if choice == "mps" and not _mps_available():
        raise DeviceUnavailableError(
            "MPS (Apple GPU) was requested, but it is not available on this machine. "
            "Choose 'auto' or 'cpu'."
        )
    return torch.device(choice)


def configure_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads; None leaves torch's default (one per core)."""
    if threads is None:
        return
    if int(threads) < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(int(threads))


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode on `device`, channels_last memory format on CPU (about 20 % faster there,
    DESIGN.md section 8). Returns the same module, moved."""
    model = model.eval().to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model
