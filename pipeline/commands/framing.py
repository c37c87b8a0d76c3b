"""``legalign framing build|evaluate``: the framing test set made from real films.

``legalign framing build --out DIR --oai-sample ../shared/data/oai-sample --readers
../shared/data/oai-readers`` writes letterboxed, native-size DICOM, bilateral, partial and
rotated variants of the oai-sample val films and the oai-readers films plus
``DIR/framing.json`` (see training/framing.py; parameters in configs/framing.yaml).

``legalign framing evaluate DIR [--checkpoint CKPT] [--out REPORT_DIR]`` measures a model
on it: legs found with the right side, HKA of each variant against its original and
against the readers (training/framing_eval.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from legalign.pipeline.errors import InputError
from legalign.training.framing import (
    build_framing_set,
    load_framing_config,
    oai_readers_sources,
    oai_sample_sources,
)
from legalign.training.framing_eval import evaluate_framing, format_framing_report, write_report

NAME = "framing"
HELP = "Build the framing test set from real films, or evaluate a model on it."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="write the framing test set")
    b.add_argument("--out", required=True, help="output folder (created; files go only here)")
    b.add_argument(
        "--oai-sample", default=None, metavar="DIR", help="oai-sample folder (val split)"
    )
    b.add_argument("--readers", default=None, metavar="DIR", help="oai-readers folder")
    b.add_argument(
        "--config", default=None, metavar="FILE", help="YAML merged over configs/framing.yaml"
    )
    b.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    e = sub.add_parser("evaluate", help="measure a model on a framing test set")
    e.add_argument("folder", metavar="DIR", help="a folder written by 'legalign framing build'")
    e.add_argument("--checkpoint", default=None, help="locator checkpoint (default: shipped)")
    e.add_argument("--out", default=None, metavar="DIR", help="write framing_report.json here")
    e.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DATASET=DIR",
        help="where a source dataset lives now (default: as recorded at build time)",
    )
    e.add_argument("--kind", action="append", default=None, help="only these kinds (repeatable)")
    e.add_argument("--limit", type=int, default=None, metavar="N", help="first N variants only")
    e.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def run(args: argparse.Namespace) -> int:
    if args.action == "build":
        return _build(args)
    return _evaluate(args)


def _build(args: argparse.Namespace) -> int:

    if not args.oai_sample and not args.readers:
        raise InputError("give --oai-sample and/or --readers")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise InputError(f"{out}: --out is not empty (use --overwrite to write into it)")
    cfg = load_framing_config(args.config)
    sources, roots = {}, {}
    for name, folder, load in (
        ("oai-sample", args.oai_sample, oai_sample_sources),
        ("oai-readers", args.readers, oai_readers_sources),
    ):
        if folder:
            if not Path(folder).is_dir():
                raise InputError(f"{folder}: not a folder")
            sources[name] = load(folder)
            roots[name] = str(Path(folder).resolve())
    manifest = build_framing_set(sources, out, cfg, roots=roots, progress=True)
    counts: dict[str, int] = {}
    for v in manifest["variants"]:
        counts[v["kind"]] = counts.get(v["kind"], 0) + 1
    print(
        f"wrote {len(manifest['variants'])} variants ("
        + ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
        + f") of {len(manifest['sources'])} films and {out / 'framing.json'}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:

    if not (Path(args.folder) / "framing.json").is_file():
        raise InputError(f"{args.folder}: no framing.json (make one with 'legalign framing build')")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise InputError(f"{args.checkpoint}: checkpoint not found")
    roots = {}
    for item in args.root:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"--root {item!r}: expected DATASET=DIR")
        roots[name] = folder
    report = evaluate_framing(
        args.folder,
        args.checkpoint,
        roots=roots,
        kinds=args.kind,
        limit=args.limit,
        device=args.device,
        progress=True,
    )
    print(format_framing_report(report))
    if args.out:
        print(f"wrote {write_report(report, args.out)}")
    return 0
