"""``legalign run``: the batch job over files, folders and path lists."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from legalign.models.checkpoint import load_checkpoint, nets_from_checkpoint
from legalign.pipeline.api import load_config
from legalign.pipeline.engine.inputs import OUTPUT_MARKER, check_inputs, expand_inputs
from legalign.pipeline.engine.lifecycle import check_out_folder
from legalign.pipeline.engine.local import EngineOptions, run_local
from legalign.pipeline.engine.ray_engine import RayOptions, require_ray, run_ray
from legalign.pipeline.errors import LegalignError
from legalign.pipeline.read.limits import default_input_limits

NAME = "run"
HELP = (
    "Locate landmarks, measure and plan every film in INPUTs (DICOM, PNG, JPEG, TIFF); "
    "write a results table, per-image JSON, overlays, DICOM SR + Secondary Capture. "
    "Re-running resumes. Exit 0: all files succeeded; 3: some failed; 2: usage error."
)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a file, a folder (recursive) or a text file listing paths (@list or *.txt/.lst/.list)",
    )
    add_engine_arguments(p)
    add_ray_arguments(p)


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the local engine (shared with ``legalign pacs``)."""
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; resumable)")
    p.add_argument("--model", metavar="CKPT", help="locator checkpoint (default: models/weights/)")
    p.add_argument(
        "--config", metavar="FILE", help="geometry YAML merged over configs/geometry.yaml"
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="worker processes for decoding (default: CPU count)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the networks (default cpu)")
    p.add_argument(
        "--spacing",
        type=_positive_float,
        metavar="MM",
        help="pixel spacing in mm for every input (overrides the files)",
    )
    p.add_argument(
        "--require-spacing",
        action="store_true",
        help="a file without pixel spacing fails (reason no_spacing) instead of angles only",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=8,
        metavar="N",
        help="films per network batch in --mode main (default 8)",
    )
    p.add_argument(
        "--mode",
        choices=("auto", "worker", "main"),
        default="auto",
        help="where the networks run: in each worker (CPU default) or batched in "
        "the main process (default with cuda); see docs/benchmarks.md",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=80_000_000,
        metavar="N",
        help="refuse films with more pixels (reason too_large; default 80e6)",
    )
    p.add_argument(
        "--no-overlay", action="store_true", help="no overlay PNG (nor Secondary Capture)"
    )
    p.add_argument("--no-dicom", action="store_true", help="no DICOM SR / Secondary Capture")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="on resume, process again the files that failed before",
    )
    p.add_argument(
        "--file-timeout",
        type=_positive_float,
        default=900.0,
        metavar="S",
        help="a file still processing after S seconds is killed and recorded (reason timeout; default 900)",
    )
    p.add_argument(
        "--decoder",
        choices=("auto", "cpu", "gpu", "full"),
        default="auto",
        help="how compressed DICOM is read (docs/progressive.md): JPEG 2000, HTJ2K and "
        "baseline JPEG at the resolution the networks need and crops as regions, with "
        "nvImageCodec on a CUDA GPU when installed (auto, the default), on the CPU only "
        "(cpu), on the GPU only (gpu); full: decode every film whole (the old path)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="allow an --out that already holds files legalign did not write (its "
        "results.csv, summary.json, ... are replaced)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="stop after N newly processed files (trial runs, benchmarks)",
    )


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    # ---- Ray engine (pipeline/engine/ray_engine.py, docs/ray.md)
    ray = p.add_argument_group("Ray engine (--engine ray; docs/ray.md)")
    ray.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: worker processes on this machine (default); ray: a Ray cluster "
        '(needs pip install -e ".[ray]")',
    )
    ray.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join (host:port or auto); default: start a local Ray",
    )
    ray.add_argument(
        "--actors",
        type=_positive_int,
        metavar="N",
        help="inference actors per network stage (default: one per GPU, 1 on CPU)",
    )
    ray.add_argument(
        "--gpus-per-actor",
        type=_positive_float,
        metavar="F",
        help="GPUs each inference actor reserves (default: shares one GPU across stages)",
    )


def engine_options(args: argparse.Namespace, engine: str = "local") -> Any:
    """EngineOptions from the parsed engine arguments (usage errors raised here)."""

    if args.device != "cpu" and not str(args.device).startswith("cuda"):
        raise LegalignError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if str(args.device).startswith("cuda") and engine == "local":
        if not torch.cuda.is_available():
            raise LegalignError("--device cuda: no CUDA device available")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LegalignError(f"{out}: --out exists and is not a folder")
    _check_before_output(args)
    workers = args.workers or max(1, os.cpu_count() or 1)
    return EngineOptions(
        out_dir=out,
        model=args.model,
        config=args.config,
        workers=workers,
        device=args.device,
        spacing_mm=args.spacing,
        require_spacing=args.require_spacing,
        max_pixels=args.max_pixels,
        batch_size=args.batch_size,
        mode=args.mode,
        overlay=not args.no_overlay,
        dicom_outputs=not args.no_dicom,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        limit=args.limit,
        file_timeout_s=args.file_timeout,
        decoder=args.decoder,
    )


def run(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        require_ray()  # the install hint comes before anything else
    problems = check_inputs(args.inputs)
    if problems:
        raise LegalignError("; ".join(problems))
    opts = engine_options(args, args.engine)
    out = Path(args.out)
    check_out_folder(out, OUTPUT_MARKER, args.overwrite)
    if next(iter(expand_inputs(args.inputs, exclude=[out])), None) is None:
        print(
            f"legalign run: warning: no input files found in {' '.join(args.inputs)} "
            "(hidden files, DICOMDIR and sidecars such as .json/.csv are skipped)",
            file=sys.stderr,
        )
        return 2
    if args.engine != "ray" and (args.address or args.actors or args.gpus_per_actor):
        raise LegalignError("--address, --actors and --gpus-per-actor need --engine ray")
    if args.engine == "ray":
        ropts = RayOptions(
            address=args.address, actors=args.actors, gpus_per_actor=args.gpus_per_actor
        )
        code, summary = run_ray(args.inputs, opts, ropts)
    else:
        code, summary = run_local(args.inputs, opts)
    print(summary.format_text())
    print(f"results: {out / 'results.parquet'}, {out / 'results.csv'}, {out / 'summary.json'}")
    return code


def _check_before_output(args: argparse.Namespace) -> None:
    """Usage errors that must stop the run before anything is created under --out: an
    unusable --config, --model or --spacing (exit 2, one line)."""
    load_config(getattr(args, "config", None))
    model = getattr(args, "model", None)
    if model is not None:
        nets_from_checkpoint(load_checkpoint(model))
    spacing = getattr(args, "spacing", None)
    if spacing is not None:
        bounds = default_input_limits().spacing_mm
        if spacing not in bounds:
            raise LegalignError(
                f"--spacing {spacing:g} mm is implausible (outside {bounds.min:g}-"
                f"{bounds.max:g} mm, configs/input_limits.yaml)"
            )
