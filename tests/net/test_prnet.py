"""PRNet structure and TF-'SAME' semantics (Feng et al., ECCV 2018, section 3.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prn_blender.net.prnet import (
    POSITION_MAX_PX,
    POSITION_MIN_PX,
    PRNet,
    SameConv2d,
    SameConvTranspose2d,
    build_prnet,
    normalized_to_pixels,
    pixels_to_normalized,
    predict_at,
    trainable_parameter_count,
    unmirror_position_maps,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def model() -> PRNet:
    torch.manual_seed(0)
    return PRNet().eval()


def _ones_kernel(layer: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        layer.weight.fill_(1.0)
    return layer


def test_paper_network_has_official_trainable_count() -> None:
    assert trainable_parameter_count(build_prnet()) == 13_353_618


def test_output_range_constants_are_the_design_range() -> None:
    assert POSITION_MIN_PX == pytest.approx(-76.8)
    assert POSITION_MAX_PX == pytest.approx(332.8)
    assert normalized_to_pixels(torch.tensor([0.0, 0.5, 1.0])).tolist() == pytest.approx(
        [-76.8, 128.0, 332.8]
    )
    px = torch.tensor([-50.0, 0.0, 300.0])
    assert normalized_to_pixels(pixels_to_normalized(px)).tolist() == pytest.approx(px.tolist())


def test_forward_maps_crop_to_position_map_in_pixel_range(model: PRNet) -> None:
    image = torch.rand(2, 3, 256, 256)
    with torch.inference_mode():
        out = model(image)
    assert out.shape == (2, 3, 256, 256)
    assert out.dtype == torch.float32
    assert POSITION_MIN_PX <= out.min().item() and out.max().item() <= POSITION_MAX_PX


def test_eval_forward_is_deterministic_and_batch_independent(model: PRNet) -> None:
    image = torch.rand(2, 3, 256, 256)
    with torch.inference_mode():
        a = model(image)
        b = model(image)
        single = model(image[1:])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a[1:], atol=1e-3, rtol=0)


def test_channels_last_input_gives_same_output(model: PRNet) -> None:
    image = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        plain = model(image)
        cl_model = PRNet().eval()
        cl_model.load_state_dict(model.state_dict())
        cl_model = cl_model.to(memory_format=torch.channels_last)
        cl = cl_model(image.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, plain, atol=1e-3, rtol=0)


def test_stage_sizes_follow_the_official_graph(model: PRNet) -> None:
    expected_encoder = [(16, 256), (32, 128), (32, 128), (64, 64), (64, 64), (128, 32),
                        (128, 32), (256, 16), (256, 16), (512, 8), (512, 8)]
    expected_decoder = [(512, 8), (256, 16), (256, 16), (256, 16), (128, 32), (128, 32),
                        (128, 32), (64, 64), (64, 64), (64, 64), (32, 128), (32, 128),
                        (16, 256), (16, 256), (3, 256), (3, 256), (3, 256)]
    x = torch.rand(1, 3, 256, 256)
    sizes = []
    with torch.inference_mode():
        for layer in [*model.encoder, *model.decoder]:
            x = layer(x)
            assert x.shape[2] == x.shape[3]
            sizes.append((x.shape[1], x.shape[2]))
    assert sizes == expected_encoder + expected_decoder
    assert len(model.decoder) == 17 and len(model.encoder) == 11


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(1)
    net = PRNet().train()
    out = net.forward_normalized(torch.rand(2, 3, 256, 256))
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_stride1_conv_pads_one_before_two_after_like_tf_same() -> None:
    # 4x4 all-ones kernel: out[r, c] = sum of in[r-1 : r+3, c-1 : c+3] (TF pads 1 before).
    conv = _ones_kernel(SameConv2d(1, 1, 4, 1))
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 0, 0] = 1.0
    out = conv(image)[0, 0]
    expected = torch.zeros(8, 8)
    expected[0:2, 0:2] = 1.0
    assert torch.equal(out, expected)
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 7, 7] = 1.0
    expected = torch.zeros(8, 8)
    expected[5:8, 5:8] = 1.0  # rows r with r-1 <= 7 <= r+2
    assert torch.equal(conv(image)[0, 0], expected)


def test_transposed_conv_is_tf_same_adjoint_with_known_impulse_response() -> None:
    deconv = _ones_kernel(SameConvTranspose2d(1, 1, 4, 2))
    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, 0, 0] = 1.0
    out = deconv(image)[0, 0]
    expected = torch.zeros(8, 8)
    expected[0:3, 0:3] = 1.0  # full output rows 0..3, TF crops 1 before
    assert torch.equal(out, expected)
    deconv1 = _ones_kernel(SameConvTranspose2d(1, 1, 4, 1))
    out = deconv1(image)[0, 0]
    expected = torch.zeros(4, 4)
    expected[0:3, 0:3] = 1.0  # rows -1..2 of the full output survive the 1-before crop
    assert torch.equal(out, expected)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 9])
def test_transposed_conv_equals_gradient_of_same_conv(stride: int, size: int) -> None:
    # TF defines conv2d_transpose as conv2d's input gradient: the same kernel tensor must agree.
    torch.manual_seed(stride * 10 + size)
    conv = SameConv2d(5, 7, 4, stride)
    deconv = SameConvTranspose2d(7, 5, 4, stride)
    with torch.no_grad():
        deconv.weight.copy_(conv.weight)
    z = torch.randn(1, 5, size * stride, size * stride, requires_grad=True)
    out = conv(z)
    assert out.shape[-1] == size
    upstream = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * upstream).sum(), z)
    torch.testing.assert_close(deconv(upstream), grad, atol=1e-5, rtol=0)


def test_unmirror_turns_the_mirrored_face_map_into_the_face_map() -> None:
    """The ICT neutral at yaw 25, roll 10 (x = 110 in a 256 px crop) and at yaw -25, roll -10
    (x = 255 - 110, the left-right mirrored crop): unmirroring the second map gives the first
    (pixel centres at integers, so x -> 255 - x; the layout's columns are mirror pairs)."""
    from prn_blender.core.layout import load_layout
    from tests.core.conftest import pose_ict_neutral

    layout = load_layout()
    face = layout.face_mask
    a = pose_ict_neutral(layout, 25.0, 5.0, 10.0, 8.0, (110.0, 128.0, 100.0)).position_map
    b = pose_ict_neutral(layout, -25.0, 5.0, -10.0, 8.0, (145.0, 128.0, 100.0)).position_map
    mirrored = torch.from_numpy(np.nan_to_num(b)).permute(2, 0, 1)[None]
    back = unmirror_position_maps(mirrored)[0].permute(1, 2, 0).numpy()
    error = np.linalg.norm(back - np.nan_to_num(a), axis=-1)[face]
    assert np.median(error) < 1e-3 and error.max() < 0.6  # px; layout asymmetry <= 0.07 cm


def test_mirror_averaged_prediction_is_mirror_equivariant(model: PRNet) -> None:
    torch.manual_seed(3)
    x = torch.rand(2, 3, 256, 256)
    with torch.inference_mode():
        direct = predict_at(model, x, 128, mirror_average=True)
        via_mirror = unmirror_position_maps(predict_at(model, x.flip(-1), 128,
                                                       mirror_average=True))
        plain = predict_at(model, x, 128)
    torch.testing.assert_close(direct, via_mirror, atol=1e-3, rtol=0)
    assert (direct - plain).abs().mean() > 1e-3  # an untrained network is not symmetric
