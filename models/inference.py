"""An inference-only copy of a heatmap network, faster on CPU, same answers up to rounding.

``inference_copy(net)`` leaves ``net`` untouched (training keeps its BatchNorm modules)
and returns a copy in eval mode with

- every BatchNorm folded into the convolution before it (``torch.fx`` traces the
  network's data flow, so any architecture whose ``forward`` traces works: a retrained
  checkpoint of the same architecture needs nothing more); a network that does not
  trace keeps its BatchNorm modules;
- its weights in ``channels_last`` memory format: oneDNN's convolutions then run
  without reordering their input and output on every call, and max pooling takes
  its vectorised path (NCHW max pooling was about a tenth of the network's time).

The copy takes and gives tensors as the plain network does (``ChannelsLastNet``
converts the input and the output); its outputs are the plain network's within float
rounding (the folded weights and the other memory layout change the summation order).
The copy is made once: later changes to ``net``'s weights do not reach it.  Modules
that are not plain ``nn.Module`` networks (a TorchScript module, an ONNX Runtime
wrapper) are returned as they are.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse


class ChannelsLastNet(nn.Module):
    """Runs ``net`` (weights in ``channels_last``) on its input in ``channels_last`` and
    gives the output back in the ordinary contiguous layout: the same call contract as
    the plain network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x).contiguous()


def _foldable(net: Any) -> bool:
    if not isinstance(net, nn.Module) or isinstance(net, torch.jit.ScriptModule):
        return False
    return any(isinstance(m, nn.Conv2d) for m in net.modules())


def inference_copy(net: Any) -> Any:
    """A copy of ``net`` for inference only (see the module docstring); ``net`` itself
    is not changed.  Returns ``net`` as it is when it has no ``nn.Conv2d`` (or is a
    TorchScript module)."""
    if not _foldable(net):
        return net
    was_training = net.training
    net.eval()
    try:
        try:
            out = fuse(net, inplace=False)
        except Exception:  # noqa: BLE001 - a forward that does not trace keeps its BatchNorm
            out = copy.deepcopy(net)
    finally:
        net.train(was_training)
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return ChannelsLastNet(out).eval()
