"""Weights I/O: safetensors only (never pickle), fp16 on disk, fp32 in memory; BatchNorm folding.

A weights file records, in its safetensors metadata (a string dict), a `WeightsInfo`: the UV
layout it was trained for (`layout_id`), parameter count, training summary, dev NME, licence and
format version; loading refuses a mismatch (DESIGN.md section 3). Lookup order of the default
file (DESIGN.md section 4): an explicit path, $PRN_BLENDER_WEIGHTS (a file, or a folder holding
`prnet_ict256.safetensors`), the copy build_addon.py places inside the package, the
repository's model_weights/.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.layout import find_data_file
from ..errors import LayoutError, WeightsError

WEIGHTS_FILENAME = "prnet_ict256.safetensors"
WEIGHTS_ENV = "PRN_BLENDER_WEIGHTS"
FORMAT_VERSION = "1"
TRAIN_COMMAND = "python -m prn_blender.training train"
EXPORT_COMMAND = "python -m prn_blender.training export"
RESEARCH_ONLY = (
    "Research use only: trained on research-only photo sets (300W, AFLW, UTKFace) with targets "
    "from research-only teachers (3DDFA-V2/BFM, MediaPipe); see model_weights/MODEL_CARD.md."
)


@dataclass(frozen=True)
class WeightsInfo:
    """What a weights file says about itself (stored as JSON strings in safetensors metadata)."""

    layout_id: str
    """The UV layout the network was trained for (`UVLayout.layout_id`)."""
    parameter_count: int
    """Trainable values of the network (13,353,618 for the paper's PRNet)."""
    trained: bool
    """False for an initialised-only network (tests, smoke runs): not for artists."""
    training: str = ""
    """Summary: data, images seen, hours, hardware."""
    dev_nme: str = ""
    """Dev-split NME figures, as text (DESIGN.md section 5)."""
    input_size: int = 0
    """Side (px) of the input the network runs at: its crop is area-downsampled to it and the
    position map upsampled back to the layout's side (a coarse-trained network). 0 = the
    layout's resolution."""
    landmark_texels: list[list[float]] | None = None
    """(68, 2) texel positions (x, y) at which these weights' surfaces put the iBUG 68 points,
    fitted on training faces (`python -m prn_blender.training readout`); None = the layout's
    calibrated texels. A network that has not fully learnt its targets' landmark corrections
    puts some landmarks a few texels off; reading there corrects it."""
    aflw_uv_shift: list[list[float] | None] | None = None
    """Evaluation only: AFLW's points as texel shifts of their iBUG sources, fitted like
    `landmark_texels` (the convention of training.metrics.POINT_MAPS_FILE); None = the
    layout's shifts there."""
    licence: str = RESEARCH_ONLY
    format_version: str = FORMAT_VERSION
    sha256: str = ""
    """SHA-256 of the file it was read from (filled by `read_info`; not stored in the file)."""

    def readout_texels(self, layout_texels: np.ndarray) -> np.ndarray:
        """(68, 2) float64 texels to read the 68 landmarks at: `landmark_texels` when the file
        has a fitted readout, else `layout_texels` (the layout's calibrated ones). Raises
        WeightsError for a readout of the wrong shape."""
        if self.landmark_texels is None:
            return np.asarray(layout_texels, np.float64)
        texels = np.asarray(self.landmark_texels, np.float64)
        if texels.shape != (68, 2):
            raise WeightsError(f"the weights file has a damaged landmark readout (shape "
                               f"{texels.shape}); re-export the weights")
        return texels

    def to_metadata(self) -> dict[str, str]:
        """The safetensors metadata: every field but `sha256`, JSON-encoded."""
        values = dataclasses.asdict(self)
        values.pop("sha256")
        return {key: json.dumps(value) for key, value in values.items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> WeightsInfo:
        """Parse `to_metadata` output; unknown keys are ignored (newer writers)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"sha256"}
        values = {key: json.loads(value) for key, value in meta.items() if key in names}
        return cls(**values)


def default_weights_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the weights file: `explicit` > $PRN_BLENDER_WEIGHTS > package copy > repository
    model_weights/. An explicit or environment path may be the file or its folder. Raises
    WeightsError saying how to get weights."""
    source = "The weights path"
    if not explicit and os.environ.get(WEIGHTS_ENV):
        explicit, source = os.environ[WEIGHTS_ENV], f"${WEIGHTS_ENV}"
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            path = path / WEIGHTS_FILENAME
        if not path.is_file():
            raise WeightsError(
                f"{source} points at '{path}', which does not exist. Point the add-on "
                f"preferences, --weights or ${WEIGHTS_ENV} at a .safetensors file made by "
                f"`{EXPORT_COMMAND}`, or unset it to use the installed weights."
            )
        return path
    try:
        return find_data_file(WEIGHTS_FILENAME)
    except LayoutError:
        raise WeightsError(
            f"No trained PRN weights are installed yet ({WEIGHTS_FILENAME} is not in "
            f"model_weights/). Train them with `{TRAIN_COMMAND}` (see README, Training), export "
            f"them with `{EXPORT_COMMAND}`, or point ${WEIGHTS_ENV} at a weights file."
        ) from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    info: WeightsInfo,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write the state dict (parameters and BatchNorm running statistics; floats as `dtype`,
    fp16 by default) as safetensors with `info` as metadata. Written to a temporary file and
    renamed, so a crash never leaves a half-written weights file."""
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        state[key] = (value.to(dtype) if value.is_floating_point() else value).contiguous()
    _write_atomic(state, Path(path), info)


def rewrite_info(path: str | os.PathLike[str], info: WeightsInfo) -> None:
    """Replace a weights file's metadata with `info`, tensors unchanged (same dtype and bytes);
    atomic like `save_weights`."""
    path = Path(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, error) from error
    _write_atomic(state, path, info)


def _write_atomic(state: dict[str, torch.Tensor], path: Path, info: WeightsInfo) -> None:
    """safetensors with `info` as metadata, through a temporary file and a rename, so a crash
    never leaves a half-written weights file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=info.to_metadata())
    os.chmod(tmp, 0o644)  # safetensors creates 0600; weights are shipped and shared read-only
    os.replace(tmp, path)


def _unreadable(path: Path, error: Exception) -> WeightsError:
    return WeightsError(
        f"'{path}' is not a readable safetensors weights file ({error}); it may be truncated or "
        f"another format. Re-copy it, re-export it with `{EXPORT_COMMAND}`, or delete it."
    )


def read_info(path: str | os.PathLike[str]) -> WeightsInfo:
    """The `WeightsInfo` of a weights file (with its sha256), without loading the tensors."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, error) from error
    if "layout_id" not in meta:
        raise WeightsError(
            f"'{path}' is a safetensors file without prn-blender metadata (no layout_id): it is "
            f"not a prn-blender weights file. Use one made by `{EXPORT_COMMAND}`."
        )
    try:
        info = WeightsInfo.from_metadata(meta)
    except (ValueError, TypeError) as error:
        raise WeightsError(
            f"The metadata of '{path}' is damaged ({error}); re-export the weights."
        ) from error
    if info.format_version != FORMAT_VERSION:
        raise WeightsError(
            f"'{path}' uses weights format {info.format_version}, this version of prn-blender "
            f"reads format {FORMAT_VERSION}. Update prn-blender or re-export the weights."
        )
    return dataclasses.replace(info, sha256=file_sha256(path))


def load_weights(
    path: str | os.PathLike[str] | None = None, expected_layout_id: str | None = None
) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """(float32 state dict, info) of a weights file (default: `default_weights_path()`).

    Raises WeightsError for a missing, corrupt, truncated or non-safetensors file, and for a
    file made for another UV layout than `expected_layout_id` (None = no check)."""
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
        raise _unreadable(resolved, error) from error
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, info


# ---------------------------------------------------------------------------- BatchNorm folding


class _ChannelScale(nn.Module):
    """Multiplies each channel by a constant: a folded BatchNorm's scale on an identity
    shortcut."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = x * scale + shift (per channel)."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _fold_into(
    conv: nn.Conv2d | nn.ConvTranspose2d, scale: torch.Tensor, shift: torch.Tensor | None
) -> None:
    """Scale `conv`'s output channels by `scale` and add `shift` as its bias, in place."""
    if isinstance(conv, nn.ConvTranspose2d):
        conv.weight.mul_(scale.reshape(1, -1, 1, 1))  # (in, out, kh, kw)
    else:
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))  # (out, in, kh, kw)
    if shift is not None:
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.bias = nn.Parameter(bias.clone())


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-only copy of a PRNet with every BatchNorm folded into the preceding convolution
    or transposed convolution (as a per-channel weight scale plus a bias); the input is not
    modified. Same outputs as `model.eval()` up to float rounding (about 1e-4 px), faster on CPU
    (DESIGN.md section 8). The residual blocks' BatchNorm after the sum is folded into both
    branches (`conv3` and the shortcut)."""
    from .prnet import ResBlock  # late import: prnet's builder imports this module

    fused = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in fused.modules():
            if isinstance(module, ResBlock):
                if not isinstance(module.bn, nn.BatchNorm2d):
                    continue
                scale, shift = _bn_scale_shift(module.bn)
                _fold_into(module.conv3, scale, shift)
                if isinstance(module.shortcut, nn.Conv2d):
                    _fold_into(module.shortcut, scale, None)
                else:
                    module.shortcut = _ChannelScale(scale)
                module.bn = nn.Identity()
            elif isinstance(module, nn.Sequential):
                children = list(module.children())
                for index in range(len(children) - 1):
                    conv, bn = children[index], children[index + 1]
                    if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d) and isinstance(
                        bn, nn.BatchNorm2d
                    ):
                        scale, shift = _bn_scale_shift(bn)
                        _fold_into(conv, scale, shift)
                        module[index + 1] = nn.Identity()
    for parameter in fused.parameters():
        parameter.requires_grad_(False)
    return fused


def load_prnet(
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    expected_layout_id: str | None = None,
    fuse_bn: bool = True,
    allow_untrained: bool = False,
) -> tuple[nn.Module, WeightsInfo]:
    """The network ready for inference, and what its weights file says about itself.

    weights: a file, a folder holding it, or None (the default lookup, `default_weights_path`).
    device: "auto" / "cpu" / "cuda" / "mps" or a torch.device (`device.select_device`).
    expected_layout_id: the UV layout in use; None = the installed layout's id. fuse_bn: fold
    BatchNorm into the convolutions (faster, same output). Refuses untrained weights unless
    `allow_untrained`. The model is in eval mode, channels_last on CPU; call it under
    `torch.inference_mode()` with (N, 3, 256, 256) RGB in [0, 1]: out come crop pixels."""
    from .device import prepare_for_inference, select_device
    from .prnet import PRNet, trainable_parameter_count

    if expected_layout_id is None:
        from ..core.layout import load_layout

        expected_layout_id = load_layout().layout_id
    state, info = load_weights(weights, expected_layout_id=expected_layout_id)
    if not info.trained and not allow_untrained:
        raise WeightsError(
            "The installed weights file holds an untrained network (a test or smoke-run "
            f"export). Train real weights with `{TRAIN_COMMAND}` and export them."
        )
    model = PRNet()
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(
            "The weights file does not fit this version's network (missing, extra or "
            f"differently shaped tensors: {str(error)[:200]}). Use weights exported for it."
        ) from error
    if info.parameter_count != trainable_parameter_count(model):
        raise WeightsError(
            f"The weights file says {info.parameter_count:,} parameters, the network has "
            f"{trainable_parameter_count(model):,}. Re-export the weights."
        )
    model.eval()
    inference_model: nn.Module = fuse_batchnorm(model) if fuse_bn else model
    target = device if isinstance(device, torch.device) else select_device(device)
    return prepare_for_inference(inference_model, target), info
