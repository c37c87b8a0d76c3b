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
