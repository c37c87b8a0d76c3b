"""CPU time of the write stage of one film, part by part (not a test).

    .venv/bin/python benchmarks/bench_write.py --film /tmp/legalign-bench-prog/jpeg2000/film000.dcm \
        --reps 7 --json /tmp/bench_write.json

The film (``--film``, a DICOM; else a native-size synthetic film made under ``--data``) is
read, located with the shipped model and measured once, as ``legalign run`` does in a
worker (mode worker, ``--decoder auto``); then each part of the write stage
(pipeline/engine/write.py ``finish_outputs``) is timed ``--reps`` times in this process:

- overlay: render (``render_overlay``) and PNG encoding (``encode_png``);
- DICOM SR: the TID 1500 content (``measurement_report``), the SR document built the way
  legalign does (``sr_document``) and, for comparison, with highdicom's own
  ``Comprehensive3DSR`` constructor (which deep-copies the content tree; legalign used it
  up to commit 3fd183d), and encoding the SR (``dcmwrite`` to memory);
- Secondary Capture: built (``build_sc``) and encoded;
- the whole ``finish_outputs`` into a scratch folder (files written, JSON last).

Figures are process CPU seconds (``time.process_time``), median and minimum over the reps:
unlike wall-clock rates they hardly depend on what else runs on a shared machine (the
load average is reported anyway).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _film(args: argparse.Namespace) -> Path:
    if args.film is not None:
        return args.film
    from legalign.training.synth.dicom_archive import DicomOptions, write_film_dicom
    from legalign.training.synth.film import generate_film

    path = args.data / "film_write.dcm"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        film = generate_film(1000, size="native")
        write_film_dicom(path, film, DicomOptions(modality="DX"), index=0, seed=1000)
    return path


def _inputs(path: Path, out: Path) -> tuple[dict[str, Any], Any, Any]:
    """(result dict, header, thumbnail) as a worker hands them to finish_outputs."""
    from legalign.pipeline.engine import worker
    from legalign.pipeline.engine.options import EngineOptions

    opts = EngineOptions(out_dir=out, workers=1, mode="worker", progress=False)
    got: list[tuple[dict[str, Any], Any, Any]] = []
    original = worker.finish_outputs

    def capture(d: dict[str, Any], header: Any, thumb: Any, o: Any) -> dict[str, Any]:
        got.append(copy.deepcopy((d, header, thumb)))
        return original(d, header, thumb, o)

    worker.finish_outputs = capture  # type: ignore[assignment]
    try:
        ctx = worker.WorkerContext.create(opts, networks=True)
        d = ctx.full(str(path))
    finally:
        worker.finish_outputs = original  # type: ignore[assignment]
    if d.get("status") == "failed" or not got:
        raise SystemExit(f"{path}: the film failed ({d.get('error_reason')}); nothing to write")
    return got[0]


def _cpu(fn: Callable[[], Any], reps: int) -> dict[str, float]:
    fn()  # first call pays one-time costs (imports, highdicom's tables)
    times = []
    for _ in range(reps):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4)}


def _encode(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--film", type=Path, default=None, help="a DICOM film (default: synthetic)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/legalign-bench-write"))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    import highdicom as hd
    import torch

    from legalign.pipeline.engine.options import EngineOptions
    from legalign.pipeline.engine.write import SUBDIRS, finish_outputs
    from legalign.pipeline.outputs.dicom_header import derivable_header
    from legalign.pipeline.outputs.dicom_sc import build_sc
    from legalign.pipeline.outputs.dicom_sr import measurement_report, sr_document, sr_kwargs
    from legalign.pipeline.outputs.overlay import encode_png, render_overlay

    torch.set_num_threads(1)
    path = _film(args)
    with tempfile.TemporaryDirectory(prefix="legalign-bench-write-") as tmp:
        out = Path(tmp)
        for sub in SUBDIRS:
            (out / sub).mkdir()
        d, header, thumb = _inputs(path, out)
        source, _ = derivable_header(header)
        uids = {
            "series_instance_uid": hd.UID(),
            "series_number": 9801,
            "sop_instance_uid": hd.UID(),
            "verifier": None,
        }
        report = measurement_report(d, source)
        sr = sr_document(report, source, **uids)
        rgb = render_overlay(d, thumb)
        sc = build_sc(rgb, source)
        opts = EngineOptions(out_dir=out, workers=1, mode="worker", progress=False)
        parts = {
            "overlay render": lambda: render_overlay(d, thumb),
            "overlay PNG encode": lambda: encode_png(rgb),
            "SR content (measurement_report)": lambda: measurement_report(d, source),
            "SR document (sr_document)": lambda: sr_document(report, source, **uids),
            "SR document (highdicom Comprehensive3DSR, deep copy)": lambda: hd.sr.Comprehensive3DSR(
                evidence=[source], content=report, **sr_kwargs(**uids)
            ),
            "SR encode (dcmwrite)": lambda: _encode(sr),
            "SC build": lambda: build_sc(rgb, source),
            "SC encode (dcmwrite)": lambda: _encode(sc),
            "finish_outputs (all of the above, files and JSON)": lambda: finish_outputs(
                copy.deepcopy(d), header, thumb, opts
            ),
        }
        load0 = os.getloadavg()[0]
        figures = {name: _cpu(fn, args.reps) for name, fn in parts.items()}
    n_items = sum(1 for e in sr.iterall() if e.VR == "SQ" for _ in e.value)
    report_out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end",
        "film": str(path),
        "legs": len(d.get("legs") or []),
        "sr_sequence_items": n_items,
        "thumbnail": list(thumb.shape) if thumb is not None else None,
        "cpu_s": figures,
    }
    width = max(len(k) for k in figures)
    for name, f in figures.items():
        print(f"{name:<{width}}  median {f['median_s']:.4f} s  min {f['min_s']:.4f} s")
    print(json.dumps({k: v for k, v in report_out.items() if k != "cpu_s"}))
    if args.json:
        args.json.write_text(json.dumps(report_out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
