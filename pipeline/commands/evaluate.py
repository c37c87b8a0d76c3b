"""``legalign evaluate CHECKPOINT DATASET``: landmark and measurement accuracy of a locator."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from legalign.models.checkpoint import load_checkpoint
from legalign.pipeline.errors import InputError
from legalign.training.evaluate import evaluate_locator, format_report
from legalign.training.readers_eval import evaluate_angles, format_angle_report, is_angle_csv

NAME = "evaluate"
HELP = (
    "Evaluate a locator checkpoint on an annotated dataset: radial errors, success rates, "
    "HKA/MPTA/mLDFA/WBL errors, failures; or, on an angle-only CSV (file, side, hka_deg), "
    "the pipeline's HKA against the reference (bias, mean abs difference, within 1/2 deg, r, "
    "legs without a value); writes report.json and PNG plots."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="locator checkpoint (.pt), or 'default'"
    )
    parser.add_argument(
        "dataset",
        metavar="DATASET",
        help="COCO .json, LabelMe folder, landmark .csv, angle-only .csv (file, side, hka_deg) "
        "or synthetic:N[:small|native]",
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="write report.json and the PNG plots here"
    )
    parser.add_argument(
        "--spacing",
        type=float,
        default=None,
        metavar="MM",
        help="assumed pixel spacing (mm) for films whose dataset gives none",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--fail-mm",
        type=float,
        default=10.0,
        metavar="MM",
        help="radial error above which a leg is listed as a failure (default: 10)",
    )
    parser.add_argument(
        "--fail-px",
        type=float,
        default=20.0,
        metavar="PX",
        help="the same threshold in pixels, for films without spacing (default: 20)",
    )
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="first N films only")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="first seed of a synthetic:N dataset (default 0; the default model was trained "
        "on seeds 0-99, so evaluate it from 1000000 on)",
    )
    parser.add_argument(
        "--config", default=None, metavar="FILE", help="YAML merged over configs/geometry.yaml"
    )
    parser.add_argument(
        "--part",
        choices=("angle", "calibration", "heldout"),
        default=None,
        help="angle CSV only: the films of that part of configs/uncertainty.yaml's "
        "readers_split (the calibration part fitted the interval scale)",
    )


def run(args: argparse.Namespace) -> int:
    if args.spacing is not None and not args.spacing > 0:
        raise InputError(f"--spacing must be positive, got {args.spacing}")
    synthetic = str(args.dataset).startswith("synthetic:")
    if not synthetic and not Path(args.dataset).exists():
        raise InputError(f"{args.dataset}: dataset not found")
    if args.seed is not None and not synthetic:
        raise InputError(f"--seed applies to synthetic:N datasets only, not {args.dataset}")
    checkpoint = None if args.checkpoint == "default" else args.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputError(f"{args.checkpoint}: checkpoint not found")
    if synthetic:
        _warn_training_seeds(checkpoint, str(args.dataset), args.seed or 0)
    if str(args.dataset).lower().endswith(".csv"):
        if is_angle_csv(args.dataset):
            report, _ = evaluate_angles(
                checkpoint,
                args.dataset,
                args.out,
                assumed_spacing_mm=args.spacing,
                device=args.device,
                geometry_config=args.config,
                limit=args.limit,
                part=args.part,
            )
            print(format_angle_report(report))
            if args.out:
                print(f"\nwrote {', '.join(report['outputs'].values())}")
            return 0
    if args.part is not None:
        raise InputError("--part applies to angle-only CSVs (file, side, hka_deg) only")
    report = evaluate_locator(
        checkpoint,
        args.dataset,
        args.out,
        assumed_spacing_mm=args.spacing,
        device=args.device,
        fail_mm=args.fail_mm,
        fail_px=args.fail_px,
        limit=args.limit,
        geometry_config=args.config,
        dataset_options=None if args.seed is None else {"seed": args.seed},
    )
    print(format_report(report))
    if args.out:
        print(f"\nwrote {', '.join(report['outputs'].values())}")
    return 0


def _warn_training_seeds(checkpoint: str | None, dataset: str, seed: int) -> None:
    """Warn when a synthetic:N evaluation draws film seeds the checkpoint was trained on
    (its recorded training config lists its synthetic datasets and their seeds)."""

    try:
        n = int(dataset.split(":")[1])
        train = (load_checkpoint(checkpoint).get("config") or {}).get("train_data") or []
    except Exception:  # noqa: BLE001 - no recorded config: nothing to compare with
        return
    for entry in train:
        spec = str(entry.get("spec", "")) if isinstance(entry, dict) else ""
        if not spec.startswith("synthetic:"):
            continue
        try:
            m = int(spec.split(":")[1])
            s0 = int((entry.get("options") or {}).get("seed", 0))
        except ValueError:
            continue
        if seed < s0 + m and s0 < seed + n:
            print(
                f"legalign evaluate: warning: synthetic seeds {seed}-{seed + n - 1} overlap the "
                f"checkpoint's training films ({spec}, seeds {s0}-{s0 + m - 1}): these scores "
                f"are on training data; use --seed {max(1_000_000, s0 + m)}",
                file=sys.stderr,
            )
