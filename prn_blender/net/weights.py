"""Weights I/O: safetensors only (never pickle), fp16 on disk, fp32 in memory.

A weights file records, in its safetensors metadata, the UV layout it was trained for
(`layout_id`); loading refuses a mismatch (DESIGN.md section 3). Lookup order of the default
file: an explicit path, $PRN_BLENDER_WEIGHTS, the copy build_addon.py places inside the
package, the repository's model_weights/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.layout import find_data_file
from ..errors import LayoutError, WeightsError

WEIGHTS_FILENAME = "prnet_ict256.safetensors"
WEIGHTS_ENV = "PRN_BLENDER_WEIGHTS"
FORMAT_VERSION = "1"
TRAIN_COMMAND = "python -m prn_blender.training train"
RESEARCH_ONLY = (
    "Research use only: trained on research-only photo sets (300W, AFLW, UTKFace) with targets "
    "from research-only teachers (3DDFA-V2/BFM, MediaPipe); see model_weights/MODEL_CARD.md."
)


@dataclass(frozen=True)
class WeightsInfo:
    """What a weights file says about itself (stored as safetensors metadata strings)."""

    layout_id: str
    parameter_count: int
    trained: bool
    training: str = ""
    """Summary: data, epochs, hours, hardware."""
    dev_nme: str = ""
    """Dev-split NME figures, as text."""
    licence: str = RESEARCH_ONLY
    format_version: str = FORMAT_VERSION

    def to_metadata(self) -> dict[str, str]:
        return {k: json.dumps(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> WeightsInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: json.loads(v) for k, v in meta.items() if k in names}
        return cls(**values)


def default_weights_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the weights file, or raise WeightsError saying how to get one."""
    explicit = explicit or os.environ.get(WEIGHTS_ENV) or None
    if explicit is not None and not Path(explicit).expanduser().is_file():
        raise WeightsError(
            f"Weights file '{explicit}' does not exist. Point the preferences, --weights or "
            f"${WEIGHTS_ENV} at a .safetensors file made by `{TRAIN_COMMAND}` / `export`."
        )
    try:
        return find_data_file(WEIGHTS_FILENAME, explicit)
    except LayoutError:
        raise WeightsError(
            "No trained PRN weights are installed yet "
            f"({WEIGHTS_FILENAME} is not in model_weights/). Train them with "
            f"`{TRAIN_COMMAND}` (see README, Training) and export them, or point "
            f"${WEIGHTS_ENV} at a weights file."
        ) from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(
    model: nn.Module, path: str | os.PathLike[str], info: WeightsInfo,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write the state dict (parameters and BatchNorm statistics) as safetensors, atomically."""
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        state[key] = value.to(dtype) if value.is_floating_point() else value
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=info.to_metadata())
    os.replace(tmp, path)


def read_info(path: str | os.PathLike[str]) -> WeightsInfo:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(
            f"'{path}' is not a readable safetensors weights file ({error}). Re-export or "
            "re-download the weights."
        ) from error
    if "layout_id" not in meta:
        raise WeightsError(f"'{path}' has no prn-blender metadata; it is not our weights file.")
    return WeightsInfo.from_metadata(meta)


def load_weights(
    path: str | os.PathLike[str] | None = None, expected_layout_id: str | None = None
) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """(float32 state dict, info). Refuses a missing, corrupt or other-layout file."""
    resolved = default_weights_path(path)
    info = read_info(resolved)
    if expected_layout_id is not None and info.layout_id != expected_layout_id:
        raise WeightsError(
            f"Weights '{resolved.name}' were trained for UV layout '{info.layout_id}', but this "
            f"installation uses '{expected_layout_id}'. Use weights made for this layout."
        )
    try:
        state = load_file(str(resolved))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"Weights file '{resolved}' is damaged ({error}).") from error
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, info
