"""The PRN network: Feng et al., "Joint 3D Face Reconstruction and Dense Alignment with Position
Map Regression Network", ECCV 2018, section 3.2 ("Network Architecture and Loss Function").

An encoder-decoder that regresses the UV position map from a 256x256 RGB face crop: one
convolution and 10 residual blocks down to 8x8x512, then 17 transposed convolutions back up to
256x256x3, kernel size 4, BatchNorm + ReLU after every layer, a final sigmoid. The structure
follows the official TensorFlow graph (`resfcn256` in YadiraF/PRNet, whose checkpoint index is
in ../shared/data/prnet-official): residual blocks are bottlenecks with 1x1 convolutions (25 of
the 53 kernels are 1x1, despite the paper's "kernel size of 4 for all"), no convolution has a
bias, BatchNorm uses epsilon 1e-3, and "SAME" padding is TensorFlow's (asymmetric: 1 before,
2 after for stride-1 4x4 kernels). 13,353,618 trainable values, like the official checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 256
# Output scaling (DESIGN.md section 3): position = 256 * (1.6 * sigmoid - 0.3), i.e. crop pixels
# in [-76.8, 332.8]. The paper's 256 * 1.1 * sigmoid would clip ~7 % of our layout's texels
# (it reaches the top of the forehead and under the jaw) even on frontal faces.
POSITION_SCALE_PX = 256.0 * 1.6
POSITION_OFFSET_PX = -256.0 * 0.3
POSITION_MIN_PX = POSITION_OFFSET_PX
POSITION_MAX_PX = POSITION_SCALE_PX + POSITION_OFFSET_PX
BN_EPS = 1e-3  # tf.contrib.layers.batch_norm's default
BN_MOMENTUM = 0.003  # tf decay 0.999 (PyTorch momentum = 1 - decay); see `set_bn_momentum`


def _same_pad(kernel: int, stride: int, size: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d without bias, padded like TensorFlow's 'SAME'."""

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
    """Transposed conv without bias, cropped like TensorFlow's conv2d_transpose 'SAME'
    (output = input x stride): the adjoint of `SameConv2d`, so the full output is cropped by
    the forward padding's 'before' amount."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(c_in, c_out, kernel, stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        k, s = self.kernel_size[0], self.stride[0]
        h, w = x.shape[-2] * s, x.shape[-1] * s
        top, _ = _same_pad(k, s, h)
        left, _ = _same_pad(k, s, w)
        y = super().forward(x)
        return y[..., top : top + h, left : left + w]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU, as tcl.conv2d with normalizer_fn=batch_norm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(SameConv2d(c_in, c_out, kernel, stride), _bn(c_out), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """The official bottleneck residual block (`resBlock` in YadiraF/PRNet predictor.py).

    1x1 conv to C/2 (BN, ReLU) -> kxk conv C/2 with the stride (BN, ReLU) -> 1x1 conv to C
    (no norm, no activation); plus the shortcut (a strided 1x1 conv when the shape changes);
    then BN and ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, kernel: int = 4) -> None:
        super().__init__()
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
    """transposed conv (no bias) -> BatchNorm -> activation."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, final: bool = False) -> None:
        act: nn.Module = nn.Sigmoid() if final else nn.ReLU(inplace=True)
        super().__init__(SameConvTranspose2d(c_in, c_out, 4, stride), _bn(c_out), act)


class PRNet(nn.Module):
    """Position map regression network (Feng et al., ECCV 2018, section 3.2, figure 3).

    `forward`: (N, 3, 256, 256) RGB in [0, 1] -> (N, 3, 256, 256) position map in crop pixels,
    channels (x right, y down, z towards the camera), range [-76.8, 332.8] px."""

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

    def forward_normalized(self, image: torch.Tensor) -> torch.Tensor:
        """The sigmoid output in (0, 1), before scaling to pixels."""
        return self.decoder(self.encoder(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(image) * POSITION_SCALE_PX + POSITION_OFFSET_PX


def normalized_to_pixels(normalized: torch.Tensor) -> torch.Tensor:
    return normalized * POSITION_SCALE_PX + POSITION_OFFSET_PX


def pixels_to_normalized(position_px: torch.Tensor) -> torch.Tensor:
    return (position_px - POSITION_OFFSET_PX) / POSITION_SCALE_PX


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_prnet(weights: str | None = None, width: int = 16) -> PRNet:
    """PRNet of Feng et al., ECCV 2018; `weights` = a safetensors file (net.weights)."""
    model = PRNet(width=width)
    if weights is not None:
        from .weights import load_weights

        state, _ = load_weights(weights)
        model.load_state_dict(state)
    return model
