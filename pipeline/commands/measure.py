"""``legalign measure LANDMARKS.json``: landmarks -> measurements and plan, as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from legalign.pipeline.geometry_config import load_geometry_config
from legalign.pipeline.landmark_file import read_landmark_file, validated_spacing
from legalign.pipeline.report import film_report

NAME = "measure"
HELP = "Measure alignment and propose an osteotomy from a landmark JSON file (prints JSON)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("landmarks", metavar="LANDMARKS.json", help="landmark file (see docs)")
    parser.add_argument(
        "--spacing",
        type=float,
        default=None,
        metavar="MM",
        help="pixel spacing in mm (overrides the file)",
    )
    parser.add_argument(
        "--config", default=None, metavar="FILE", help="YAML merged over configs/geometry.yaml"
    )


def run(args: argparse.Namespace) -> int:

    cfg = load_geometry_config(args.config)
    doc = read_landmark_file(args.landmarks)
    spacing, source = doc.spacing_mm, ("input file" if doc.spacing_mm is not None else None)
    if args.spacing is not None:
        spacing, source = validated_spacing(args.spacing, "--spacing"), "user"
    report = film_report(doc.legs, spacing, source, cfg, where=args.landmarks)
    json.dump(report, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    return 0
