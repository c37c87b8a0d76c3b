"""Throughput of `legalign run` on native-size 16-bit DICOM films (not a test).

    .venv/bin/python benchmarks/bench_run.py --n 24 --n-j2k 8 --workers 2 [--model CKPT]

Reports, for uncompressed (explicit VR little endian) and JPEG 2000 lossless films:

- decode-only rate: pixel decoding alone, with the reader's decoder choice
  (pipeline.read.dicom.decode), in ``--workers`` processes (the bound for a compressed
  archive);
- read rate: decode + grey-level normalisation (pipeline.read) in the same processes;
- per-stage time per film, measured in one process (read, thumbnail, locate, measure +
  plan, write: overlay PNG, DICOM SR, Secondary Capture, JSON);
- CPU seconds per film of each (all processes), and the films/s that gives on idle cores
  (``workers`` / CPU s per film): the machine this runs on is shared, so wall-clock
  rates depend on what else runs (the load average is reported);
- end to end: the local engine (``legalign run`` with every output) in each --mode, as
  films/s over the whole call (worker start-up included) and over the processing only
  (from initialised workers to the last result; the archive-scale figure).

The films are made once with training.synth (``--size native``, 16 bits stored) and kept
in ``--data``.  The model is ``--model``, else the shipped default, else a randomly
initialised network with the default architecture (same compute; its landmarks are
meaningless and it may find no legs, so fewer outputs are written: the report says how
many legs were found).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYNTAXES = {"uncompressed": "explicit", "jpeg2000": "j2k"}


def make_films(data: Path, counts: dict[str, int]) -> dict[str, list[Path]]:
    from legalign.training.synth.dicom_archive import DicomOptions, write_film_dicom
    from legalign.training.synth.film import generate_film

    out: dict[str, list[Path]] = {k: [] for k in SYNTAXES}
    for i in range(max(counts.values())):
        film = None
        for label, ts in SYNTAXES.items():
            if i >= counts.get(label, 0):
                continue
            path = data / label / f"film{i:03d}.dcm"
            out[label].append(path)
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if film is None:
                film = generate_film(1000 + i, size="native")
            opts = DicomOptions(modality="DX", bits_stored=16, transfer_syntax=ts)
            tmp = path.with_suffix(".tmp")
            write_film_dicom(tmp, film, opts, index=i, seed=1000 + i)
            tmp.replace(path)
    return out


def model_path(arg: str | None, data: Path) -> tuple[str | None, str]:
    if arg:
        return arg, f"given: {arg}"
    from legalign.models.checkpoint import DEFAULT_WEIGHTS

    if DEFAULT_WEIGHTS.is_file():
        return None, f"shipped default ({DEFAULT_WEIGHTS.name})"
    import yaml

    from legalign.models.checkpoint import build_nets, make_checkpoint, save_checkpoint
    from legalign.models.spec import LocatorSpec

    spec = LocatorSpec.from_dict(
        yaml.safe_load((REPO / "configs" / "train_default.yaml").read_text())["model"]
    )
    path = data / "random_default_arch.pt"
    coarse, fine = build_nets(spec)
    save_checkpoint(make_checkpoint(spec, coarse, fine, half=True), path)
    return str(path), "RANDOM weights, default architecture (no default checkpoint committed)"


def _init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import cv2

    cv2.setNumThreads(1)


def _decode(path: str) -> float:
    """Decode only, with the decoder the reader uses (pipeline.read.dicom picks a preferred
    plugin per transfer syntax); returns the CPU seconds it took in this process."""
    from legalign.pipeline.read.dicom import decode, read_header

    c0 = time.process_time()
    decode(path, read_header(path))
    return time.process_time() - c0


def _read(path: str) -> float:
    from legalign.pipeline.read import read_radiograph

    c0 = time.process_time()
    read_radiograph(path)
    return time.process_time() - c0


def pool_rate(fn, files: list[Path], workers: int) -> tuple[float, float]:
    """(films/s wall clock, CPU seconds per film) over ``workers`` processes."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")  # never fork a process that has started threads
    with ProcessPoolExecutor(max_workers=workers, initializer=_init, mp_context=ctx) as pool:
        list(pool.map(fn, [str(files[0])] * workers))  # warm the workers (imports)
        t0 = time.perf_counter()
        cpu = sum(pool.map(fn, [str(f) for f in files]))
        return len(files) / (time.perf_counter() - t0), cpu / len(files)


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def stage_times(files: list[Path], model: str | None, out: Path) -> dict[str, float]:
    """Seconds per film for each stage, one process, one thread."""
    import torch

    torch.set_num_threads(1)
    _init()
    from legalign.pipeline.api import FilmInfo, load_config, load_locator
    from legalign.pipeline.assemble import result_from_legs
    from legalign.pipeline.coarse_to_fine import locate_radiographs
    from legalign.pipeline.engine.options import EngineOptions
    from legalign.pipeline.engine.write import finish_outputs
    from legalign.pipeline.outputs.overlay import thumbnail
    from legalign.pipeline.read import read_radiograph
    from legalign.pipeline.read.dicom import decode, read_header

    loc = load_locator(model)
    cfg = load_config()
    for sub in ("images", "overlays", "dicom"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    opts = EngineOptions(out_dir=out)
    tot: dict[str, float] = {}
    legs_found = 0
    for i, f in enumerate([files[0], *files]):  # the first film warms caches, not counted
        t = {}
        t0 = time.perf_counter()
        decode(str(f), read_header(str(f)))
        t["decode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rad = read_radiograph(str(f))
        t["read (decode+normalise)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        thumb = thumbnail(rad.pixels)
        t["thumbnail"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        legs = locate_radiographs(loc, [rad])[0]
        t["locate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        d = result_from_legs(FilmInfo.from_radiograph(rad), legs, cfg).to_dict()
        t["measure+plan"] = time.perf_counter() - t0
        header = rad.header
        del rad
        t0 = time.perf_counter()
        finish_outputs(d, header, thumb, opts)
        t["write (overlay, SR, SC, JSON)"] = time.perf_counter() - t0
        if i == 0:
            continue
        legs_found += len(d["legs"]) if d["status"] != "failed" else 0
        for k, v in t.items():
            tot[k] = tot.get(k, 0.0) + v
    n = len(files)
    res = {k: v / n for k, v in tot.items()}
    res["legs found per film"] = legs_found / n
    # the cost of measuring and writing when two legs are found, whatever the model finds:
    # the first film's ground-truth landmarks (made by the generator) through the same code
    from legalign.pipeline.landmarks import LegLandmarks
    from legalign.training.synth.film import generate_film

    film = generate_film(1000, size="native")
    rad = read_radiograph(str(files[0]))
    thumb = thumbnail(rad.pixels)
    gt = [
        LegLandmarks(g.side, dict(g.points), {k: 0.9 for k in g.points}, g.mirrored)
        for g in film.legs
    ]
    reps = 3
    t_meas = t_write = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        d = result_from_legs(FilmInfo.from_radiograph(rad), gt, cfg).to_dict()
        t_meas += time.perf_counter() - t0
        t0 = time.perf_counter()
        finish_outputs(d, rad.header, thumb, opts)
        t_write += time.perf_counter() - t0
    res["measure+plan, 2 legs (ground-truth landmarks)"] = t_meas / reps
    res["write, 2 legs (ground-truth landmarks)"] = t_write / reps
    return res


def _warm(i: int) -> int:
    """Pay each worker's one-time costs (imports, highdicom's tables, first SR) before the
    clock starts, as an archive-scale run pays them once."""
    from legalign.pipeline.api import FilmInfo, load_config
    from legalign.pipeline.assemble import result_from_legs
    from legalign.pipeline.landmarks import LegLandmarks
    from legalign.pipeline.outputs.dicom_sc import build_sc
    from legalign.pipeline.outputs.dicom_sr import build_sr
    from legalign.pipeline.outputs.overlay import render_overlay, thumbnail
    from legalign.training.synth.dicom_archive import DicomOptions, build_dataset
    from legalign.training.synth.film import generate_film

    film = generate_film(i, size="small")
    ds = build_dataset(film, DicomOptions(), index=i, seed=i)
    del ds.PixelData
    h, w = film.image.shape
    info = FilmInfo("warm", w, h, 1.0, "user", False, None, "DX", 16, None, None, None)
    legs = [LegLandmarks(g.side, dict(g.points), {}, g.mirrored) for g in film.legs]
    d = result_from_legs(info, legs, load_config()).to_dict()
    build_sr(d, ds)
    build_sc(render_overlay(d, thumbnail(film.image / 65535.0, 256)), ds)
    return i


def end_to_end(files: list[Path], model: str | None, workers: int, mode: str, out: Path) -> dict:
    """The local engine over the films.  Rates: over the whole call (start-up included)
    and over the processing only (from the moment the worker processes are initialised,
    which the engine does before the first file is submitted, to the last result)."""
    from legalign.pipeline.engine.local import EngineOptions, LocalEngine

    if out.exists():
        shutil.rmtree(out)
    list_file = out.parent / f"{out.name}.txt"
    list_file.write_text("".join(f"{f}\n" for f in files))
    opts = EngineOptions(
        out_dir=out, model=model, workers=workers, mode=mode, progress=False, batch_size=4
    )

    class Timed(LocalEngine):
        ready_at: float | None = None
        last_at: float | None = None
        pool = None
        cpu0: dict[int, float] = {}
        cpu_last: dict[int, float] = {}
        main_cpu0 = main_cpu_last = 0.0

        def _new_pool(self):
            pool = super()._new_pool()
            # start every worker (its initialiser loads the config and, in mode
            # "worker", the networks) before the clock starts
            list(pool.map(_warm, range(2 * workers)))
            if self.ready_at is None:
                self.pool = pool
                self.cpu0 = {p: _proc_cpu(p) for p in pool._processes}
                self.main_cpu0 = time.process_time()
                self.ready_at = time.perf_counter()
            return pool

    engine = Timed([str(list_file)], opts)
    record = engine.book.record

    def timed_record(d):
        record(d)
        engine.last_at = time.perf_counter()
        if engine.pool is not None:
            engine.cpu_last = {p: _proc_cpu(p) for p in engine.pool._processes}
            engine.main_cpu_last = time.process_time()

    engine.book.record = timed_record
    t0 = time.perf_counter()
    code = engine.run()
    wall = time.perf_counter() - t0
    s = engine.summary.to_dict()
    busy = (engine.last_at or t0) - (engine.ready_at or t0)
    cpu = (engine.main_cpu_last - engine.main_cpu0) + sum(
        v - engine.cpu0.get(p, 0.0) for p, v in engine.cpu_last.items()
    )
    return {
        "cpu_s_per_film": round(cpu / len(files), 4),
        "films_per_s_on_idle_cores": round(workers * len(files) / cpu, 3) if cpu > 0 else None,
        "exit_code": code,
        "films": len(files),
        "failed": s["files_failed"],
        "failures": s["failures_by_reason"],
        "legs": s["legs_total"],
        "wall_s": round(wall, 2),
        "startup_s": round((engine.ready_at or t0) - t0, 2),
        "films_per_s_total": round(len(files) / wall, 3),
        "films_per_s": round(len(files) / busy, 3) if busy > 0 else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=24, help="uncompressed films (default 24)")
    ap.add_argument("--n-j2k", type=int, default=8, help="JPEG 2000 films (default 8)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=Path("/tmp/legalign-bench"))
    ap.add_argument("--modes", nargs="+", default=["worker", "main"], choices=["worker", "main"])
    ap.add_argument("--syntaxes", nargs="+", default=list(SYNTAXES), choices=list(SYNTAXES))
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    args.data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts = {"uncompressed": args.n, "jpeg2000": args.n_j2k}
    films = make_films(args.data, {k: v for k, v in counts.items() if k in args.syntaxes})
    print(f"films ready in {time.perf_counter() - t0:.1f} s under {args.data}", flush=True)
    model, model_note = model_path(args.model, args.data)
    import pydicom

    ds = pydicom.dcmread(films[args.syntaxes[0]][0], stop_before_pixels=True)
    report: dict = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        "films": f"{counts}, first film {ds.Columns} x {ds.Rows}, {ds.BitsStored} bits stored",
        "model": model_note,
        "workers": args.workers,
        "results": {},
    }
    for label in args.syntaxes:
        files = films[label]
        r: dict = {}
        rate, cpu = pool_rate(_decode, files, args.workers)
        r["decode_only_films_per_s"] = round(rate, 3)
        r["decode_only_cpu_s_per_film"] = round(cpu, 4)
        r["decode_only_films_per_s_on_idle_cores"] = round(args.workers / cpu, 3)
        rate, cpu = pool_rate(_read, files, args.workers)
        r["read_films_per_s"] = round(rate, 3)
        r["read_cpu_s_per_film"] = round(cpu, 4)
        st = stage_times(files, model, args.data / f"stages_{label}")
        r["stage_s_per_film_1_process"] = {k: round(v, 4) for k, v in st.items()}
        for mode in args.modes:
            r[f"end_to_end_{mode}"] = end_to_end(
                files, model, args.workers, mode, args.data / f"out_{label}_{mode}"
            )
            e = r[f"end_to_end_{mode}"]
            e["ratio_to_decode_only_wall"] = round(
                (e["films_per_s"] or 0.0) / r["decode_only_films_per_s"], 3
            )
            e["ratio_to_decode_only_cpu"] = round(
                r["decode_only_cpu_s_per_film"] / e["cpu_s_per_film"], 3
            )
        report["results"][label] = r
        print(json.dumps({label: r}, indent=2), flush=True)
    report["load_average_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
