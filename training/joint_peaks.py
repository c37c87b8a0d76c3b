"""Measure the coarse leg scores that ``configs/locator.yaml``'s ``min_leg_score`` and
``min_half_leg_score`` separate: real legs against the "legs" a film of pure noise gives.

    python -m legalign.training.joint_peaks \\
        --landmarks ../shared/data/oai-sample/annotations/val.json \\
        --readers ../shared/data/oai-readers/readers.csv \\
        --framing /tmp/framing --noise 40

A leg's score is the sum of its three coarse joint peaks (femoral head, knee centre,
ankle centre; a joint not found counts 0), as ``LocatorGeometry.decode_coarse`` decodes
them, on each canvas the coarse stage sees (``LocatorGeometry.coarse_view``): the whole
film (framed to its exposed region) and, on a film wide enough for two legs, each half
alone (the complete legs of a half, ``LocatorGeometry.half_legs``).  The two kinds are
reported apart: a half is seen enlarged, and noise peaks differently there.  Every film
is decoded with the checkpoint's own ``peak_threshold`` only (the rules under test are
not applied) and the score of each leg found is kept.  Real films: the
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

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


@dataclass
class Scores:
    """Leg scores by canvas: the whole film's, and the halves' of a wide film."""

    whole: list[float] = field(default_factory=list)
    halves: list[float] = field(default_factory=list)

    def __iadd__(self, other: Scores) -> Scores:
        self.whole += other.whole
        self.halves += other.halves
        return self


def _score(leg) -> float:
    return sum(leg.confidence.get(n, 0.0) for n in JOINTS)


def leg_scores(locator: Locator, radiograph) -> Scores:
    """The score (sum of the joint peaks) of each coarse leg on each canvas of one film."""
    film = radiograph_film(radiograph)
    view = coarse_input(locator, film.pixels)
    heat = coarse_heatmaps(locator, [view])[0]
    out = Scores(whole=[_score(leg) for leg in locator.canvas_legs(heat[0], view.frames[0], 0.0)])
    for i, (columns, frame) in enumerate(zip(view.half_columns(), view.frames[1:], strict=True)):
        out.halves += [_score(leg) for leg in locator.half_legs(heat[1 + i], frame, columns, 0.0)]
    return out


def _summary(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "n 0"
    return (
        f"n {v.size}  min {v.min():.3f}  p1 {np.percentile(v, 1):.3f}  "
        f"median {np.median(v):.3f}  max {v.max():.3f}"
    )


# synthetic films whose DICOM headers carry the noise: their shapes differ (width / height
# 0.26-0.36, all wide enough to be seen half by half), and noise peaks differently on each
NOISE_HEADER_FILMS = (0, 3, 7)


def noise_scores(locator: Locator, seeds: int) -> tuple[int, Scores]:
    """(films, leg scores) of uniform-noise DICOM films (12 and 16 bits, ``seeds`` each)
    in the headers of the synthetic bilateral films ``NOISE_HEADER_FILMS``."""
    scores = Scores()
    films = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "noise.dcm"
        for film_seed in NOISE_HEADER_FILMS:
            film = generate_film(film_seed, size="small")
            ds = build_dataset(film, DicomOptions(), index=film_seed, seed=film_seed)
            for seed in tqdm(range(seeds), desc=f"noise {ds.Columns}x{ds.Rows}", leave=False):
                rng = np.random.default_rng(seed)
                for top in (1 << 12, 1 << 16):
                    pixels = rng.integers(0, top, ds.Rows * ds.Columns, dtype="<u2")
                    ds.PixelData = pixels.tobytes()
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

    # the checkpoint's own peak_threshold only: the rules under test are not applied
    locator = Locator.from_checkpoint(
        args.model, rules=LocatorRules(min_leg_score=1e-6, min_half_leg_score=1e-6)
    )
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
    lowest = Scores([np.inf], [np.inf])
    for name, paths in groups.items():
        scores = Scores()
        for path in tqdm(paths, desc=name, unit="film", leave=False):
            scores += leg_scores(locator, radiograph_from(path))
        lowest += Scores([min(scores.whole, default=np.inf)], [min(scores.halves, default=np.inf)])
        print(f"{name} ({len(paths)} films): whole film: leg score {_summary(scores.whole)}")
        print(f"{name} ({len(paths)} films): halves: leg score {_summary(scores.halves)}")
    films, noise = noise_scores(locator, args.noise)
    print(f"noise films ({films}): whole film: leg score {_summary(noise.whole)}")
    print(f"noise films ({films}): halves: leg score {_summary(noise.halves)}")
    for canvas, key in (("whole film", "whole"), ("halves", "halves")):
        real, fake = min(getattr(lowest, key)), max(getattr(noise, key), default=0.0)
        print(f"{canvas}: real legs' lowest score {real:.3f}, noise legs' highest {fake:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
