"""How far do the fine landmarks move when only their crop moves?  (shift stability)

    python -m legalign.training.shift_stability default ../shared/data/oai-sample/annotations/val.json

For every film of a dataset (any ``training.datasets`` spec): the coarse stage once, then
the fine stage again and again with every crop moved by 0, 1, ..., ``period`` crop pixels
along x and by 1, ..., ``period`` along y (the film itself unchanged; ``period`` 16 is one
period of the fine network's deepest, stride-16 features).  Each landmark's answer is read
back into film coordinates, where it should not move at all: what it does move is the
network's sensitivity to the crop's phase, which no other measurement separates from the
labels' own noise.  It matters twice: the coarse stage places the crops with errors of a
pixel or two, and two decodings of the same film (progressive and full, docs/progressive.md)
cut crops a fraction of a pixel apart.

Reported per fine landmark over the films' legs: the mean and maximum of the range (the
distance between the two farthest answers), and the mean SD of the answers, in film
pixels; ``--json`` writes them with the per-leg values.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from legalign.pipeline.api import load_locator
from legalign.pipeline.coarse_to_fine import (
    coarse_heatmaps,
    coarse_input,
    fine_heatmaps,
    radiograph_film,
)
from legalign.pipeline.config_schema import ConfigError
from legalign.pipeline.errors import InputError
from legalign.pipeline.locate import FineInputs, Locator
from legalign.pipeline.radiograph import Radiograph
from legalign.training.datasets import load_dataset
from legalign.training.datasets.base import AnnotatedFilm


def crop_offsets(period: int) -> list[tuple[float, float]]:
    """(dx, dy) crop-pixel moves: 0..period along x, then 1..period along y."""
    xs = [(float(d), 0.0) for d in range(period + 1)]
    return xs + [(0.0, float(d)) for d in range(1, period + 1)]


def shifted_answers(
    locator: Locator, radiograph: Radiograph, offsets: Sequence[tuple[float, float]]
) -> list[dict[tuple[int, str], tuple[float, float]]]:
    """For each offset, (leg index, fine landmark) -> film (x, y), every crop moved by it."""
    film = radiograph_film(radiograph)
    view = coarse_input(locator, film.pixels)
    coarse = locator.decode_coarse(coarse_heatmaps(locator, [view])[0], film.shape, view)
    placed = [
        (li, name, A)
        for li, leg in enumerate(coarse.legs)
        for name, A in locator.crop_matrices(leg)
    ]
    fine_names = set(locator.spec.fine_landmarks)
    s = locator.spec.fine_size
    out = []
    for dx, dy in offsets:
        # image -> crop, then the crop's content moved by (dx, dy) crop pixels
        matrices = [A + np.array([[0.0, 0.0, dx], [0.0, 0.0, dy]]) for _, _, A in placed]
        crops = [film.pixels.crop(A, (s, s)) for A in matrices]
        inputs = FineInputs(
            crops=np.stack(crops)[:, None].astype(np.float32, copy=False)
            if crops
            else np.zeros((0, 1, s, s), np.float32),
            matrices=matrices,
            items=[(li, name) for li, name, _ in placed],
        )
        legs = locator.decode_fine(coarse, inputs, fine_heatmaps(locator, [inputs])[0])
        out.append(
            {
                (li, name): (float(p[0]), float(p[1]))
                for li, leg in enumerate(legs)
                for name, p in leg.points.items()
                if name in fine_names
            }
        )
    return out


def spread(
    answers: list[dict[tuple[int, str], tuple[float, float]]],
) -> dict[tuple[int, str], dict]:
    """(leg, landmark) -> range and SD (film px) of its answers over the offsets."""
    out = {}
    for key in answers[0]:
        pts = np.array([a[key] for a in answers if key in a], dtype=np.float64)
        if len(pts) < 2:
            continue
        extent = pts.max(axis=0) - pts.min(axis=0)
        out[key] = {
            "range_px": float(np.hypot(*extent)),
            "sd_px": float(np.sqrt(pts.var(axis=0).sum())),
        }
    return out


def summarise(per_leg: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    rows = {}
    for name, values in sorted(per_leg.items()):
        r = np.array([v["range_px"] for v in values])
        sd = np.array([v["sd_px"] for v in values])
        rows[name] = {
            "legs": len(values),
            "range_mean_px": float(r.mean()),
            "range_max_px": float(r.max()),
            "sd_mean_px": float(sd.mean()),
        }
    every = [v for values in per_leg.values() for v in values]
    if every:
        rows["all"] = {
            "legs": len(every),
            "range_mean_px": float(np.mean([v["range_px"] for v in every])),
            "range_max_px": float(np.max([v["range_px"] for v in every])),
            "sd_mean_px": float(np.mean([v["sd_px"] for v in every])),
        }
    return rows


def evaluate(locator: Locator, films: Iterable[AnnotatedFilm], period: int = 16) -> dict:
    offsets = crop_offsets(period)
    per_leg: dict[str, list[dict]] = {}
    for film in films:
        answers = shifted_answers(locator, film.to_radiograph(), offsets)
        if not answers or not answers[0]:
            continue
        for (li, name), v in spread(answers).items():
            per_leg.setdefault(name, []).append({"film": film.source, "leg": li, **v})
    return {
        "period": period,
        "offsets": len(offsets),
        "landmarks": summarise(per_leg),
        "per_leg": per_leg,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m legalign.training.shift_stability", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("checkpoint", help="a locator checkpoint, or 'default' for the shipped one")
    ap.add_argument("dataset", help="a dataset spec (COCO JSON, LabelMe folder, CSV, synthetic:N)")
    ap.add_argument("--period", type=int, default=16, help="largest move, crop px (default 16)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.period < 1:
        ap.error(f"--period: must be >= 1, got {args.period}")
    try:
        locator = load_locator(None if args.checkpoint == "default" else args.checkpoint)
        films = load_dataset(args.dataset)
        result = evaluate(locator, tqdm(films, desc="films", unit="film"), args.period)
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=1))
    except (InputError, ConfigError, OSError) as exc:
        print(f"shift_stability: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"fine landmarks, crops moved by 0..{args.period} px in x and in y "
        f"({result['offsets']} placements); film px"
    )
    print(f"{'landmark':26s} {'legs':>5s} {'range mean':>11s} {'range max':>10s} {'SD mean':>8s}")
    for name, row in result["landmarks"].items():
        print(
            f"{name:26s} {row['legs']:5d} {row['range_mean_px']:11.2f} "
            f"{row['range_max_px']:10.2f} {row['sd_mean_px']:8.2f}"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
