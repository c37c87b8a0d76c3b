"""``legalign synth``: write synthetic full-leg films plus COCO keypoints.

Writes ``OUT/synth_NNNNNN.png`` (16-bit PNG) and/or ``OUT/synth_NNNNNN.dcm`` and one
``OUT/annotations.json`` (COCO keypoints, the format of ../shared/data/oai-sample).
Film ``i`` depends only on ``(--seed, i)``.  See docs/synthetic.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
from tqdm import tqdm

from legalign.pipeline.errors import InputError
from legalign.training.synth import dicom_archive, generate_film
from legalign.training.synth.coco import add_film, new_coco
from legalign.training.synth.contact_sheet import assemble, thumbnail

NAME = "synth"
HELP = "Write synthetic full-leg radiographs with exact landmarks (COCO keypoints)."

FORMATS = ("png", "dicom", "both")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, required=True, help="number of films")
    parser.add_argument("--out", required=True, help="output folder (created; files go only here)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--legs", choices=("both", "right", "left"), default="both")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="png",
        dest="fmt",
        help="png (16-bit), dicom, or both (default png)",
    )
    parser.add_argument(
        "--transfer-syntax",
        default="random",
        choices=("random", "explicit", "rle", "jpegls", "j2k", "htj2k", "jpeg"),
        help="DICOM transfer syntax: random (default: drawn per film from explicit, rle, "
        "jpegls, j2k), or one for every film; htj2k needs the optional imagecodecs "
        "package, jpeg writes 8-bit baseline JPEG",
    )
    parser.add_argument(
        "--size",
        choices=("native", "small"),
        default="native",
        help="native: ~0.13-0.18 mm/px stitched-film size; small: 1 mm/px",
    )
    parser.add_argument(
        "--spacing-mm", type=float, default=None, help="pixel spacing in mm (overrides --size)"
    )
    parser.add_argument(
        "--no-distractors",
        action="store_true",
        help="leave out ruler, ball, markers, implants, seams, collimation, mirroring",
    )
    parser.add_argument(
        "--contact-sheet",
        default=None,
        metavar="PATH",
        help="also write a PNG contact sheet of the films (at most 16) to PATH",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="allow writing into a non-empty --out"
    )


def film_seed(seed: int, index: int) -> int:
    """The generator seed of film ``index``: a function of (seed, index) only."""

    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, index, 0x5E7]).generate_state(1)[0])


def run(args: argparse.Namespace) -> int:

    if args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    if args.seed < 0:
        raise InputError(f"--seed must be non-negative, got {args.seed}")
    if args.spacing_mm is not None and not (0.02 <= args.spacing_mm <= 10.0):
        raise InputError(f"--spacing-mm must be between 0.02 and 10, got {args.spacing_mm}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise InputError(f"{out}: --out is not empty (use --overwrite to write into it)")
    sheet = Path(args.contact_sheet) if args.contact_sheet else None
    if sheet is not None and sheet.suffix.lower() != ".png":
        raise InputError(f"{sheet}: --contact-sheet must be a .png path")
    dicom: ModuleType | None = None
    if args.fmt in ("dicom", "both"):
        dicom = dicom_archive
        if args.transfer_syntax == "htj2k" and not dicom.htj2k_available():
            raise InputError(
                "--transfer-syntax htj2k: no HTJ2K encoder installed (pydicom and "
                "pylibjpeg-openjpeg decode HTJ2K but cannot write it); "
                "pip install 'legalign[htj2k]' adds imagecodecs, whose OpenJPH encoder does"
            )
    elif args.transfer_syntax != "random":
        raise InputError("--transfer-syntax applies to DICOM output (--format dicom or both)")
    out.mkdir(parents=True, exist_ok=True)

    coco = new_coco(
        f"legalign synthetic full-leg films (seed {args.seed}, legs {args.legs}, "
        f"size {args.size}); landmarks exact, see docs/synthetic.md"
    )
    thumbs: list[np.ndarray] = []
    for i in tqdm(range(args.n), desc="synth", unit="film"):
        fseed = film_seed(args.seed, i)
        film = generate_film(
            fseed,
            size=args.size,
            legs=args.legs,
            spacing_mm=args.spacing_mm,
            distractors=not args.no_distractors,
        )
        stem = f"synth_{i:06d}"
        extra: dict = {"index": i, "film_seed": fseed}
        names = []
        if args.fmt in ("png", "both"):
            png = out / f"{stem}.png"
            if not cv2.imwrite(str(png), film.image):
                raise InputError(f"{png}: could not write PNG")
            names.append(png.name)
        if dicom is not None:
            dcm = out / f"{stem}.dcm"
            opts = dicom.random_dicom_options(np.random.default_rng([args.seed, i, 0xD1C0]))
            if args.transfer_syntax != "random":
                opts.transfer_syntax = args.transfer_syntax
                if args.transfer_syntax == "jpeg":
                    opts.bits_stored = 8
                elif opts.bits_stored == 8:  # pragma: no cover - random never draws 8
                    opts.bits_stored = 16
                opts.validate()
            dicom.write_film_dicom(dcm, film, opts, index=i, seed=args.seed)
            extra["dicom_file"] = dcm.name
            extra["dicom_options"] = {
                "modality": opts.modality,
                "photometric": opts.photometric,
                "bits_stored": opts.bits_stored,
                "transfer_syntax": opts.transfer_syntax,
                "spacing_tags": opts.spacing_tags,
                "magnification": opts.magnification,
            }
            names.append(dcm.name)
        add_film(coco, film, names[0], **extra)
        if sheet is not None and len(thumbs) < 16:
            thumbs.append(thumbnail(film))
    ann = out / "annotations.json"
    ann.write_text(json.dumps(coco, indent=1), encoding="utf-8")
    if sheet is not None:
        sheet.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(sheet), assemble(thumbs)):
            raise InputError(f"{sheet}: could not write the contact sheet")
    print(f"wrote {args.n} film(s) and {ann}")
    return 0
