"""Resolution-progressive reading vs the full decode, side by side, per syntax (not a test).

    .venv/bin/python benchmarks/bench_progressive.py --n 6 --workers 2 \
        --data /tmp/legalign-bench-prog --json /tmp/bench_progressive.json

The same native-size synthetic films (training.synth ``--size native``, DX) are stored as
uncompressed (explicit VR little endian, 16 bits), JPEG 2000 lossless (16 bits), HTJ2K
lossless (16 bits; only when the optional imagecodecs encoder is installed) and 8-bit
baseline JPEG.  For each syntax, in one run:

- ``decode_only_full``: decoding whole films alone (``pipeline.read.dicom.decode``, the
  reader's plugin choice) in ``--workers`` processes -- the old floor of a compressed
  archive;
- ``end_to_end_full``: ``legalign run`` (local engine, mode worker, every output) with
  ``--decoder full`` (today's path: every film decoded whole);
- ``end_to_end_progressive``: the same with ``--decoder auto`` (the default): coarse pass
  and overlay from a reduced level, crops decoded as regions;
- ratios of the end-to-end rates to the decode-only rate and to each other, from wall
  clock and (``*_cpu``) from CPU seconds per film over every process (the rate on idle
  cores is ``workers`` / CPU s per film; wall-clock rates on a shared machine swing with
  the other jobs' load, CPU seconds far less).

End-to-end rates are over the processing only (from initialised workers to the last
result), as in bench_run.py.  Peak memory per worker: one J2K film read and located in a
fresh process per path, ``ru_maxrss`` after minus before (imports, model and a warm-up
film already paid), and tracemalloc's peak of the Python-visible allocations (numpy).
The machine is shared: the load average is reported with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_run import _init, _proc_cpu, _warm, pool_rate  # noqa: E402

SYNTAXES = {  # label -> (transfer_syntax option, bits stored)
    "uncompressed": ("explicit", 16),
    "jpeg2000": ("j2k", 16),
    "htj2k": ("htj2k", 16),
    "jpeg-baseline": ("jpeg", 8),
}


def make_films(data: Path, n: int, labels: list[str]) -> dict[str, list[Path]]:
    from legalign.training.synth.dicom_archive import DicomOptions, write_film_dicom
    from legalign.training.synth.film import generate_film

    out: dict[str, list[Path]] = {k: [] for k in labels}
    for i in range(n):
        film = None
        for label in labels:
            syntax, bits = SYNTAXES[label]
            path = data / label / f"film{i:03d}.dcm"
            out[label].append(path)
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if film is None:
                film = generate_film(1000 + i, size="native")
            opts = DicomOptions(modality="DX", bits_stored=bits, transfer_syntax=syntax)
            tmp = path.with_suffix(".tmp")
            write_film_dicom(tmp, film, opts, index=i, seed=1000 + i)
            tmp.replace(path)
    return out


def _decode_full(path: str) -> float:
    from legalign.pipeline.read.dicom import decode, read_header

    c0 = time.process_time()
    decode(path, read_header(path))
    return time.process_time() - c0


def end_to_end(files: list[Path], workers: int, decoder: str, out: Path) -> dict:
    """The local engine (mode worker, every output) over ``files``; films/s over the
    processing only (from initialised workers to the last result)."""
    from legalign.pipeline.engine.local import EngineOptions, LocalEngine

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    list_file = out.parent / f"{out.name}.txt"
    list_file.write_text("".join(f"{f}\n" for f in files))
    opts = EngineOptions(
        out_dir=out, workers=workers, mode="worker", progress=False, decoder=decoder
    )
    marks: dict[str, float] = {}
    cpu0: dict[int, float] = {}
    cpu_last: dict[int, float] = {}
    procs: list = []

    class Timed(LocalEngine):
        def _new_pool(self):
            pool = super()._new_pool()
            list(pool.map(_warm, range(2 * workers)))
            if "ready" not in marks:
                procs.append(pool)
                cpu0.update({p: _proc_cpu(p) for p in pool._processes})
                marks["main_cpu0"] = time.process_time()
                marks["ready"] = time.perf_counter()
            return pool

    engine = Timed([str(list_file)], opts)
    original = engine.book.record

    def record(d, *a, **k):
        original(d, *a, **k)
        marks["last"] = time.perf_counter()
        if procs:
            cpu_last.update({p: _proc_cpu(p) for p in procs[0]._processes})
            marks["main_cpu_last"] = time.process_time()

    engine.book.record = record  # type: ignore[method-assign]
    t0 = time.perf_counter()
    code = engine.run()
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    busy = marks.get("last", t0) - marks.get("ready", t0)
    cpu = (marks.get("main_cpu_last", 0.0) - marks.get("main_cpu0", 0.0)) + sum(
        v - cpu0.get(p, 0.0) for p, v in cpu_last.items()
    )
    return {
        "exit_code": code,
        "films": len(files),
        "failed": s["files_failed"],
        "legs": s["legs_total"],
        "wall_s": round(wall, 2),
        "films_per_s": round(len(files) / busy, 3) if busy > 0 else None,
        "cpu_s_per_film": round(cpu / len(files), 4),
        "films_per_s_on_idle_cores": round(workers * len(files) / cpu, 3) if cpu > 0 else None,
        "by_syntax": s.get("by_syntax"),
        "stages": {k: v["seconds_per_film"] for k, v in s["stages"].items()},
    }


_MEMORY_PROBE = r"""
import json, resource, sys, tracemalloc
import torch
torch.set_num_threads(1)
from legalign.pipeline.api import load_locator
from legalign.pipeline.coarse_to_fine import locate_radiographs
from legalign.pipeline.outputs.overlay import thumbnail
from legalign.pipeline.read import read_radiograph
path, warm, decoder = sys.argv[1], sys.argv[2], sys.argv[3]
loc = load_locator(None)
def one(p):
    rad = read_radiograph(p, decoder=decoder)
    thumb = thumbnail(rad.pixels, 2048)
    legs = locate_radiographs(loc, [rad])[0]
    return len(legs), thumb.shape
one(warm)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
legs, shape = one(path)
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"legs": legs, "thumbnail": list(shape), "rss_peak_increase_mb": round((after - before) / 1024, 1),
                  "tracemalloc_peak_mb": round(peak / 2**20, 1), "rss_peak_mb": round(after / 1024, 1)}))
"""


def peak_memory(film: Path, warm: Path, decoder: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(film), str(warm), decoder],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=6, help="films per syntax (default 6)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", type=Path, default=Path("/tmp/legalign-bench-prog"))
    ap.add_argument("--syntaxes", nargs="+", default=list(SYNTAXES), choices=list(SYNTAXES))
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    from legalign.training.synth.dicom_archive import htj2k_available

    labels = list(args.syntaxes)
    notes = {}
    if "htj2k" in labels and not htj2k_available():
        labels.remove("htj2k")
        notes["htj2k"] = "not measured: no HTJ2K encoder installed (pip install 'legalign[htj2k]')"
    args.data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    films = make_films(args.data, args.n, labels)
    print(f"films ready in {time.perf_counter() - t0:.1f} s under {args.data}", flush=True)
    _init()
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        "films_per_syntax": args.n,
        "workers": args.workers,
        "notes": notes,
        "results": {},
    }
    for label in labels:
        files = films[label]
        r: dict = {}
        rate, cpu = pool_rate(_decode_full, files, args.workers)
        r["decode_only_full_films_per_s"] = round(rate, 3)
        r["decode_only_full_cpu_s_per_film"] = round(cpu, 4)
        r["end_to_end_full"] = end_to_end(
            files, args.workers, "full", args.data / f"out_{label}_full"
        )
        r["end_to_end_progressive"] = end_to_end(
            files, args.workers, "auto", args.data / f"out_{label}_prog"
        )
        prog = r["end_to_end_progressive"]["films_per_s"] or 0.0
        full = r["end_to_end_full"]["films_per_s"] or 0.0
        r["progressive_vs_decode_only"] = round(prog / r["decode_only_full_films_per_s"], 3)
        r["progressive_vs_full_end_to_end"] = round(prog / full, 3) if full else None
        # the same ratios from CPU seconds per film (workers / CPU s: the rate on idle
        # cores), which depend far less on what else runs on a shared machine
        prog_cpu = r["end_to_end_progressive"]["cpu_s_per_film"]
        full_cpu = r["end_to_end_full"]["cpu_s_per_film"]
        r["progressive_vs_decode_only_cpu"] = (
            round(r["decode_only_full_cpu_s_per_film"] / prog_cpu, 3) if prog_cpu else None
        )
        r["progressive_vs_full_end_to_end_cpu"] = (
            round(full_cpu / prog_cpu, 3) if prog_cpu else None
        )
        r["load_average"] = round(os.getloadavg()[0], 2)
        report["results"][label] = r
        print(json.dumps({label: r}, indent=2), flush=True)
    if "jpeg2000" in labels:
        warm = films["jpeg2000"][1 if len(films["jpeg2000"]) > 1 else 0]
        film = films["jpeg2000"][0]
        mem = {d: peak_memory(film, warm, d) for d in ("full", "auto")}
        full_mb = mem["full"].get("rss_peak_increase_mb")
        prog_mb = mem["auto"].get("rss_peak_increase_mb")
        if full_mb and prog_mb is not None:
            mem["progressive_over_full_rss"] = round(prog_mb / full_mb, 3)
        report["peak_memory_per_worker_jpeg2000"] = mem
        print(json.dumps({"peak_memory_per_worker_jpeg2000": mem}, indent=2), flush=True)
    report["load_average_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
