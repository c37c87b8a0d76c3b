"""Compare the locate stage of two legalign checkouts, alternating (A/B/A/B) on one machine.

    python benchmarks/ab_locate.py --a OLD/.venv/bin/python --b NEW/.venv/bin/python \\
        --dataset ../shared/data/oai-sample/annotations/val.json --films 10 --repeats 10 --rounds 3

Each round runs one process per checkout in turn (A then B), so load from other jobs
falls on both alike.  A process loads the shipped model, locates every film once (a
warm-up, whose landmarks are kept), then times ``coarse_to_fine.locate_radiographs``
on one film per call, ``--repeats`` times over the films.  Prints the median (and
quartiles) seconds per film over all calls of each checkout, the median process CPU
seconds per film (both torch threads together: less sensitive to other jobs' load than
the wall time, though not immune to it), and the largest landmark
difference between the two checkouts' answers.  Only API that every checkout has is
used, so an older checkout can be either side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def child(dataset: str, films: int, repeats: int, threads: int) -> None:
    """One timing run of the legalign this interpreter imports: JSON on stdout."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from legalign.pipeline import coarse_to_fine as c2f
    from legalign.pipeline.locate import Locator
    from legalign.pipeline.radiograph import Radiograph
    from legalign.training.datasets import load_dataset

    torch.set_num_threads(threads)
    ds = load_dataset(dataset)
    rgs = [
        Radiograph(path=f.source, pixels=f.image, spacing_mm=f.spacing_mm)
        for f in (ds[i] for i in range(min(films, len(ds))))
    ]
    loc = Locator.from_checkpoint(None)
    answers = [c2f.locate_radiographs(loc, [rg])[0] for rg in rgs]
    times, cpu = [], []
    for _ in range(repeats):
        for rg in rgs:
            t, c = time.perf_counter(), time.process_time()
            c2f.locate_radiographs(loc, [rg])
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    points = [
        [
            {"side": str(leg.side), "points": {k: list(v) for k, v in leg.points.items()}}
            for leg in legs
        ]
        for legs in answers
    ]
    print(json.dumps({"times": times, "cpu": cpu, "points": points}))


def largest_difference(a: list, b: list) -> tuple[float, int, int]:
    """(largest landmark distance px, legs compared, films whose legs differ in number,
    side or landmark names)."""
    import math

    worst, legs, differ = 0.0, 0, 0
    for fa, fb in zip(a, b, strict=True):
        if len(fa) != len(fb) or any(
            la["side"] != lb["side"] or set(la["points"]) != set(lb["points"])
            for la, lb in zip(fa, fb, strict=True)
        ):
            differ += 1
            continue
        for la, lb in zip(fa, fb, strict=True):
            legs += 1
            for name, p in la["points"].items():
                q = lb["points"][name]
                worst = max(worst, math.hypot(p[0] - q[0], p[1] - q[1]))
    return worst, legs, differ


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="python of checkout A (e.g. OLD/.venv/bin/python)")
    p.add_argument("--b", required=True, help="python of checkout B")
    p.add_argument("--dataset", required=True, help="a training.datasets.load_dataset spec")
    p.add_argument("--films", type=int, default=10)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.dataset, args.films, args.repeats, args.threads)
        return 0

    import numpy as np

    me = str(Path(__file__).resolve())
    opts = ["--dataset", args.dataset, "--films", str(args.films), "--repeats", str(args.repeats)]
    opts += ["--threads", str(args.threads), "--a", "-", "--b", "-", "--child"]
    times: dict[str, list[float]] = {"A": [], "B": []}
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    points: dict[str, list] = {}
    for r in range(args.rounds):
        for side, py in (("A", args.a), ("B", args.b)):
            res = subprocess.run([py, me, *opts], capture_output=True, text=True)
            if res.returncode:
                print(f"{side} ({py}) failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                return 1
            got = json.loads(res.stdout.strip().splitlines()[-1])
            times[side] += got["times"]
            cpu[side] += got["cpu"]
            points[side] = got["points"]
            print(f"round {r + 1} {side}: median {np.median(got['times']):.4f} s/film", flush=True)
    for side, py in (("A", args.a), ("B", args.b)):
        t = times[side]
        print(
            f"{side} {py}: median {np.median(t):.4f} s/film "
            f"(quartiles {np.percentile(t, 25):.4f}-{np.percentile(t, 75):.4f}, {len(t)} calls), "
            f"CPU {np.median(cpu[side]):.4f} s/film (all threads)"
        )
    worst, legs, differ = largest_difference(points["A"], points["B"])
    print(
        f"B/A {np.median(times['B']) / np.median(times['A']):.3f}; largest landmark difference "
        f"{worst:.2e} px over {legs} legs; films whose legs differ: {differ}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
