"""Heatmap networks: a truncated torchvision backbone with a small FPN-style upsampling head.

Networks take a (N, 1, H, W) float tensor of grey values in [0, 1] and return (N, K, H/s,
W/s) heatmaps (s = ``out_stride``, 2 or 4).  Each input is standardised inside ``forward``
(mean 0, unit variance per image), so the exported graph is self-contained.  ``forward``
has no data-dependent Python control flow (TorchScript/ONNX export); decoding lives in
``models.heatmap_codec``.

Architectures are looked up by name in a registry (``build_model(arch, ...)``,
``available_architectures()``, ``register_architecture``).  No pretrained download
happens unless ``pretrained=True`` is asked for (ImageNet weights via torchvision, for
users with internet access).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(
    name: str,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a factory ``f(num_outputs, **kwargs) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def available_architectures() -> list[str]:
    return sorted(_REGISTRY)


def build_model(arch: str, num_outputs: int, **kwargs: Any) -> nn.Module:
    """Build a registered architecture; unknown names raise ``KeyError`` listing the choices."""
    if arch not in _REGISTRY:
        raise KeyError(
            f"unknown architecture {arch!r} (available: {', '.join(available_architectures())})"
        )
    return _REGISTRY[arch](num_outputs, **kwargs)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Blur(nn.Module):
    """A fixed binomial low-pass ([1, 2, 1] x [1, 2, 1] / 16) per channel, then ``stride``.

    Zhang R., "Making convolutional networks shift-invariant again", ICML 2019: a strided
    convolution or pooling samples its input without low-pass, so its output depends on the
    input's phase modulo the stride; blurring before (or, for max-pooling, between the max
    and the subsampling) removes most of that.  Reflect padding keeps the border unbiased.
    """

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k2 = (k[:, None] * k[None, :]) / 16.0
        self.register_buffer("kernel", k2.expand(channels, 1, 3, 3).clone(), persistent=False)
        self.channels = channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        kernel: torch.Tensor = self.get_buffer("kernel").to(dtype=x.dtype)
        return F.conv2d(x, kernel, stride=self.stride, groups=self.channels)


class ResNetHeatmapNet(nn.Module):
    """ResNet stem + the first ``depth`` stages, lateral 1x1 convs, top-down upsampling.

    depth 3 (stride-16 deepest features) is the default; ``out_stride`` 4 uses the
    stage-1 features as the finest lateral, 2 also adds the stem (stride 2).

    ``antialias``: every subsampling is low-passed first (``Blur``: before the stem's and
    each stage's strided convolutions, between the max-pool's max and its subsampling) and
    the top-down path upsamples bilinearly instead of by repetition, so that the heatmap
    moves smoothly with the image instead of swinging with its phase modulo the stride.
    """

    def __init__(
        self,
        num_outputs: int,
        backbone: str = "resnet18",
        depth: int = 3,
        out_stride: int = 4,
        head_channels: int = 64,
        pretrained: bool = False,
        antialias: bool = False,
    ) -> None:
        super().__init__()

        if depth not in (2, 3, 4):
            raise ValueError(f"depth must be 2, 3 or 4, got {depth}")
        if out_stride not in (2, 4):
            raise ValueError(f"out_stride must be 2 or 4, got {out_stride}")
        factory = getattr(torchvision.models, backbone)
        weights = "DEFAULT" if pretrained else None
        net = factory(weights=weights)
        conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        with torch.no_grad():
            # grey input: the RGB filters summed (meaningful for pretrained weights)
            conv1.weight.copy_(net.conv1.weight.sum(dim=1, keepdim=True))
        stages = [net.layer1, net.layer2, net.layer3, net.layer4][:depth]
        widths = [self._width(s) for s in stages]
        self.antialias = antialias
        if antialias:
            self.stem = nn.Sequential(Blur(1), conv1, net.bn1, net.relu)
            self.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), Blur(64, stride=2))
            # stage 1 keeps the resolution; stages 2.. halve it in their first block
            stages = [stages[0]] + [
                nn.Sequential(Blur(c), stage)
                for c, stage in zip(widths[:-1], stages[1:], strict=True)
            ]
        else:
            self.stem = nn.Sequential(conv1, net.bn1, net.relu)
            self.pool = net.maxpool
        self.stages = nn.ModuleList(stages)
        self.laterals = nn.ModuleList(nn.Conv2d(c, head_channels, 1) for c in widths)
        self.stem_lateral = nn.Conv2d(64, head_channels, 1) if out_stride == 2 else nn.Identity()
        self.use_stem = out_stride == 2
        self.head = nn.Sequential(
            ConvBNReLU(head_channels, head_channels), ConvBNReLU(head_channels, head_channels)
        )
        self.out = nn.Conv2d(head_channels, num_outputs, 1)
        nn.init.normal_(self.out.weight, std=0.001)
        assert self.out.bias is not None
        nn.init.constant_(self.out.bias, 0.0)
        self.out_stride = out_stride
        self.num_outputs = num_outputs

    def _up(self, y: torch.Tensor) -> torch.Tensor:
        if self.antialias:
            return F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.interpolate(y, scale_factor=2.0, mode="nearest")

    @staticmethod
    def _width(stage: nn.Module) -> int:
        last = list(stage.children())[-1]
        conv: Any = getattr(last, "conv3", None) or last.conv2  # Bottleneck or BasicBlock
        return int(conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (std + 1e-3)
        s = self.stem(x)
        f = self.pool(s)
        feats = []
        for stage in self.stages:
            f = stage(f)
            feats.append(f)
        y = self.laterals[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            y = self._up(y) + self.laterals[i](feats[i])
        if self.use_stem:
            y = self._up(y) + self.stem_lateral(s)
        return self.out(self.head(y))


def _resnet_factory(backbone: str, antialias: bool = False) -> Callable[..., nn.Module]:
    def factory(num_outputs: int, **kwargs: Any) -> nn.Module:
        return ResNetHeatmapNet(num_outputs, backbone=backbone, antialias=antialias, **kwargs)

    return factory


for _name in ("resnet18", "resnet34", "resnet50"):
    register_architecture(f"{_name}_fpn")(_resnet_factory(_name))
    register_architecture(f"{_name}_aa_fpn")(_resnet_factory(_name, antialias=True))
