"""Throughput of `legalign run --engine ray` next to the local engine, same films (not a test).

    .venv/bin/python benchmarks/bench_ray.py --n 8 --workers 2

Uses benchmarks/bench_run.py's films (native-size 16-bit synthetic DICOM, made once in
``--data``) and model choice (``--model``, else the shipped default, else random weights
with the default architecture: same compute, meaningless landmarks).  Runs on the same
list of films:

- the local engine (``--mode worker``, the CPU default) with ``--workers`` processes,
  through bench_run.end_to_end;
- the Ray engine on a local Ray started here with ``num_cpus = --workers`` (one machine:
  what the distribution costs, not what a cluster gains), once on a fresh Ray ("cold":
  worker processes and actors start during the run) and ``--repeat`` more times on the
  same Ray ("warm" task workers; actors are started again by every run).

Each figure is films/s over the whole run (engine start to the results table; the
local Ray's own start-up is reported apart), with the local engine's steady state (first
to last finished film) and the Ray engine's time to its first finished film.  Every run
writes every output (JSON, overlay, DICOM SR and SC).
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

import bench_run  # noqa: E402  (benchmarks/bench_run.py: films, model, local engine run)


def ray_end_to_end(files: list[Path], model: str | None, workers: int, out: Path) -> dict:
    """One Ray engine run on a list of files (Ray already initialised)."""
    from pipeline.engine.local import EngineOptions
    from pipeline.engine.ray_engine import RayEngine, RayOptions

    if out.exists():
        shutil.rmtree(out)
    list_file = out.parent / f"{out.name}.txt"
    list_file.write_text("".join(f"{f}\n" for f in files))
    opts = EngineOptions(out_dir=out, model=model, workers=workers, progress=False, batch_size=4)
    engine = RayEngine([str(list_file)], opts, RayOptions())
    stamps: list[float] = []
    record = engine._record

    def stamped(d):
        stamps.append(time.perf_counter())
        record(d)

    engine._record = stamped  # type: ignore[method-assign]
    t0 = time.perf_counter()
    code = engine.run()
    wall = time.perf_counter() - t0
    s = engine.summary.to_dict()
    lay = engine.layout
    return {
        "exit_code": code,
        "films": len(files),
        "failed": s["files_failed"],
        "failures": s["failures_by_reason"],
        "legs": s["legs_total"],
        "wall_s": round(wall, 2),
        "films_per_s_total": round(len(files) / wall, 3),
        # rows stream back in blocks, so a first-to-last rate means little here; the
        # time to the first journalled film shows the start-up instead
        "first_film_s": round(stamps[0] - t0, 2) if stamps else None,
        "actors_per_stage": lay.actors if lay else None,
        "actor_cpus": lay.actor_cpus if lay else None,
        "stage_s_per_film": {k: v["seconds_per_film"] for k, v in s["stages"].items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=8, help="films (default 8)")
    ap.add_argument("--workers", type=int, default=2, help="local workers = local Ray CPUs")
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=Path("/tmp/legalign-bench"))
    ap.add_argument(
        "--syntax", default="uncompressed", choices=list(bench_run.SYNTAXES), help="films' coding"
    )
    ap.add_argument("--repeat", type=int, default=1, help="warm Ray runs after the cold one")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    import ray

    args.data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = bench_run.make_films(args.data, args.n)[args.syntax]
    print(f"films ready in {time.perf_counter() - t0:.1f} s under {args.data}", flush=True)
    model, model_note = bench_run.model_path(args.model, args.data)
    import pydicom

    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    report: dict = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        "films": f"{args.n} {args.syntax}, {ds.Columns} x {ds.Rows}, {ds.BitsStored} bits",
        "model": model_note,
        "workers": args.workers,
        "ray": ray.__version__,
    }
    report["local_worker_mode"] = bench_run.end_to_end(
        files, model, args.workers, "worker", args.data / "out_local_worker"
    )
    print(json.dumps({"local": report["local_worker_mode"]}, indent=2), flush=True)
    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="warning")
    report["ray_init_s"] = round(time.perf_counter() - t0, 2)
    try:
        runs = []
        for i in range(1 + args.repeat):
            runs.append(ray_end_to_end(files, model, args.workers, args.data / f"out_ray_{i}"))
            print(json.dumps({f"ray run {i}": runs[-1]}, indent=2), flush=True)
    finally:
        ray.shutdown()
    report["ray_cold"] = runs[0]
    report["ray_warm"] = runs[1:]
    report["load_average_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
