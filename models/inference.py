"""An inference-only copy of a heatmap network, faster on CPU, same answers up to rounding.

``inference_copy(net)`` leaves ``net`` untouched (training keeps its BatchNorm modules)
and returns a copy in eval mode with

- every BatchNorm folded into the convolution before it.  ``torch.fx`` traces the
  network's data flow and a ``Conv2d`` whose only use is a ``BatchNorm2d`` (running
  statistics) becomes one convolution with the folded weights, so any architecture whose
  ``forward`` traces works and a retrained checkpoint of the same architecture needs
  nothing more; a network that does not trace is copied with its BatchNorm modules;
- its weights in ``channels_last`` memory format: oneDNN's convolutions then run
  without reordering their input and output on every call, and max pooling takes
  its vectorised path (NCHW max pooling was about a tenth of the network's time).

The copy takes and gives tensors as the plain network does (``ChannelsLastNet``
converts the input and the output); its outputs are the plain network's within float
rounding (the folded weights and the other memory layout change the summation order).
The copy shares no tensor with ``net``: later changes to ``net``'s weights do not reach
it.  Modules that are not plain ``nn.Module`` networks (a TorchScript module, an ONNX
Runtime wrapper) are returned as they are.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn


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


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution computing ``bn(conv(x))`` (eval mode), weights channels_last.

    The arithmetic of ``torch.nn.utils.fusion.fuse_conv_bn_weights``, with the weight
    written once, straight into its channels_last tensor (a fresh tensor costs a few
    milliseconds of page faults per megabyte here: loading is part of every run's start).
    """
    # folded only when the statistics are tracked (``_fold_batchnorm`` checks)
    assert bn.running_mean is not None and bn.running_var is not None
    running_mean: torch.Tensor = bn.running_mean
    rsqrt = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(running_mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(running_mean)
    out = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device="meta",  # no initialisation: the weights are set next
    )
    w = torch.empty_like(conv.weight, memory_format=torch.channels_last)
    torch.mul(conv.weight, (gamma * rsqrt).reshape(-1, 1, 1, 1), out=w)
    out.weight = nn.Parameter(w, requires_grad=False)
    out.bias = nn.Parameter((bias - running_mean) * rsqrt * gamma + beta, requires_grad=False)
    return out


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _fold_batchnorm(net: nn.Module) -> nn.Module:
    """``net`` traced, each Conv2d -> BatchNorm2d pair folded; every module that still
    holds tensors of ``net`` is copied.  Raises what tracing raises."""
    gm = fx.symbolic_trace(net)  # its leaf modules are ``net``'s own
    modules = dict(gm.named_modules())
    graph = gm.graph
    folded: set[str] = set()
    for node in list(graph.nodes):
        prev = node.args[0] if node.args else None
        if not (
            node.op == "call_module"
            and type(modules.get(node.target)) is nn.BatchNorm2d
            and isinstance(prev, fx.Node)
            and prev.op == "call_module"
            and type(modules.get(prev.target)) is nn.Conv2d
            and len(prev.users) == 1
            and modules[node.target].track_running_stats
        ):
            continue
        conv_name = str(prev.target)
        _set_module(gm, conv_name, _folded(modules[conv_name], modules[str(node.target)]))
        folded.add(conv_name)
        node.replace_all_uses_with(prev)
        graph.erase_node(node)
    out = fx.GraphModule(gm, graph)
    theirs = {t.data_ptr() for t in net.state_dict().values()}
    for name, m in list(out.named_modules()):
        own = [*m.parameters(recurse=False), *m.buffers(recurse=False)]
        if name and name not in folded and any(t.data_ptr() in theirs for t in own):
            _set_module(out, name, copy.deepcopy(m))
    if any(t.data_ptr() in theirs for t in out.state_dict().values()):
        out = copy.deepcopy(out)  # tensors held by the graph module itself
    return out


def inference_copy(net: Any) -> Any:
    """A copy of ``net`` for inference only (see the module docstring); ``net`` itself
    is not changed.  Returns ``net`` as it is when it has no ``nn.Conv2d`` (or is a
    TorchScript module)."""
    if not _foldable(net):
        return net
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            try:
                out = _fold_batchnorm(net)
            except Exception:  # noqa: BLE001 - a forward that does not trace keeps its BatchNorm
                out = copy.deepcopy(net)
    finally:
        net.train(was_training)
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return ChannelsLastNet(out).eval()
