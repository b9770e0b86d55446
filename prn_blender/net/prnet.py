"""The PRN network: Feng et al., "Joint 3D Face Reconstruction and Dense Alignment with Position
Map Regression Network", ECCV 2018, section 3.2 ("Network Architecture and Loss Function").

An encoder-decoder that regresses the UV position map from a 256x256 RGB face crop: one
convolution and 10 residual blocks down to 8x8x512, then 17 transposed convolutions back up to
256x256x3, kernel size 4, BatchNorm + ReLU after every layer, a final sigmoid. The structure
follows the official TensorFlow graph (`resfcn256` in YadiraF/PRNet, whose checkpoint index is
in ../shared/data/prnet-official; DESIGN.md section 6): residual blocks are bottlenecks with 1x1
convolutions (25 of the 53 kernels are 1x1, despite the paper's "kernel size of 4 for all"), no
convolution has a bias, BatchNorm has a scale and an offset and uses epsilon 1e-3, and "SAME"
padding is TensorFlow's (asymmetric for stride-1 4x4 kernels: 1 before, 2 after). 13,353,618
trainable values, like the official checkpoint. `net.tf_index.official_tf_to_torch_names` maps
every official variable onto this module's state dict.

Tensors are NCHW (channels_last memory format works too). Input: RGB in [0, 1]. Output: the
position map in crop pixels, channels (x right, y down, z towards the camera) (DESIGN.md
section 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 256
"""Side of the input crop and of the output position map, pixels / texels."""

# Output scaling (DESIGN.md section 3): position = 256 * (1.6 * sigmoid - 0.3), crop pixels in
# [-76.8, 332.8]. The paper's (and official code's) 256 * 1.1 * sigmoid would clip about 7 % of
# our layout's texels even on frontal faces: ICT's face island reaches the top of the forehead
# and under the jaw, outside the crop.
POSITION_SCALE_PX = INPUT_SIZE * 1.6
POSITION_OFFSET_PX = -INPUT_SIZE * 0.3
POSITION_MIN_PX = POSITION_OFFSET_PX  # -76.8
POSITION_MAX_PX = POSITION_SCALE_PX + POSITION_OFFSET_PX  # 332.8

BN_EPS = 1e-3
"""tf.contrib.layers.batch_norm's default epsilon (PyTorch's is 1e-5); DESIGN.md section 6."""
TF_BN_MOMENTUM = 1.0 - 0.999
"""PyTorch momentum equivalent to tf.contrib batch_norm's default decay 0.999 (not applied by
default: the module keeps PyTorch's 0.1, which tracks statistics faster in short trainings)."""


def _same_pad(kernel: int, stride: int, size: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) in pixels for one spatial axis of a conv:
    output = ceil(size / stride), the extra pixel (odd total) goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d without bias, padded like TensorFlow's 'SAME' (`tf.nn.conv2d(padding='SAME')`).

    Stride-1 4x4: pad 1 before, 2 after (output = input). Stride-2 4x4 on an even size: 1 and 1
    (output = input / 2). 1x1 kernels need no padding."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(c_in, c_out, kernel, stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if k > 1:
            top, bottom = _same_pad(k, s, x.shape[-2])
            left, right = _same_pad(k, s, x.shape[-1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class SameConvTranspose2d(nn.ConvTranspose2d):
    """Transposed conv without bias, like TensorFlow's conv2d_transpose with 'SAME'
    (output = input x stride).

    TF defines conv2d_transpose as the gradient (adjoint) of conv2d with 'SAME' padding on the
    output size, which is what PyTorch's ConvTranspose2d computes too (no spatial kernel flip):
    the full transposed output, (in - 1) * s + k, cropped by the forward padding, (k - s) // 2
    before and the rest after. Stride 2, k 4: 1 and 1 (PyTorch's own `padding=1`). Stride 1,
    k 4: 1 before, 2 after, so `padding=1` plus dropping the last row and column."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        total = max(kernel - stride, 0)
        before = total // 2
        super().__init__(c_in, c_out, kernel, stride, padding=before, bias=False)
        self._extra_after = total - 2 * before  # 1 for stride-1 4x4, else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = super().forward(x)
        if self._extra_after:
            y = y[..., : y.shape[-2] - self._extra_after, : y.shape[-1] - self._extra_after]
        return y


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU, as `tcl.conv2d` with `normalizer_fn=batch_norm`."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(SameConv2d(c_in, c_out, kernel, stride), _bn(c_out), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """The official bottleneck residual block (`resBlock` in YadiraF/PRNet predictor.py).

    1x1 conv to C/2 (BN, ReLU) -> k x k conv C/2 with the stride (BN, ReLU) -> 1x1 conv to C (no
    norm, no activation); plus the shortcut, a strided 1x1 conv (no norm, no activation) when the
    stride or the channel count changes, else the identity; then BN and ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, kernel: int = 4) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"ResBlock needs an even channel count, got {c_out}")
        self.shortcut = (
            SameConv2d(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()
        )
        self.conv1 = ConvBNReLU(c_in, c_out // 2, 1)
        self.conv2 = ConvBNReLU(c_out // 2, c_out // 2, kernel, stride)
        self.conv3 = SameConv2d(c_out // 2, c_out, 1)
        self.bn = _bn(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x)
        return self.relu(self.bn(out))


class DeconvBN(nn.Sequential):
    """4x4 transposed conv (no bias) -> BatchNorm -> ReLU, or sigmoid for the last layer
    (`tcl.conv2d_transpose` with `normalizer_fn=batch_norm`)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, final: bool = False) -> None:
        act: nn.Module = nn.Sigmoid() if final else nn.ReLU(inplace=True)
        super().__init__(SameConvTranspose2d(c_in, c_out, 4, stride), _bn(c_out), act)


class PRNet(nn.Module):
    """Position map regression network (Feng et al., ECCV 2018, section 3.2, figure 3).

    `forward`: (N, 3, 256, 256) RGB in [0, 1] -> (N, 3, 256, 256) position map in crop pixels,
    channels (x right, y down, z towards the camera), range [-76.8, 332.8] px.
    `width` = channels of the first layer (16 in the paper); other widths are for experiments.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        s = width
        self.encoder = nn.Sequential(
            ConvBNReLU(3, s, 4),  # 256 x 256 x 16
            ResBlock(s, 2 * s, 2),  # 128 x 128 x 32
            ResBlock(2 * s, 2 * s),  # 128 x 128 x 32
            ResBlock(2 * s, 4 * s, 2),  # 64 x 64 x 64
            ResBlock(4 * s, 4 * s),  # 64 x 64 x 64
            ResBlock(4 * s, 8 * s, 2),  # 32 x 32 x 128
            ResBlock(8 * s, 8 * s),  # 32 x 32 x 128
            ResBlock(8 * s, 16 * s, 2),  # 16 x 16 x 256
            ResBlock(16 * s, 16 * s),  # 16 x 16 x 256
            ResBlock(16 * s, 32 * s, 2),  # 8 x 8 x 512
            ResBlock(32 * s, 32 * s),  # 8 x 8 x 512
        )
        self.decoder = nn.Sequential(
            DeconvBN(32 * s, 32 * s),  # 8 x 8 x 512
            DeconvBN(32 * s, 16 * s, 2),  # 16 x 16 x 256
            DeconvBN(16 * s, 16 * s),  # 16 x 16 x 256
            DeconvBN(16 * s, 16 * s),  # 16 x 16 x 256
            DeconvBN(16 * s, 8 * s, 2),  # 32 x 32 x 128
            DeconvBN(8 * s, 8 * s),  # 32 x 32 x 128
            DeconvBN(8 * s, 8 * s),  # 32 x 32 x 128
            DeconvBN(8 * s, 4 * s, 2),  # 64 x 64 x 64
            DeconvBN(4 * s, 4 * s),  # 64 x 64 x 64
            DeconvBN(4 * s, 4 * s),  # 64 x 64 x 64
            DeconvBN(4 * s, 2 * s, 2),  # 128 x 128 x 32
            DeconvBN(2 * s, 2 * s),  # 128 x 128 x 32
            DeconvBN(2 * s, s, 2),  # 256 x 256 x 16
            DeconvBN(s, s),  # 256 x 256 x 16
            DeconvBN(s, 3),  # 256 x 256 x 3
            DeconvBN(3, 3),  # 256 x 256 x 3
            DeconvBN(3, 3, final=True),  # 256 x 256 x 3, sigmoid
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: tf.contrib.layers' default `xavier_initializer()`
        (Glorot uniform) for every kernel, BatchNorm scale 1 and offset 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_uniform_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward_normalized(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, 256, 256) RGB in [0, 1] -> the sigmoid output in (0, 1), before scaling to
        pixels (`normalized_to_pixels`). Train on this with `pixels_to_normalized` targets."""
        return self.decoder(self.encoder(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, 256, 256) RGB in [0, 1] -> (N, 3, 256, 256) position map, crop pixels."""
        return normalized_to_pixels(self.forward_normalized(image))


def normalized_to_pixels(normalized: torch.Tensor) -> torch.Tensor:
    """Sigmoid output in (0, 1) -> crop pixels in (-76.8, 332.8) (DESIGN.md section 3)."""
    return normalized * POSITION_SCALE_PX + POSITION_OFFSET_PX


def pixels_to_normalized(position_px: torch.Tensor) -> torch.Tensor:
    """Crop pixels -> the sigmoid's (0, 1) scale; inverse of `normalized_to_pixels`."""
    return (position_px - POSITION_OFFSET_PX) / POSITION_SCALE_PX


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of trainable values (13,353,618 for the paper's PRNet)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_prnet(
    weights: str | None = None, width: int = 16, expected_layout_id: str | None = None
) -> PRNet:
    """PRN of Feng et al., "Joint 3D Face Reconstruction and Dense Alignment with Position Map
    Regression Network", ECCV 2018 (section 3.2; official structure, DESIGN.md section 6).

    weights: a safetensors file written by `net.weights.save_weights`; None = the official
    Xavier initialisation. `expected_layout_id`, when given, refuses weights of another layout.
    The model is returned in training mode; `net.weights.load_prnet` gives an eval model."""
    model = PRNet(width=width)
    if weights is not None:
        from .weights import load_weights

        state, _ = load_weights(weights, expected_layout_id=expected_layout_id)
        model.load_state_dict(state)
    return model


def unmirror_position_maps(maps: torch.Tensor) -> torch.Tensor:
    """Position maps predicted for left-right mirrored crops, returned to the unmirrored
    crop: (N, 3, R, R) crop px -> same. Valid for a mirror-symmetric UV layout (texel column
    c and R-1-c are mirror points of the face, `core.layout.is_mirror_symmetric`): the map's
    columns swap and x (pixel centres at integers) becomes R - 1 - x."""
    side = maps.shape[-1]
    out = maps.flip(-1)
    return torch.cat([(side - 1) - out[:, :1], out[:, 1:]], dim=1)


def predict_at(model: nn.Module, image: torch.Tensor, input_size: int | None = None,
               mirror_average: bool = False) -> torch.Tensor:
    """`model(image)` for (N, 3, R, R) crops in [0, 1] -> (N, 3, R, R) crop pixels; with
    `input_size` < R (a network trained at a coarser size) the crops are area-averaged down
    to input_size first and the maps upsampled back bilinearly, which is also how training
    scores a coarse stage. Positions keep meaning R-crop pixels at any input size.

    `mirror_average` also runs the left-right mirrored crops (one batch of 2N) and averages
    the two maps (test-time augmentation; needs a mirror-symmetric layout)."""
    side = image.shape[-1]
    if input_size and input_size != side:
        image = F.interpolate(image, size=(input_size, input_size), mode="area")
    if mirror_average:
        image = torch.cat([image, image.flip(-1)])
    maps = model(image)
    if maps.shape[-1] != side:
        maps = F.interpolate(maps.float(), size=(side, side), mode="bilinear",
                             align_corners=False)
    if mirror_average:
        n = maps.shape[0] // 2
        maps = 0.5 * (maps[:n] + unmirror_position_maps(maps[n:]))
    return maps


__all__ = [
    "POSITION_MAX_PX",
    "POSITION_MIN_PX",
    "PRNet",
    "ResBlock",
    "build_prnet",
    "normalized_to_pixels",
    "pixels_to_normalized",
    "predict_at",
    "trainable_parameter_count",
    "unmirror_position_maps",
]
