"""``legalign export CHECKPOINT --out DIR``: the locator's networks as TorchScript / ONNX.

``legalign export CHECKPOINT --as-default`` makes the checkpoint the shipped default model
(half precision, no training state) in a development checkout: replacing the shipped
model is this explicit step, never a side effect of ``train``."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from legalign.models.checkpoint import install_as_default
from legalign.pipeline.errors import InputError
from legalign.training.datasets import load_dataset
from legalign.training.export import export_locator

NAME = "export"
HELP = (
    "Export a locator checkpoint's coarse and fine networks to TorchScript and/or ONNX, "
    "checked against PyTorch (landmarks within 0.1 px)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="locator checkpoint (.pt), or 'default'"
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder")
    parser.add_argument(
        "--as-default",
        action="store_true",
        help="make CHECKPOINT the shipped default model (models/weights/legalign_default.pt, "
        "float16); development checkout only",
    )
    parser.add_argument(
        "--format",
        choices=("torchscript", "onnx", "both"),
        default="both",
        help="what to write (default: both)",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    parser.add_argument(
        "--exporter",
        choices=("auto", "dynamo", "torchscript"),
        default="auto",
        help="ONNX exporter: torch.export based (dynamo), the older TorchScript based one, "
        "or auto (dynamo, falling back to torchscript)",
    )
    parser.add_argument(
        "--tolerance-px",
        type=float,
        default=0.1,
        metavar="PX",
        help="largest allowed landmark difference from PyTorch (default: 0.1)",
    )
    parser.add_argument(
        "--check-dataset",
        default=None,
        metavar="DATASET",
        help="also run the whole locator, exported and PyTorch, on films of this dataset "
        "(COCO .json, LabelMe folder, .csv or synthetic:N) and compare the landmarks",
    )
    parser.add_argument(
        "--check-films",
        type=int,
        default=4,
        metavar="N",
        help="how many films of --check-dataset to use (default: 4)",
    )


def run(args: argparse.Namespace) -> int:
    checkpoint = None if args.checkpoint == "default" else args.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputError(f"{checkpoint}: checkpoint not found")
    if args.as_default:
        if checkpoint is None:
            raise InputError("--as-default needs a checkpoint file, not 'default'")
        print(f"{install_as_default(checkpoint)}: now the shipped default model")
        if args.out is None:
            return 0
    if args.out is None:
        raise InputError("--out DIR is required (unless --as-default)")
    if not args.tolerance_px > 0:
        raise InputError(f"--tolerance-px must be positive, got {args.tolerance_px}")
    formats = ("torchscript", "onnx") if args.format == "both" else (args.format,)
    if "onnx" in formats:
        missing = missing_onnx_packages()
        if missing:
            raise InputError(
                f"ONNX export needs {', '.join(missing)} (not installed): "
                "pip install 'legalign[export]' (or --format torchscript)"
            )
    films = []
    if args.check_dataset is not None:
        if args.check_films < 1:
            raise InputError(f"--check-films must be at least 1, got {args.check_films}")
        ds = load_dataset(args.check_dataset)
        films = [ds[i].to_radiograph() for i in range(min(len(ds), args.check_films))]
    report = export_locator(
        checkpoint,
        args.out,
        formats,
        tolerance_px=args.tolerance_px,
        opset=args.opset,
        exporter=args.exporter,
        check_films=films,
    )
    for name, entry in report["networks"].items():
        for fmt in formats:
            e = entry[fmt]
            extra = f", exporter {e['exporter']}" if "exporter" in e else ""
            print(
                f"{args.out}/{e['file']}: max landmark difference "
                f"{e['max_landmark_diff_px']:.2g} px{extra} ({name} network)"
            )
    for fmt, res in report.get("locator_check", {}).items():
        print(
            f"{fmt} locator on {res['films']} film(s): max landmark difference "
            f"{res['max_landmark_diff_px']:.2g} px over {res['landmarks_compared']} landmarks"
        )
    print(f"{args.out}/locator_spec.json, {args.out}/export_report.json")
    return 0


ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def missing_onnx_packages() -> list[str]:
    """The packages of the ``export`` extra that cannot be imported here."""

    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing
