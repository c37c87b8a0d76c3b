"""Throughput of `legalign run --engine ray` next to the local engine, same films (not a test).

    .venv/bin/python benchmarks/bench_ray.py --sizes 8 24 --workers 2 [--model CKPT]

Films and model as benchmarks/bench_run.py makes and chooses them (native-size 16-bit
synthetic DICOM kept in ``--data``; ``--model``, else the shipped default, else random
weights with the default architecture).  For each size N in ``--sizes``, on the first N
films:

- the local engine (``--mode worker``, the CPU default, ``--workers`` processes);
- the Ray engine on a local Ray started here with ``num_cpus = --workers`` (one machine:
  what the distribution costs, not what a cluster gains).  The Ray is started once and
  warmed by a first Ray run on 2 films (reported as "ray_first_run": worker processes
  start during it); every later run reuses the task workers and starts its own actors,
  as a long-lived cluster does.

Both engines are timed the same way: wall time of ``engine.run()`` (start to results
table) and the time to the first journalled film.  The per-film cost is the difference
between two sizes (start-up cancels out): seconds per extra film and its inverse, films/s.
Every run writes every output (JSON, overlay, DICOM SR and SC).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_run  # noqa: E402  (benchmarks/bench_run.py: films and model)


def timed_run(engine, n: int) -> dict:
    """Run an engine, stamping each journalled film."""
    stamps: list[float] = []
    record = engine.book.record

    def stamped(d):
        record(d)
        stamps.append(time.perf_counter())

    engine.book.record = stamped
    t0 = time.perf_counter()
    code = engine.run()
    wall = time.perf_counter() - t0
    s = engine.summary.to_dict()
    return {
        "exit_code": code,
        "films": n,
        "failed": s["files_failed"],
        "legs": s["legs_total"],
        "wall_s": round(wall, 2),
        "films_per_s_whole_run": round(n / wall, 3),
        "first_film_s": round(stamps[0] - t0, 2) if stamps else None,
        "stage_s_per_film": {k: v["seconds_per_film"] for k, v in s["stages"].items()},
    }


def _opts(files: list[Path], model: str | None, workers: int, out: Path):
    from legalign.pipeline.engine.local import EngineOptions

    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    list_file = out.parent / f"{out.name}.txt"
    list_file.write_text("".join(f"{f}\n" for f in files))
    opts = EngineOptions(out_dir=out, model=model, workers=workers, progress=False, batch_size=4)
    return [str(list_file)], opts


def local_run(files: list[Path], model: str | None, workers: int, out: Path) -> dict:
    from legalign.pipeline.engine.local import LocalEngine

    inputs, opts = _opts(files, model, workers, out)
    opts.mode = "worker"
    return timed_run(LocalEngine(inputs, opts), len(files))


def ray_run(files: list[Path], model: str | None, workers: int, out: Path) -> dict:
    from legalign.pipeline.engine.ray_engine import RayEngine, RayOptions

    inputs, opts = _opts(files, model, workers, out)
    engine = RayEngine(inputs, opts, RayOptions())
    r = timed_run(engine, len(files))
    lay = engine.layout
    r["actors_per_stage"] = lay.actors if lay else None
    r["actor_cpus"] = lay.actor_cpus if lay else None
    return r


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 24], help="films per run")
    ap.add_argument("--workers", type=int, default=2, help="local workers = local Ray CPUs")
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=Path("/tmp/legalign-bench"))
    ap.add_argument(
        "--syntax", default="uncompressed", choices=list(bench_run.SYNTAXES), help="films' coding"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    sizes = sorted(set(args.sizes))

    import ray

    args.data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = bench_run.make_films(args.data, {args.syntax: max(sizes)})[args.syntax]
    print(f"films ready in {time.perf_counter() - t0:.1f} s under {args.data}", flush=True)
    model, model_note = bench_run.model_path(args.model, args.data)
    out = args.data / "bench_ray"
    report: dict = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        "films": f"{args.syntax} native 16-bit synthetic DICOM, first N of {files[0].parent}",
        "model": model_note,
        "workers": args.workers,
        "ray": ray.__version__,
        "runs": {},
    }
    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="warning")
    report["ray_init_s"] = round(time.perf_counter() - t0, 2)
    try:
        report["ray_first_run"] = ray_run(files[:2], model, args.workers, out / "ray_first")
        for n in sizes:
            runs = {
                "local": local_run(files[:n], model, args.workers, out / f"local_{n}"),
                "ray": ray_run(files[:n], model, args.workers, out / f"ray_{n}"),
            }
            report["runs"][n] = runs
            print(json.dumps({n: runs}, indent=2), flush=True)
    finally:
        ray.shutdown()
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for engine in ("local", "ray"):
            dt = report["runs"][hi][engine]["wall_s"] - report["runs"][lo][engine]["wall_s"]
            per = dt / (hi - lo)
            report[f"{engine}_s_per_extra_film"] = round(per, 3)
            report[f"{engine}_films_per_s_marginal"] = round(1 / per, 3) if per > 0 else None
    report["load_average_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
