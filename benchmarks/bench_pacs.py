"""`legalign pacs` against a local Orthanc next to `legalign run` on the same films (not a test).

    .venv/bin/python benchmarks/bench_pacs.py --n 12 --workers 2 --concurrency 4 \\
        --data /tmp/legalign-bench --json /tmp/bench_pacs.json

Makes ``--n`` native-size uncompressed 16-bit DX films (one study each; the same films
and folder as benchmarks/bench_run.py), starts a throw-away Orthanc with the DICOMweb
plugin on loopback (tests/orthanc_server.py; needs Debian's orthanc + orthanc-dicomweb),
uploads them, then times, each in a fresh process with every output written:

- ``legalign run DATA --out A`` (films from disk);
- ``legalign pacs URL --out B`` (QIDO-RS, WADO-RS with --concurrency requests, the same
  engine, STOW-RS of the SR + SC back, the QIDO-RS checks).

Reported: wall time and films/s of each (whole command, worker start-up included), the
ratio pacs / run, and the peak resident memory of the `legalign pacs` main process
(sampled from /proc every 0.1 s) for the first half of the films and for all of them
(memory flat in the number of studies: the two peaks should match).  The machine is
shared: the load average before and after is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(wall seconds, exit code, peak RSS in kB of the process itself)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.read().decode(errors="replace")[-2000:])
    return wall, proc.returncode, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--data", default="/tmp/legalign-bench")
    ap.add_argument("--json")
    a = ap.parse_args()

    from bench_run import make_films

    # the test suite's throw-away Orthanc (test support lives under tests/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from orthanc_server import OrthancServer

    data = Path(a.data)
    films = make_films(data, {"uncompressed": a.n})["uncompressed"][: a.n]
    legalign = str(Path(sys.executable).with_name("legalign"))
    env = dict(os.environ)
    report: dict = {"n": a.n, "workers": a.workers, "concurrency": a.concurrency}
    report["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="legalign-bench-pacs-") as tmp:
        t = Path(tmp)
        films_dir = t / "films"
        films_dir.mkdir()
        for f in films:  # only these n films (the folder may hold more)
            (films_dir / f.name).symlink_to(f.resolve())
        common = ["--workers", str(a.workers), "--no-progress"]
        wall, rc, _ = timed(
            [legalign, "run", str(films_dir), "--out", str(t / "run"), *common], env
        )
        report["run"] = {"wall_s": wall, "films_per_s": a.n / wall, "exit": rc}
        orthanc = OrthancServer(t / "orthanc")
        orthanc.start()
        try:
            half = films[: a.n // 2]
            for f in films:
                orthanc.upload(f)
            pacs = [legalign, "pacs", orthanc.url, "--concurrency", str(a.concurrency), *common]
            # memory: half the studies (a study list), then all of them, each from scratch
            lst = t / "half.txt"
            import pydicom

            lst.write_text(
                "".join(
                    f"{pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID}\n"
                    for f in half
                )
            )
            w_half, rc_half, rss_half = timed(
                [*pacs, "--out", str(t / "pacs_half"), "--study-list", str(lst)], env
            )
            orthanc.clear()
            for f in films:
                orthanc.upload(f)
            wall, rc, rss = timed([*pacs, "--out", str(t / "pacs")], env)
            summary = json.loads((t / "pacs" / "pacs_summary.json").read_text())["this_run"]
            report["pacs"] = {
                "wall_s": wall,
                "films_per_s": a.n / wall,
                "exit": rc,
                "stored": summary["stored"],
                "retrieved_mb": summary["retrieved_bytes"] / 1e6,
                "peak_rss_mb_main": rss / 1024,
                "half": {
                    "n": len(half),
                    "wall_s": w_half,
                    "exit": rc_half,
                    "peak_rss_mb_main": rss_half / 1024,
                },
            }
        finally:
            orthanc.stop()
    report["pacs_over_run"] = report["pacs"]["films_per_s"] / report["run"]["films_per_s"]
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
