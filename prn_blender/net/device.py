"""Device choice: CUDA when present, else MPS, else CPU; overridable."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PrnError

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(preference: str = "auto") -> torch.device:
    """'auto' = cuda > mps > cpu; an explicit choice that is not available is an error."""
    preference = (preference or "auto").lower()
    if preference not in DEVICES:
        raise ValueError(f"unknown device {preference!r}; choose one of {DEVICES}")
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise PrnError("CUDA was requested but no CUDA GPU is usable here; choose 'auto' or 'cpu'.")
    if preference == "mps" and not _mps_available():
        raise PrnError("MPS (Apple GPU) was requested but is not available; use auto or cpu.")
    return torch.device(preference)


def configure_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads (None = leave torch's default)."""
    if threads:
        torch.set_num_threads(int(threads))


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode on the device; channels_last memory format on CPU (measurably faster)."""
    model = model.eval().to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model
