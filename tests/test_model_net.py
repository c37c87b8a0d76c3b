"""Network registry, shapes, checkpoints (weights_only) and exportability."""

from __future__ import annotations

import pytest
import torch

from legalign.models.heatmap_net import available_architectures, build_model, register_architecture


@pytest.mark.parametrize("stride", [2, 4])
def test_output_shape(stride):
    net = build_model("resnet18_fpn", 5, depth=2, out_stride=stride, head_channels=16).eval()
    y = net(torch.rand(2, 1, 64, 96))
    assert y.shape == (2, 5, 64 // stride, 96 // stride)


def test_registry():
    assert "resnet18_fpn" in available_architectures()
    with pytest.raises(KeyError, match="unknown architecture"):
        build_model("nope", 3)
    with pytest.raises(ValueError):
        register_architecture("resnet18_fpn")(lambda n: None)


def test_forward_is_contrast_invariant():
    """Inputs are standardised inside the net: gain/offset changes do not matter."""
    torch.manual_seed(0)
    net = build_model("resnet18_fpn", 3, depth=2, out_stride=4, head_channels=16).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a, b = net(x), net(0.5 * x + 0.2)
    assert torch.allclose(a, b, atol=1e-4)


def test_torchscript_trace_matches():
    net = build_model("resnet18_fpn", 4, depth=2, out_stride=2, head_channels=16).eval()
    x = torch.rand(1, 1, 64, 64)
    traced = torch.jit.trace(net, x)
    with torch.no_grad():
        assert torch.allclose(traced(torch.rand(3, 1, 64, 64) * 0 + x), net(x), atol=1e-5)


@pytest.mark.parametrize("stride", [2, 4])
def test_antialiased_net_same_shapes_and_parameters(stride):
    plain = build_model("resnet18_fpn", 5, depth=3, out_stride=stride, head_channels=16)
    aa = build_model("resnet18_aa_fpn", 5, depth=3, out_stride=stride, head_channels=16)
    y = aa.eval()(torch.rand(2, 1, 64, 96))
    assert y.shape == (2, 5, 64 // stride, 96 // stride)
    # the low-pass filters are fixed, not learnt, and not stored in checkpoints
    assert sum(p.numel() for p in aa.parameters()) == sum(p.numel() for p in plain.parameters())
    assert set(aa.state_dict()) != set(plain.state_dict())  # stages sit behind their blur
    assert not any("kernel" in k for k in aa.state_dict())


def test_blur_is_a_normalised_low_pass():
    from legalign.models.heatmap_net import Blur

    flat = torch.full((1, 3, 8, 8), 0.7)
    assert torch.allclose(Blur(3)(flat), flat)  # unit gain, no border bias
    assert Blur(3, stride=2)(flat).shape == (1, 3, 4, 4)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    out = Blur(1)(checker.float()[None, None])
    # the highest frequency is removed: a 1-px checkerboard becomes flat grey
    assert float(out[0, 0, 2:-2, 2:-2].std()) < 1e-6
    assert torch.allclose(out[0, 0, 2:-2, 2:-2], torch.tensor(0.5))


def test_antialiased_net_moves_less_with_the_input_phase():
    """An untrained net's features, sampled at stride 16: with the low-pass in front of
    every subsampling, shifting the input by one pixel changes them much less."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, 160, 160)
    x = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)  # a smooth image

    def change(arch: str) -> float:
        torch.manual_seed(1)
        net = build_model(arch, 4, depth=3, out_stride=4, head_channels=16).eval()
        with torch.no_grad():
            a = net(x[..., 16:144, 16:144])
            b = net(x[..., 17:145, 16:144])  # the content moves one pixel up
        return float((a - b).abs().mean() / a.abs().mean())

    assert change("resnet18_aa_fpn") < 0.7 * change("resnet18_fpn")
