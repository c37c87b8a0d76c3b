"""Export a locator checkpoint's two heatmap networks to TorchScript and ONNX.

``export_locator(checkpoint, out_dir, formats=("torchscript", "onnx"))`` writes, for each
network (``coarse``, ``fine``):

- ``<net>.torchscript.pt`` (``torch.jit.trace``; ``forward`` has no data-dependent
  control flow, so tracing is exact) - load with ``torch.jit.load``;
- ``<net>.onnx`` (one self-contained file, opset ``opset``; input ``image`` float32
  ``(N, 1, H, W)`` in [0, 1], output ``heatmaps`` ``(N, K, H/s, W/s)``; the batch axis is
  dynamic, H and W are the sizes the locator uses: ``coarse_height x coarse_width`` and
  ``fine_size x fine_size``);

plus ``locator_spec.json`` (the ``LocatorSpec``, landmark names, heatmap conventions:
heatmap pixel ``j`` is centred on input pixel ``(j + 0.5) * stride - 0.5``) and
``export_report.json``.  Every exported network is checked against PyTorch on a batch of
film-like test inputs: landmarks decoded from both with ``models.heatmap_codec`` must
agree within ``tolerance_px`` (0.1 input pixels by default); otherwise ``ExportError``.

The ONNX graph is made with the ``torch.export`` based exporter (``exporter="dynamo"``,
PyTorch's default) or the older TorchScript based one (``exporter="torchscript"``);
``"auto"`` tries the first and falls back to the second if it fails.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from legalign.models import heatmap_codec as hc
from legalign.models.checkpoint import DEFAULT_WEIGHTS, load_checkpoint, nets_from_checkpoint
from legalign.models.spec import LocatorSpec
from legalign.pipeline import __version__
from legalign.pipeline.coarse_to_fine import locate_radiographs
from legalign.pipeline.errors import LegalignError
from legalign.pipeline.landmarks import LANDMARK_NAMES
from legalign.pipeline.locate import Locator

FORMATS = ("torchscript", "onnx")
EXPORTERS = ("auto", "dynamo", "torchscript")


class ExportError(LegalignError):
    """An export failed or does not reproduce the PyTorch model."""


# ---------------------------------------------------------------- inputs and decoding


def film_like_inputs(shape: tuple[int, int], n: int = 2, seed: int = 0) -> np.ndarray:
    """``n`` film-like float32 images (N, 1, H, W) in [0, 1]: smooth background, a
    bright bone-like band and a few blobs, plus noise (deterministic for ``seed``)."""

    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, 1, h, w), np.float32)
    for i in range(n):
        img = gaussian_filter(rng.random((h, w)).astype(np.float32), sigma=max(h, w) / 16)
        img = (img - img.min()) / (np.ptp(img) + 1e-6) * 0.3
        cx = w * rng.uniform(0.3, 0.7) + (yy - h / 2) * rng.uniform(-0.1, 0.1)
        img += 0.4 * np.exp(-(((xx - cx) / (0.08 * w)) ** 2))
        for _ in range(4):
            bx, by = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(0.02, 0.06) * max(h, w)
            img += 0.3 * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * r * r))
        img += rng.normal(0, 0.01, size=(h, w)).astype(np.float32)
        out[i, 0] = np.clip(img, 0, 1)
    return out


def decode_landmarks(heatmaps: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, h, w) heatmaps -> (N, K, 2) input-pixel coordinates and (N, K) peak values
    (``models.heatmap_codec.decode`` then ``from_heatmap``)."""

    xy, conf = hc.decode(np.asarray(heatmaps, dtype=np.float32))
    return hc.from_heatmap(xy, stride), conf


def compare_outputs(reference: np.ndarray, other: np.ndarray, stride: int) -> dict[str, float]:
    """Heatmap and decoded-landmark differences between two outputs of the same inputs."""
    if reference.shape != other.shape:
        raise ExportError(f"output shapes differ: {reference.shape} vs {other.shape}")
    a, _ = decode_landmarks(reference, stride)
    b, _ = decode_landmarks(other, stride)
    return {
        "max_heatmap_abs_diff": float(np.abs(reference - other).max()),
        "heatmap_abs_max": float(np.abs(reference).max()),
        "max_landmark_diff_px": float(np.hypot(*(a - b).reshape(-1, 2).T).max()),
    }


# ---------------------------------------------------------------- exporters


def export_torchscript(net, example: np.ndarray, path: str | Path) -> Path:
    """Trace ``net`` (eval mode, CPU) on ``example`` and save it."""

    path = Path(path)
    net = net.eval().cpu()
    x = torch.from_numpy(np.ascontiguousarray(example))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit.trace deprecation notice
        traced = torch.jit.trace(net, (x,), check_trace=False)
        traced = torch.jit.freeze(traced.eval()) if hasattr(torch.jit, "freeze") else traced
        torch.jit.save(traced, str(path))
    return path


def export_onnx(
    net,
    example: np.ndarray,
    path: str | Path,
    opset: int = 18,
    exporter: str = "auto",
) -> tuple[Path, str]:
    """Export ``net`` to one ONNX file with a dynamic batch axis; returns (path, exporter used)."""

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    path = Path(path)
    net = net.eval().cpu()
    x = torch.from_numpy(np.ascontiguousarray(example))
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    errors = []
    for kind in order:
        for stale in (path, path.with_name(path.name + ".data")):
            stale.unlink(missing_ok=True)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                if kind == "dynamo":
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    torch.onnx.export(
                        net,
                        (x,),
                        str(path),
                        input_names=["image"],
                        output_names=["heatmaps"],
                        opset_version=opset,
                        dynamo=True,
                        external_data=False,
                        dynamic_shapes=({0: batch},),
                        verbose=False,
                    )
                else:
                    torch.onnx.export(
                        net,
                        (x,),
                        str(path),
                        input_names=["image"],
                        output_names=["heatmaps"],
                        opset_version=min(opset, 17),
                        dynamo=False,
                        dynamic_axes={"image": {0: "batch"}, "heatmaps": {0: "batch"}},
                    )
            _check_onnx(path)
            return path, kind
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - try the next exporter, report all
            errors.append(f"{kind}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
    for partial in (path, path.with_name(path.name + ".data")):  # leave no half-written file
        partial.unlink(missing_ok=True)
    raise ExportError(f"{path}: ONNX export failed ({'; '.join(errors)})")


def _check_onnx(path: Path) -> None:
    import onnx  # noqa: PLC0415 - optional extra, off the start-up path

    model = onnx.load(str(path))
    onnx.checker.check_model(model)


def onnx_runner(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the ONNX file with onnxruntime on the CPU."""
    import onnxruntime as ort  # noqa: PLC0415 - optional extra, off the start-up path

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run


def torch_runner(net) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run


def torchscript_runner(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit.load deprecation notice
        module = torch.jit.load(str(path), map_location="cpu")
    return torch_runner(module.eval())


# ---------------------------------------------------------------- exported locators


def _onnx_module(path: str | Path):
    """A ``torch.nn.Module`` whose forward runs an exported ONNX file with onnxruntime
    (CPU), so an exported pair can drive ``pipeline.locate.Locator`` unchanged."""

    class OnnxNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.path = str(path)
            self._run = onnx_runner(path)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self._run(x.detach().to("cpu", torch.float32).numpy())
            return torch.from_numpy(out).to(x.device)

    return OnnxNet()


def _torchscript_module(path: str | Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def exported_locator(export_dir: str | Path, fmt: str = "onnx"):
    """A ``pipeline.locate.Locator`` running the networks exported to ``export_dir``
    (``fmt`` "onnx" or "torchscript"), with the spec from ``locator_spec.json``."""

    d = Path(export_dir)
    meta = json.loads((d / "locator_spec.json").read_text())
    spec = LocatorSpec.from_dict(meta["spec"])
    if fmt == "onnx":
        coarse, fine = _onnx_module(d / "coarse.onnx"), _onnx_module(d / "fine.onnx")
    elif fmt == "torchscript":
        coarse = _torchscript_module(d / "coarse.torchscript.pt")
        fine = _torchscript_module(d / "fine.torchscript.pt")
    else:
        raise ValueError(f"fmt must be 'onnx' or 'torchscript', got {fmt!r}")
    return Locator(spec, coarse, fine, device="cpu")


def compare_locators(reference, other, radiographs: Sequence[Any]) -> dict[str, Any]:
    """Run two locators on the same films; the largest landmark difference (px) over
    legs found by both (legs pair in order: both sort by knee x), and the films where
    they found a different number of legs or landmarks."""
    worst = 0.0
    n_points = 0
    mismatches: list[str] = []
    for rg in radiographs:
        a, b = locate_radiographs(reference, [rg])[0], locate_radiographs(other, [rg])[0]
        if len(a) != len(b):
            mismatches.append(f"{rg.path}: {len(a)} vs {len(b)} legs")
            continue
        for la, lb in zip(a, b, strict=True):
            if set(la.points) != set(lb.points) or la.side != lb.side:
                mismatches.append(f"{rg.path}: {la.side} leg differs in landmarks or side")
                continue
            for n, (x, y) in la.points.items():
                worst = max(worst, float(np.hypot(x - lb.points[n][0], y - lb.points[n][1])))
                n_points += 1
    return {
        "films": len(radiographs),
        "landmarks_compared": n_points,
        "max_landmark_diff_px": worst,
        "mismatches": mismatches,
    }


# ---------------------------------------------------------------- a whole locator


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_nets(
    nets: dict[str, tuple[Any, tuple[int, int], int]],
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    *,
    tolerance_px: float = 0.1,
    opset: int = 18,
    exporter: str = "auto",
    n_check: int = 3,
) -> dict[str, Any]:
    """Export networks given as ``{name: (module, (H, W), out_stride)}`` and verify each
    against PyTorch on ``n_check`` film-like inputs (a batch size other than the one
    exported with, so the dynamic batch axis is exercised)."""
    for f in formats:
        if f not in FORMATS:
            raise ExportError(f"unknown export format {f!r} (expected one of {', '.join(FORMATS)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"tolerance_px": tolerance_px, "networks": {}}
    failures = []
    for name, (net, shape, stride) in nets.items():
        net = net.eval().cpu()
        example = film_like_inputs(shape, n=1, seed=1)
        check = film_like_inputs(shape, n=n_check, seed=2)
        reference = torch_runner(net)(check)
        entry: dict[str, Any] = {"input_shape": [1, *shape], "out_stride": stride}
        if "torchscript" in formats:
            t0 = time.perf_counter()
            p = export_torchscript(net, example, out / f"{name}.torchscript.pt")
            diff = compare_outputs(reference, torchscript_runner(p)(check), stride)
            entry["torchscript"] = {
                "file": p.name,
                "sha256": _sha256(p),
                "seconds": round(time.perf_counter() - t0, 2),
                **diff,
            }
            if not diff["max_landmark_diff_px"] < tolerance_px:
                failures.append(
                    f"{p.name}: landmarks differ by {diff['max_landmark_diff_px']:.3g} px"
                )
        if "onnx" in formats:
            t0 = time.perf_counter()
            p, used = export_onnx(net, example, out / f"{name}.onnx", opset, exporter)
            diff = compare_outputs(reference, onnx_runner(p)(check), stride)
            entry["onnx"] = {
                "file": p.name,
                "sha256": _sha256(p),
                "exporter": used,
                "seconds": round(time.perf_counter() - t0, 2),
                **diff,
            }
            if not diff["max_landmark_diff_px"] < tolerance_px:
                failures.append(
                    f"{p.name}: landmarks differ by {diff['max_landmark_diff_px']:.3g} px"
                )
        report["networks"][name] = entry
    report["ok"] = not failures
    (out / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if failures:
        raise ExportError(f"{out}: exported model does not match PyTorch: {'; '.join(failures)}")
    return report


def export_locator(
    checkpoint: str | Path | None,
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    *,
    tolerance_px: float = 0.1,
    opset: int = 18,
    exporter: str = "auto",
    check_films: Sequence[Any] = (),
) -> dict[str, Any]:
    """Export both networks of a locator checkpoint (``None``: the shipped default).

    With ``check_films`` (``Radiograph`` objects), the whole coarse-to-fine locator is
    also run with the exported networks and with PyTorch on those films, and their final
    landmarks must agree within ``tolerance_px``."""

    ckpt = load_checkpoint(checkpoint)
    spec, coarse, fine = nets_from_checkpoint(ckpt)
    nets = {
        "coarse": (coarse, (spec.coarse_height, spec.coarse_width), spec.coarse_net.out_stride),
        "fine": (fine, (spec.fine_size, spec.fine_size), spec.fine_net.out_stride),
    }
    out = Path(out_dir)
    report = export_nets(
        nets, out, formats, tolerance_px=tolerance_px, opset=opset, exporter=exporter
    )
    src = Path(checkpoint) if checkpoint is not None else DEFAULT_WEIGHTS
    meta = {
        "legalign_version": __version__,
        "checkpoint": str(src),
        "checkpoint_sha256": _sha256(src),
        "landmark_names": list(LANDMARK_NAMES),
        "coarse_landmarks": list(spec.coarse_landmarks),
        "fine_landmarks": list(spec.fine_landmarks),
        "input": "float32 (N, 1, H, W), grey values in [0, 1], bone bright",
        "output": "float32 (N, K, H/stride, W/stride) heatmaps, channel order as *_landmarks",
        "heatmap_to_input_px": "x_in = (x_hm + 0.5) * stride - 0.5 (pixel centres)",
        "spec": spec.to_dict(),
    }
    (out / "locator_spec.json").write_text(json.dumps(meta, indent=2) + "\n")
    report["checkpoint"] = str(src)
    failures = []
    if check_films:
        reference = Locator(spec, coarse, fine, device="cpu")
        report["locator_check"] = {}
        for fmt in formats:
            res = compare_locators(reference, exported_locator(out, fmt), check_films)
            report["locator_check"][fmt] = res
            if res["mismatches"] or not res["max_landmark_diff_px"] < tolerance_px:
                failures.append(
                    f"{fmt} locator: landmarks differ by {res['max_landmark_diff_px']:.3g} px"
                    + (f", {len(res['mismatches'])} film(s) differ" if res["mismatches"] else "")
                )
    report["ok"] = not failures
    (out / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if failures:
        raise ExportError(f"{out}: exported locator does not match PyTorch: {'; '.join(failures)}")
    return report
