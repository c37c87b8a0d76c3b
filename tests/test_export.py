"""Export: TorchScript and ONNX give the same landmarks as PyTorch within 0.1 px."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from legalign.models import heatmap_codec as hc  # noqa: E402
from legalign.models.heatmap_net import build_model  # noqa: E402
from legalign.training.export import (  # noqa: E402
    ExportError,
    compare_outputs,
    export_nets,
    film_like_inputs,
    onnx_runner,
    torchscript_runner,
)

SHAPE = (96, 64)
STRIDE = 4


@pytest.fixture(scope="module")
def small_net():
    """A small randomly initialised net from the model registry, with an output layer
    scaled up so the heatmaps have clear, distinct peaks (the default init is ~0)."""
    torch.manual_seed(0)
    net = build_model("resnet18_fpn", 5, depth=2, out_stride=STRIDE, head_channels=16).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.out.weight, std=0.5)
    return net


def _landmarks(heatmaps: np.ndarray) -> np.ndarray:
    xy, _ = hc.decode(heatmaps)
    return hc.from_heatmap(xy, STRIDE)


def test_onnx_and_torchscript_give_pytorch_landmarks_within_0_1_px(tmp_path, small_net):
    net = small_net
    report = export_nets(
        {"coarse": (net, SHAPE, STRIDE)}, tmp_path, exporter="torchscript", n_check=2
    )
    assert report["ok"]
    x = film_like_inputs(SHAPE, n=3, seed=11)  # a batch size other than the exported one
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    onnx_out = onnx_runner(tmp_path / "coarse.onnx")(x)
    ts_out = torchscript_runner(tmp_path / "coarse.torchscript.pt")(x)
    assert onnx_out.shape == ref.shape == (3, 5, SHAPE[0] // STRIDE, SHAPE[1] // STRIDE)
    p_ref, p_onnx, p_ts = _landmarks(ref), _landmarks(onnx_out), _landmarks(ts_out)
    assert np.hypot(*(p_ref - p_onnx).reshape(-1, 2).T).max() < 0.1
    assert np.hypot(*(p_ref - p_ts).reshape(-1, 2).T).max() < 0.1
    # the landmarks are not degenerate: they differ between channels and images
    assert len({tuple(np.round(p, 3)) for p in p_ref.reshape(-1, 2)}) > 5
    saved = json.loads((tmp_path / "export_report.json").read_text())
    assert saved["networks"]["coarse"]["onnx"]["max_landmark_diff_px"] < 0.1


def test_compare_outputs_detects_a_shifted_heatmap():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:24, 0:16]
    hm = np.exp(-((xx - 7.3) ** 2 + (yy - 11.6) ** 2) / (2 * 1.5**2))[None, None]
    hm = hm + 0.001 * rng.random(hm.shape)
    moved = np.roll(hm, 1, axis=-1)  # one heatmap pixel = STRIDE input pixels
    d = compare_outputs(hm.astype(np.float32), moved.astype(np.float32), STRIDE)
    assert d["max_landmark_diff_px"] == pytest.approx(STRIDE, abs=0.05)
    same = compare_outputs(hm.astype(np.float32), hm.astype(np.float32), STRIDE)
    assert same["max_landmark_diff_px"] == 0.0


def test_export_fails_when_the_model_does_not_match(tmp_path, monkeypatch, small_net):
    import legalign.training.export as ex

    net = small_net
    real = ex.onnx_runner

    def corrupted(path):
        run = real(path)
        return lambda x: np.roll(run(x), 2, axis=-1)

    monkeypatch.setattr(ex, "onnx_runner", corrupted)
    with pytest.raises(ExportError, match="coarse.onnx: landmarks differ by"):
        export_nets({"coarse": (net, SHAPE, STRIDE)}, tmp_path, ("onnx",), exporter="torchscript")
    assert json.loads((tmp_path / "export_report.json").read_text())["ok"] is False


def test_unknown_format_is_an_error(tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_nets({}, tmp_path, ("tflite",))


@pytest.mark.slow
def test_cli_export_of_a_checkpoint_with_the_default_exporter(tmp_path, capsys, monkeypatch):
    import argparse

    from tiny_checkpoint import tiny_checkpoint, tiny_spec_dict

    from legalign.pipeline import locate
    from legalign.pipeline.commands import export as cmd

    # the untrained tiny network's joint peaks are far below configs/locator.yaml's
    # min_leg_score (chosen on the shipped model): let every coarse leg count, so that the
    # exported networks have landmarks to be compared on
    monkeypatch.setattr(
        locate,
        "default_locator_rules",
        lambda: locate.LocatorRules(min_leg_score=1e-6, min_half_leg_score=1e-6),
    )

    ckpt = tiny_checkpoint(tmp_path / "small.pt", seed=3, out_std=0.5, peak_threshold=0.01)
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    out = tmp_path / "out"
    argv = [str(ckpt), "--out", str(out), "--check-dataset", "synthetic:2", "--check-films", "2"]
    assert cmd.run(parser.parse_args(argv)) == 0
    printed = capsys.readouterr().out
    assert "coarse.onnx" in printed and "fine.torchscript.pt" in printed
    assert "onnx locator on 2 film(s)" in printed
    for f in ("coarse.onnx", "fine.onnx", "coarse.torchscript.pt", "fine.torchscript.pt"):
        assert (out / f).stat().st_size > 10_000
    meta = json.loads((out / "locator_spec.json").read_text())
    assert meta["spec"]["fine_size"] == tiny_spec_dict()["fine_size"]
    report = json.loads((out / "export_report.json").read_text())
    assert report["ok"]
    for fmt in ("onnx", "torchscript"):
        check = report["locator_check"][fmt]
        assert check["mismatches"] == [] and check["landmarks_compared"] > 0
        assert check["max_landmark_diff_px"] < 0.1
    for net in ("coarse", "fine"):
        for fmt in ("onnx", "torchscript"):
            assert report["networks"][net][fmt]["max_landmark_diff_px"] < 0.1
    # the fine network exported as ONNX reproduces PyTorch's fine landmarks
    from legalign.models.checkpoint import load_checkpoint, nets_from_checkpoint

    _, _, fine = nets_from_checkpoint(load_checkpoint(ckpt))
    x = film_like_inputs((64, 64), n=2, seed=5)
    with torch.no_grad():
        ref = fine(torch.from_numpy(x)).numpy()
    got = onnx_runner(out / "fine.onnx")(x)
    a = hc.from_heatmap(hc.decode(ref)[0], 2)
    b = hc.from_heatmap(hc.decode(got)[0], 2)
    assert np.hypot(*(a - b).reshape(-1, 2).T).max() < 0.1


def test_cli_export_missing_checkpoint(tmp_path):
    import argparse

    from legalign.pipeline.commands import export as cmd
    from legalign.pipeline.errors import InputError

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    with pytest.raises(InputError, match=r"nope\.pt: checkpoint not found"):
        cmd.run(parser.parse_args([str(tmp_path / "nope.pt"), "--out", str(tmp_path)]))


class _FakeLocator:
    """Stands in for a Locator: fixed legs per film path (see ``_fake_locate``)."""

    def __init__(self, legs_by_path):
        self.legs_by_path = legs_by_path


def _fake_locate(locator, radiographs):
    return [locator.legs_by_path[rg.path] for rg in radiographs]


def test_compare_locators_reports_differences_and_mismatches(monkeypatch):
    from legalign.pipeline.landmarks import LegLandmarks
    from legalign.pipeline.radiograph import Radiograph
    from legalign.training import export as export_mod
    from legalign.training.export import compare_locators

    monkeypatch.setattr(export_mod, "locate_radiographs", _fake_locate)

    films = [Radiograph(path=p, pixels=np.zeros((4, 4), np.float32)) for p in ("a", "b", "c")]
    leg = LegLandmarks("right", {"knee_centre": (10.0, 20.0), "ankle_centre": (11.0, 40.0)})
    moved = LegLandmarks("right", {"knee_centre": (10.0, 20.0), "ankle_centre": (11.3, 40.4)})
    fewer = LegLandmarks("right", {"knee_centre": (10.0, 20.0)})
    ref = _FakeLocator({"a": [leg], "b": [leg], "c": [leg]})
    other = _FakeLocator({"a": [moved], "b": [], "c": [fewer]})
    res = compare_locators(ref, other, films)
    assert res["max_landmark_diff_px"] == pytest.approx(0.5)
    assert res["landmarks_compared"] == 2
    assert res["mismatches"] == ["b: 1 vs 0 legs", "c: right leg differs in landmarks or side"]
