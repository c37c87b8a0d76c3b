"""Time the coarse-to-fine stage (``pipeline.coarse_to_fine``) on native-resolution synthetic films (CPU by default).

    python benchmarks/bench_locate.py [--checkpoint PATH] [--films 3] [--repeats 5] [--threads 2]
    python benchmarks/bench_locate.py --dataset ../shared/data/oai-sample/annotations/val.json --films 10

``--dataset``: any ``training.datasets.load_dataset`` spec instead (e.g. real 128 x 1024
films from a COCO file; the first ``--films`` films are timed).

Prints the per-stage and total seconds per film (median over repeats, after a warm-up),
and the landmark errors against the films' ground truth.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="default: the shipped model")
    p.add_argument("--films", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=2_000_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataset", default=None, help="default: synthetic:FILMS:native")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import numpy as np
    import torch

    from legalign.pipeline import coarse_to_fine as c2f
    from legalign.pipeline.locate import Locator
    from legalign.training.datasets import load_dataset
    from legalign.training.evaluate import evaluate_films, format_report, summarise

    torch.set_num_threads(args.threads)
    loc = Locator.from_checkpoint(args.checkpoint, device=args.device)
    if args.dataset is None:
        ds = load_dataset(f"synthetic:{args.films}:native", seed=args.seed)
        what = "native synthetic films"
    else:
        ds = load_dataset(args.dataset)
        what = f"films of {args.dataset}"
    films = [ds[i] for i in range(min(args.films, len(ds)))]
    from legalign.pipeline.radiograph import Radiograph

    stage_t: dict[str, list[float]] = {
        "coarse_input": [],
        "coarse_net": [],
        "fine_inputs": [],
        "fine_net": [],
        "total": [],
    }
    for f in films:
        rg = Radiograph(path=f.source, pixels=f.image, spacing_mm=f.spacing_mm)
        film = c2f.film_of(rg, rg.pixels)
        c2f.locate_films(loc, [film])  # warm-up
        for _ in range(args.repeats):
            # one fine pass of each step, then the whole stage (all fine passes)
            t0 = time.perf_counter()
            x = c2f.coarse_input(loc, film.pixels)
            t1 = time.perf_counter()
            heat = c2f.coarse_heatmaps(loc, [x])
            coarse = loc.decode_coarse(heat[0], rg, x)
            t2 = time.perf_counter()
            fi = c2f.fine_inputs(loc, film.pixels, coarse)
            t3 = time.perf_counter()
            fh = c2f.fine_heatmaps(loc, [fi])[0]
            loc.decode_fine(coarse, fi, fh)
            t4 = time.perf_counter()
            t5 = time.perf_counter()
            c2f.locate_films(loc, [film])
            t6 = time.perf_counter()
            for k, v in zip(stage_t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5), strict=True):
                stage_t[k].append(v)
    h, w = films[0].image.shape
    print(f"{len(films)} {what} (~{w} x {h} px), {args.threads} threads, device {args.device}")
    for k, v in stage_t.items():
        print(f"  {k:13s} {np.median(v):.3f} s/film (median)")
    legs, failures, timing = evaluate_films(films, lambda rg: c2f.locate_radiographs(loc, [rg])[0])
    print(f"{what}:\n" + format_report(summarise(legs, failures, extra=timing)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
