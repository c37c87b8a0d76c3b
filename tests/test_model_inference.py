"""The locator's inference copies (``models.inference``): the same landmarks as the plain
networks, the training modules untouched, any checkpoint of the architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from legalign.models.checkpoint import build_nets, load_checkpoint, nets_from_checkpoint
from legalign.models.inference import inference_copy
from legalign.pipeline.coarse_to_fine import locate_radiographs
from legalign.pipeline.locate import Locator
from legalign.pipeline.radiograph import Radiograph
from legalign.training.synth.film import generate_film


def _batchnorms(net: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


def _randomise_batchnorm(net: nn.Module, seed: int) -> None:
    """Running statistics and affine terms far from the identity, as a trained net has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in _batchnorms(net):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(n, generator=g) * 2.0 + 0.1)
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=g) * 0.2)


@pytest.fixture(scope="module")
def shipped():
    return nets_from_checkpoint(load_checkpoint(None))


def test_copy_folds_batchnorm_and_leaves_the_training_net_alone(shipped):
    spec, coarse, _ = shipped
    net = build_nets(spec)[0]
    net.load_state_dict(coarse.state_dict())
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = inference_copy(net)
    assert net.training, "the training net's mode is kept"
    assert len(_batchnorms(net)) == len(_batchnorms(coarse)) > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert _batchnorms(fast) == [], "every BatchNorm is folded into its convolution"
    assert not fast.training
    x = torch.rand(2, 1, 64, 32)
    with torch.inference_mode():
        got = fast(x)
        want = net.eval()(x)
    assert got.is_contiguous() and got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    # the copy shares no tensor with the net: training on does not reach it
    theirs = {t.data_ptr() for t in net.state_dict().values()}
    assert not theirs & {t.data_ptr() for t in fast.state_dict().values()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    with torch.inference_mode():
        assert torch.equal(fast(x), got)


def test_a_forward_that_does_not_trace_keeps_its_batchnorm():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(x))
            return y if float(x.mean()) > 0.5 else -y  # data-dependent: fx cannot trace it

    net = Branchy()
    _randomise_batchnorm(net, 3)
    net.eval()
    fast = inference_copy(net)
    assert len(_batchnorms(fast)) == 1 and fast.net is not net
    for x in (torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8) + 1.0):
        with torch.inference_mode():
            assert torch.allclose(fast(x), net(x), atol=1e-6)


def test_copy_of_any_checkpoint_of_the_architecture(shipped):
    """A retrained checkpoint (other weights, other BatchNorm statistics) folds at load
    time as well: the copy is made from the modules, not from the shipped file."""
    spec = shipped[0]
    torch.manual_seed(1)
    coarse, fine = build_nets(spec)
    for seed, net in enumerate((coarse, fine)):
        _randomise_batchnorm(net, seed)
        net.eval()
        x = torch.rand(2, 1, 64, 32)  # fully convolutional: a small input tests the same
        with torch.inference_mode():
            want = net(x)
            got = inference_copy(net)(x)
        assert torch.allclose(got, want, atol=1e-4 * float(want.abs().max()), rtol=1e-4)


def test_modules_that_are_not_torch_networks_run_as_they_are():
    class Wrapped(nn.Module):  # e.g. the ONNX Runtime wrapper of training.export
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    w = Wrapped()
    assert inference_copy(w) is w


def test_optimised_locator_gives_the_plain_locators_landmarks(shipped):
    """The shipped model on a synthetic bilateral film: the same legs, sides and
    landmarks within 1e-3 px as the plain networks."""
    spec, coarse, fine = shipped
    film = generate_film(5, size="small")
    pixels = film.image.astype(np.float32) / float(2**film.bits_stored - 1)
    rg = Radiograph(path="synthetic", pixels=pixels, mirrored=film.mirrored)
    plain = Locator(spec, coarse, fine, optimise=False)
    fast = Locator(spec, coarse, fine)
    assert fast.optimised and not plain.optimised
    want = locate_radiographs(plain, [rg])[0]
    got = locate_radiographs(fast, [rg])[0]
    assert len(want) == 2, "the shipped model finds both legs of this film"
    assert [leg.side for leg in got] == [leg.side for leg in want]
    for a, b in zip(got, want, strict=True):
        assert set(a.points) == set(b.points)
        for name, p in b.points.items():
            assert np.hypot(*np.subtract(a.points[name], p)) < 1e-3, name
            assert abs(a.confidence[name] - b.confidence[name]) < 1e-4, name
    # the plain nets the fast locator was built from still hold their BatchNorm modules
    assert _batchnorms(fast.coarse_net) and _batchnorms(fast.fine_net)


def test_copy_of_an_antialiased_net():
    """The anti-aliased architecture (fixed blur convolutions between the folded ones)
    folds the same way."""
    from legalign.models.heatmap_net import build_model

    torch.manual_seed(2)
    net = build_model("resnet18_aa_fpn", 8, depth=3, out_stride=2, head_channels=32)
    _randomise_batchnorm(net, 3)
    net.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        want = net(x)
        copy = inference_copy(net)
        got = copy(x)
    assert not _batchnorms(copy)
    assert torch.allclose(got, want, atol=1e-4 * float(want.abs().max()), rtol=1e-4)
