"""A small `legalign run` output folder for the review tests, made without the network.

Synthetic films (training.synth, exact landmarks) are written as DICOM (and PNG); their
results are built by the pipeline's own result builder (``pipeline.api.result_from_legs``)
from the true landmarks with a known error added to the knee centre (what a reviewer would
correct) and model-like confidences, then written with the engine's output writer
(``finish_outputs``) and table writer.  So the folder has exactly the layout and content
of a run, and the tests know where the right answer is.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KNEE_ERROR_PX = (9.0, -6.0)  # added to every leg's knee centre ("the model's error")
LOW_CONF = ("right", "tibial_shaft_distal")  # one low-confidence landmark on film 0


@dataclass
class ReviewRun:
    results: Path
    films: list[Path]  # the original films, in order
    truth: dict[str, dict[str, dict[str, tuple[float, float]]]]  # film path -> side -> points


def make_review_run(
    tmp: Path, n: int = 2, *, fmt: str = "dicom", seed: int = 11, size: str = "small"
) -> ReviewRun:
    import cv2

    from legalign.pipeline.api import FilmInfo, result_from_legs
    from legalign.pipeline.engine.options import EngineOptions
    from legalign.pipeline.engine.write import finish_outputs
    from legalign.pipeline.geometry_config import load_geometry_config
    from legalign.pipeline.landmarks import LegLandmarks
    from legalign.pipeline.outputs.table import write_tables
    from legalign.pipeline.read import read_radiograph
    from legalign.training.synth import dicom_archive as dicom
    from legalign.training.synth import generate_film

    films_dir, out = tmp / "films", tmp / "results"
    films_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "overlays", "dicom"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    cfg = load_geometry_config()
    opts = EngineOptions(out_dir=out, overlay=False, dicom_outputs=False, progress=False)
    paths, truth, dicts = [], {}, []
    for i in range(n):
        film = generate_film(seed + i, size=size, distractors=False)
        if fmt == "dicom":
            path = films_dir / f"film_{i:03d}.dcm"
            dicom.write_film_dicom(path, film, dicom.DicomOptions(), index=i, seed=seed)
        else:
            path = films_dir / f"film_{i:03d}.png"
            cv2.imwrite(str(path), film.image)
        rad = read_radiograph(path)
        legs = []
        truth[str(path)] = {}
        rng = np.random.default_rng(seed + i)
        for leg in film.legs:
            truth[str(path)][leg.side] = dict(leg.points)
            pts = dict(leg.points)
            kx, ky = pts["knee_centre"]
            pts["knee_centre"] = (kx + KNEE_ERROR_PX[0], ky + KNEE_ERROR_PX[1])
            conf = {name: float(rng.uniform(0.75, 0.99)) for name in pts}
            if i == 0 and leg.side == LOW_CONF[0]:
                conf[LOW_CONF[1]] = 0.3
            legs.append(
                LegLandmarks(side=leg.side, points=pts, confidence=conf, mirrored=leg.mirrored)
            )
        d = result_from_legs(FilmInfo.from_radiograph(rad), legs, cfg, model_name="test").to_dict()
        dicts.append(finish_outputs(d, None, None, opts))
        paths.append(path)
    write_tables(dicts, out)
    return ReviewRun(out, paths, truth)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(results: Path, port: int, log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("legalign")
    cmd = [str(exe), "review", str(results), "--port", str(port), "--reviewer", "Dr K"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/worklist", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()) from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def page_token(port: int) -> str:
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/").read().decode()
    return page.split('name="review-token" content="')[1].split('"')[0]
