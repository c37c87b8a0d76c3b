"""Measure the coarse leg scores that ``configs/locator.yaml``'s ``min_leg_score``
separates: real legs against the "legs" a film of pure noise gives.

    python -m legalign.training.joint_peaks \\
        --landmarks ../shared/data/oai-sample/annotations/val.json \\
        --readers ../shared/data/oai-readers/readers.csv \\
        --framing /tmp/framing --noise 40

A leg's score is the sum of its three coarse joint peaks (femoral head, knee centre,
ankle centre; a joint not found counts 0), as ``LocatorGeometry.decode_coarse`` decodes
them.  Every film is decoded with the checkpoint's own ``peak_threshold`` only (the rule
under test is not applied) and the score of each leg found is kept.  Real films: the
films the model did not train on (the val split, the readers' films) and, with
``--framing``, every image of a framing test set (``legalign framing build``: letterbox,
bilateral, partial, rotated and native variants of those films).  Noise films: a
synthetic DX film's DICOM header carrying uniform 12-bit and 16-bit noise (``--noise``
seeds each), read like any input.  The threshold belongs between the noise legs'
maximum and the real legs' minimum.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from legalign.pipeline.api import radiograph_from
from legalign.pipeline.coarse_to_fine import coarse_heatmaps, coarse_input, radiograph_film
from legalign.pipeline.locate import JOINTS, Locator, LocatorRules
from legalign.pipeline.read import read_radiograph
from legalign.training.datasets import load_dataset
from legalign.training.datasets.base import RecordDataset
from legalign.training.readers_eval import load_angle_truth
from legalign.training.synth.dicom_archive import DicomOptions, build_dataset
from legalign.training.synth.film import generate_film

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")


def leg_scores(locator: Locator, radiograph) -> list[float]:
    """The score (sum of the joint peaks) of each coarse leg on one film."""
    film = radiograph_film(radiograph)
    heat = coarse_heatmaps(locator, [coarse_input(locator, film.pixels)])[0]
    legs = locator.decode_coarse(heat, film.shape).legs
    return [sum(leg.confidence.get(n, 0.0) for n in JOINTS) for leg in legs]


def _summary(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "n 0"
    return (
        f"n {v.size}  min {v.min():.3f}  p1 {np.percentile(v, 1):.3f}  "
        f"median {np.median(v):.3f}  max {v.max():.3f}"
    )


def noise_scores(locator: Locator, seeds: int) -> tuple[int, list[float]]:
    """(films, leg scores) of uniform-noise DICOM films (12 and 16 bits, ``seeds`` each)."""
    ds = build_dataset(generate_film(0, size="small"), DicomOptions(), index=0, seed=0)
    scores: list[float] = []
    films = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "noise.dcm"
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            for top in (1 << 12, 1 << 16):
                ds.PixelData = rng.integers(0, top, ds.Rows * ds.Columns, dtype="<u2").tobytes()
                ds.save_as(path, enforce_file_format=True)
                scores += leg_scores(locator, read_radiograph(str(path)))
                films += 1
    return films, scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--landmarks", action="append", default=[], help="COCO landmark JSON")
    ap.add_argument("--readers", action="append", default=[], help="readers' angle CSV")
    ap.add_argument("--framing", action="append", default=[], help="framing test set folder")
    ap.add_argument("--noise", type=int, default=40, help="noise seeds per bit depth")
    args = ap.parse_args(argv)

    # the checkpoint's own peak_threshold only: the rule under test is not applied
    locator = Locator.from_checkpoint(args.model, rules=LocatorRules(min_leg_score=1e-6))
    print(f"checkpoint peak_threshold {locator.spec.peak_threshold}")
    groups: dict[str, list[str]] = {}
    for ann in args.landmarks:
        dataset = load_dataset(ann)
        if not isinstance(dataset, RecordDataset):
            raise SystemExit(f"{ann}: not a landmark file with image paths")
        groups.setdefault("landmark films", []).extend(str(p) for p in dataset.paths)
    for csv_path in args.readers:
        truth = load_angle_truth(csv_path)
        groups.setdefault("readers' films", []).extend(sorted({str(t.path) for t in truth}))
    for folder in args.framing:
        for kind in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
            files = [p for p in sorted(kind.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
            groups.setdefault(f"framing {kind.name}", []).extend(map(str, files))
    lowest = np.inf
    for name, paths in groups.items():
        scores: list[float] = []
        for path in paths:
            scores += leg_scores(locator, radiograph_from(path))
        lowest = min(lowest, min(scores, default=np.inf))
        print(f"{name} ({len(paths)} films): leg score {_summary(scores)}")
    films, noise = noise_scores(locator, args.noise)
    print(f"noise films ({films}): {len(noise)} legs, leg score {_summary(noise)}")
    print(f"real legs' lowest score {lowest:.3f}, noise legs' highest {max(noise, default=0):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
