"""``legalign export CHECKPOINT --out DIR``: the locator's networks as TorchScript / ONNX."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = (
    "Export a locator checkpoint's coarse and fine networks to TorchScript and/or ONNX, "
    "checked against PyTorch (landmarks within 0.1 px)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="locator checkpoint (.pt), or 'default'"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
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


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.errors import InputError
    from training.export import export_locator

    checkpoint = None if args.checkpoint == "default" else args.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputError(f"{checkpoint}: checkpoint not found")
    if not args.tolerance_px > 0:
        raise InputError(f"--tolerance-px must be positive, got {args.tolerance_px}")
    formats = ("torchscript", "onnx") if args.format == "both" else (args.format,)
    report = export_locator(
        checkpoint,
        args.out,
        formats,
        tolerance_px=args.tolerance_px,
        opset=args.opset,
        exporter=args.exporter,
    )
    for name, entry in report["networks"].items():
        for fmt in formats:
            e = entry[fmt]
            extra = f", exporter {e['exporter']}" if "exporter" in e else ""
            print(
                f"{args.out}/{e['file']}: max landmark difference "
                f"{e['max_landmark_diff_px']:.2g} px{extra} ({name} network)"
            )
    print(f"{args.out}/locator_spec.json, {args.out}/export_report.json")
    return 0
