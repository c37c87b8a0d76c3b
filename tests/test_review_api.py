"""`legalign review` without a browser: worklist, recomputation by the pipeline's geometry,
durable state with version conflicts, session token, what is served, export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from review_run import KNEE_ERROR_PX, LOW_CONF, free_port, make_review_run, page_token, start_server

from legalign.pipeline.api import build_leg
from legalign.pipeline.geometry_config import load_geometry_config
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.review.app import create_app, safe_results_file
from legalign.pipeline.review.config import load_review_config
from legalign.pipeline.review.service import ReviewService
from legalign.pipeline.review.store import ReviewStore

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
TOKEN = "test-token"
H = {"X-Review-Token": TOKEN}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return make_review_run(tmp_path_factory.mktemp("review"), n=2, fmt="dicom")


@pytest.fixture()
def run(base_run, tmp_path):
    """A fresh copy of the results folder (the films are shared, read only)."""
    results = tmp_path / "results"
    shutil.copytree(base_run.results, results)
    return type(base_run)(results, base_run.films, base_run.truth)


def _service(run) -> ReviewService:
    return ReviewService.open(run.results, load_review_config(), load_geometry_config())


@pytest.fixture()
def client(run):
    from fastapi.testclient import TestClient

    svc = _service(run)
    app = create_app(svc, token=TOKEN, reviewer="Dr Test")
    with TestClient(app) as c:
        c.service = svc
        yield c
    svc.store.close()


def _first_leg(client, side="right", film=0):
    rows = client.get("/api/worklist").json()["rows"]
    name = f"film_{film:03d}.dcm"
    return next(r for r in rows if r["film"] == name and r["side"] == side)


def test_worklist_lists_every_leg_with_flags_and_states(client, run):
    rows = client.get("/api/worklist").json()["rows"]
    assert len(rows) == 4
    assert {(r["film"], r["side"]) for r in rows} == {
        (f"film_{i:03d}.dcm", s) for i in range(2) for s in ("right", "left")
    }
    low = next(r for r in rows if r["film"] == "film_000.dcm" and r["side"] == LOW_CONF[0])
    assert low["flagged"] and any("low confidence" in f for f in low["flags"])
    assert low["min_confidence"] == pytest.approx(0.3)
    for r in rows:
        assert r["review_state"] == "unreviewed"
        assert r["hka_interval_deg"] is None  # this run wrote no intervals
        assert r["hka_deg"] == r["hka_deg_model"]
        # ids are opaque: no file name in anything that becomes a URL
        assert "film" not in r["leg_id"] and "film" not in r["film_id"]
    page = client.get("/")
    assert page.status_code == 200 and TOKEN in page.text
    assert 'name="review-intervals" content="no"' in page.text


def test_interval_width_shown_when_the_run_has_intervals(run):
    path = next((run.results / "images").glob("*.json"))
    d = json.loads(path.read_text())
    d["legs"][0]["measurements"]["hka_deg_lo"] = -3.0
    d["legs"][0]["measurements"]["hka_deg_hi"] = 0.5
    path.write_text(json.dumps(d))

    def row_of(svc):
        rows = {(r["film_id"], r["side"]): r for r in svc.worklist()}
        film_id = next(f.film_id for f in svc.folder.films.values() if f.json_path == path)
        return rows[(film_id, d["legs"][0]["side"])]

    svc = _service(run)
    row = row_of(svc)
    assert row["hka_interval_deg"] == pytest.approx(3.5)
    assert svc.has_intervals()
    # the worklist flags what the run flagged (configs/geometry.yaml's one threshold)
    assert not any("HKA interval" in f for f in row["flags"])
    d["legs"][0]["review"] = True
    d["legs"][0]["review_reasons"] = ["HKA interval 3.5 deg wide (> 2.5)"]
    path.write_text(json.dumps(d))
    row = row_of(_service(run))
    assert "HKA interval 3.5 deg wide (> 2.5)" in row["flags"] and row["flagged"]


def test_dragging_a_point_recomputes_with_the_pipelines_geometry(client, run):
    row = _first_leg(client, "left", film=1)
    view = client.get(f"/api/legs/{row['leg_id']}").json()
    film_path = next(p for p in run.films if p.name == "film_001.dcm")
    truth = run.truth[str(film_path)]["left"]
    # the "model" put the knee KNEE_ERROR_PX off; the reviewer drags it back
    kc = view["model"]["landmarks"]["knee_centre"]
    # results store pixel coordinates at 0.01 px (docs/results-schema.md, Precision)
    assert [kc["x"], kc["y"]] == pytest.approx(
        [truth["knee_centre"][0] + KNEE_ERROR_PX[0], truth["knee_centre"][1] + KNEE_ERROR_PX[1]],
        abs=0.005,
    )
    fixed = list(truth["knee_centre"])
    r = client.post(
        f"/api/legs/{row['leg_id']}/recompute", json={"points": {"knee_centre": fixed}}, headers=H
    )
    assert r.status_code == 200
    got = r.json()["current"]
    # the same numbers as pipeline.api.build_leg on the true landmarks (one implementation)
    cfg = load_geometry_config()
    leg = LegLandmarks(
        side="left",
        points=dict(truth),
        confidence={n: lm["confidence"] for n, lm in view["model"]["landmarks"].items()},
        mirrored=view["model"]["mirrored"],
    )
    leg.confidence.pop("knee_centre")
    spacing = view["film"]["spacing_mm"]
    want = build_leg(leg, spacing, cfg)
    # the other landmarks come from the stored results, rounded to 0.01 px
    assert got["measurements"]["hka_deg"] == pytest.approx(want.measurements.hka_deg, abs=1e-3)
    assert got["measurements"]["hka_deg"] != pytest.approx(
        view["model"]["measurements"]["hka_deg"], abs=0.1
    )
    assert (got["plan"] or {}).get("level") == (want.plan.level if want.plan else None)
    assert got["landmarks"]["knee_centre"]["amended"] is True
    # nothing saved by a recomputation
    assert client.get(f"/api/legs/{row['leg_id']}").json()["state"]["version"] == 0
    # bad points are refused with a reason
    for bad in ({"knee_centre": [1e9, 5]}, {"nose": [1, 2]}, {"knee_centre": ["a", 2]}):
        r = client.post(f"/api/legs/{row['leg_id']}/recompute", json={"points": bad}, headers=H)
        assert r.status_code == 422


def test_accept_reject_amend_are_stored_with_reviewer_and_time(client, run):
    row = _first_leg(client)
    lid = row["leg_id"]
    view = client.get(f"/api/legs/{lid}").json()
    kc = view["model"]["landmarks"]["knee_centre"]
    new = [kc["x"] - 5.0, kc["y"] + 2.0]

    def post(**body):
        return client.post(f"/api/legs/{lid}/change", json={"reviewer": "Dr A", **body}, headers=H)

    r = post(action="points", version=0, points={"knee_centre": new})
    assert r.status_code == 200 and r.json()["state"]["state"] == "in_progress"
    r = post(action="accept", version=1)
    st = r.json()["state"]
    assert st["state"] == "amended" and st["version"] == 2 and st["reviewer"] == "Dr A"
    assert st["updated_at"].endswith("Z")
    assert r.json()["leg"]["current"]["landmarks"]["knee_centre"]["x"] == pytest.approx(new[0])
    # worklist shows the reviewed HKA and state
    row2 = _first_leg(client)
    assert row2["review_state"] == "amended" and row2["hka_deg"] != row2["hka_deg_model"]
    # reject needs a reason from the list
    assert post(action="reject", version=2).status_code == 422
    assert post(action="reject", version=2, reason="my own reason").status_code == 422
    reason = load_review_config().reject_reasons[0]
    r = post(action="reject", version=2, reason=reason)
    assert r.json()["state"]["state"] == "rejected" and r.json()["state"]["reason"] == reason
    assert post(action="reopen", version=3).json()["state"]["state"] == "in_progress"
    assert post(action="points", version=4, points={}).json()["state"]["points"] == {}
    assert post(action="accept", version=5).json()["state"]["state"] == "accepted"
    # a reviewer name is required
    r = client.post(f"/api/legs/{lid}/change", json={"action": "accept", "version": 6}, headers=H)
    assert r.status_code == 422
    events = client.get(f"/api/legs/{lid}/history").json()["events"]
    assert [e["action"] for e in events] == [
        "points",
        "accept",
        "reject",
        "reopen",
        "points",
        "accept",
    ]
    assert all(e["reviewer"] == "Dr A" and e["at"] for e in events)


def test_two_tabs_editing_one_leg_get_a_conflict_not_an_overwrite(client):
    lid = _first_leg(client, "left")["leg_id"]
    tab1 = client.get(f"/api/legs/{lid}").json()["state"]["version"]
    tab2 = client.get(f"/api/legs/{lid}").json()["state"]["version"]
    kc = client.get(f"/api/legs/{lid}").json()["model"]["landmarks"]["knee_centre"]
    r1 = client.post(
        f"/api/legs/{lid}/change",
        json={
            "action": "points",
            "version": tab1,
            "reviewer": "one",
            "points": {"knee_centre": [kc["x"] + 3, kc["y"]]},
        },
        headers=H,
    )
    assert r1.status_code == 200
    r2 = client.post(
        f"/api/legs/{lid}/change",
        json={"action": "reject", "version": tab2, "reviewer": "two", "reason": "other"},
        headers=H,
    )
    assert r2.status_code == 409
    body = r2.json()
    assert body["error"] == "conflict" and "one" in body["message"]
    state = client.get(f"/api/legs/{lid}").json()["state"]
    assert state["state"] == "in_progress" and state["reviewer"] == "one"  # kept


def test_state_changes_need_the_session_token(client):
    lid = _first_leg(client)["leg_id"]
    body = {"action": "accept", "version": 0, "reviewer": "x"}
    assert client.post(f"/api/legs/{lid}/change", json=body).status_code == 403
    bad = {"X-Review-Token": "wrong"}
    assert client.post(f"/api/legs/{lid}/change", json=body, headers=bad).status_code == 403
    assert client.post(f"/api/legs/{lid}/recompute", json={"points": {}}).status_code == 403
    assert client.get(f"/api/legs/{lid}").json()["state"]["version"] == 0
    assert client.post(f"/api/legs/{lid}/change", json=body, headers=H).status_code == 200


def test_only_results_files_and_the_runs_own_films_are_served(client, run, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for you")
    os.symlink(secret, run.results / "overlays" / "link.png")
    for url in (
        "/files/../../etc/passwd",
        "/files/..%2f..%2fetc%2fpasswd",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/images/..%2f..%2f..%2fsecret.txt",
        "/files//etc/passwd",
        "/files/overlays/link.png",
        "/files/review.sqlite",
        "/files/.review-cache/x",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/api/films/..%2f..%2fetc%2fpasswd/preview.png",
        "/api/films/000000000000/preview.png",
        "/api/legs/000000000000-right",
    ):
        r = client.get(url)
        assert r.status_code == 404, url
        assert "not for you" not in r.text and "root:" not in r.text
    assert client.get("/files/results.csv").status_code == 200
    json_name = next((run.results / "images").glob("*.json")).name
    assert client.get(f"/files/images/{json_name}").status_code == 200
    assert safe_results_file(run.results, "images/../../secret.txt") is None
    # a tampered result pointing at a file that is not the run's input is not served
    film = next(iter(client.service.folder.films.values()))
    d = json.loads(film.json_path.read_text())
    d["file"] = str(secret)
    film.json_path.write_text(json.dumps(d))
    svc = _service(run)
    assert svc.folder.films[film.film_id].source is None


def test_host_header_is_checked_when_bound_to_loopback(run):
    from fastapi.testclient import TestClient

    app = create_app(_service(run), token=TOKEN, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/api/worklist").status_code == 200
        assert c.get("/api/worklist", headers={"Host": "evil.example"}).status_code == 400


def test_viewer_pixels_preview_and_windowed_crops(client, run):
    import cv2

    row = _first_leg(client)
    film = client.service.folder.film(row["film_id"])
    from legalign.pipeline.read import read_radiograph

    full = read_radiograph(film.source).pixels
    r = client.get(f"/api/films/{row['film_id']}/preview.png")
    assert r.status_code == 200
    prev = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert prev.shape[0] == min(full.shape[0], load_review_config().viewer.preview_max_rows)
    # a full-resolution crop, windowed at full precision
    x0, y0 = 100, 300
    q = f"x0={x0}&y0={y0}&x1={x0 + 64}&y1={y0 + 48}&w=64&h=48&lo=0.25&hi=0.75"
    r = client.get(f"/api/films/{row['film_id']}/region.png?{q}")
    crop = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
    want = np.clip((full[y0 : y0 + 48, x0 : x0 + 64] - 0.25) * (255 / 0.5), 0, 255)
    assert crop.shape == (48, 64)
    assert np.abs(crop.astype(float) - want.astype(np.uint8)).max() <= 1
    for q in ("x0=5&y0=5&x1=5&y1=9&w=1&h=1", "x0=0&y0=0&x1=10&y1=10&w=5000&h=5000"):
        assert client.get(f"/api/films/{row['film_id']}/region.png?{q}").status_code == 422


def test_first_view_of_a_3000_by_7000_film_is_fast(tmp_path):
    """The 16-bit 3000 x 7000 film's preview, as the viewer's first request gets it: once
    rendered (the server does it in the background at start-up) it is one small file read;
    the cold path (decode + reduce + encode) is timed too."""
    import cv2
    from fastapi.testclient import TestClient

    from legalign.pipeline.commands.review import _prefetch

    rng = np.random.default_rng(0)
    coarse = rng.integers(8000, 50000, (70, 30)).astype(np.float32)
    img = cv2.resize(coarse, (3000, 7000), interpolation=cv2.INTER_CUBIC)
    img += np.tile(rng.normal(0, 300, (100, 100)).astype(np.float32), (70, 30))
    img = np.clip(img, 0, 65535).astype(np.uint16)
    films, results = tmp_path / "films", tmp_path / "results"
    films.mkdir()
    (results / "images").mkdir(parents=True)
    path = films / "big.png"
    cv2.imwrite(str(path), img)
    from legalign.pipeline.outputs.image_json import output_stem

    d = {
        "schema": "legalign.image/1",
        "file": str(path),
        "status": "failed",
        "image": {"width": 3000, "height": 7000, "bits_stored": 16},
        "legs": [],
    }
    (results / "images" / f"{output_stem(path)}.json").write_text(json.dumps(d))
    svc = _service(type("R", (), {"results": results})())
    film_id = next(iter(svc.folder.films))
    client = TestClient(create_app(svc, token=TOKEN))
    t0 = time.perf_counter()
    r = client.get(f"/api/films/{film_id}/preview.png")
    cold = time.perf_counter() - t0
    assert r.status_code == 200
    svc2 = _service(type("R", (), {"results": results})())
    shutil.rmtree(results / ".review-cache")
    _prefetch(svc2)  # what the server does at start-up
    client2 = TestClient(create_app(svc2, token=TOKEN))
    t0 = time.perf_counter()
    r = client2.get(f"/api/films/{film_id}/preview.png")
    warm = time.perf_counter() - t0
    q = "x0=1000&y0=3000&x1=2200&y1=3900&w=1200&h=900"
    t0 = time.perf_counter()
    assert client2.get(f"/api/films/{film_id}/region.png?{q}").status_code == 200
    first_crop = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert client2.get(f"/api/films/{film_id}/region.png?{q}&lo=0.1").status_code == 200
    next_crop = time.perf_counter() - t0
    print(
        f"preview cold {cold:.3f} s, prefetched {warm:.3f} s; crop {first_crop:.3f} / {next_crop:.3f} s"
    )
    assert warm < 1.0 and next_crop < 1.0


@pytest.mark.slow
def test_killed_server_loses_no_saved_change_and_logs_no_patient_data(run, tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    proc = start_server(run.results, port, log)
    try:
        token = page_token(port)
        rows = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/worklist"))["rows"]
        done = []
        for i, row in enumerate(rows[:3]):
            body = {"action": "accept", "version": 0, "reviewer": f"R{i}"}
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/legs/{row['leg_id']}/change",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "X-Review-Token": token},
            )
            assert json.load(urllib.request.urlopen(req))["state"]["state"] == "accepted"
            done.append(row["leg_id"])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    store = ReviewStore.for_results(run.results)
    states = store.all()
    assert [states[lid].state for lid in done] == ["accepted"] * 3
    assert [states[lid].reviewer for lid in done] == ["R0", "R1", "R2"]
    text = log.read_text()
    assert "/api/legs/" in text  # the access log is on ...
    for private in ("SYNTHETIC", "film_000", "film_001", str(run.films[0].parent)):
        assert private not in text  # ... and holds no patient name or file name


def test_non_loopback_host_prints_a_warning(run, monkeypatch, capsys):
    import uvicorn

    from legalign.pipeline.cli import main
    from legalign.pipeline.commands.review import host_warning

    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None
    assert host_warning("::1") is None
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    assert main(["review", str(run.results), "--host", "0.0.0.0", "--no-prefetch"]) == 0
    assert seen["host"] == "0.0.0.0"
    assert "WARNING" in capsys.readouterr().err
    assert main(["review", str(run.results), "--no-prefetch"]) == 0
    assert seen["host"] == "127.0.0.1"
    assert "WARNING" not in capsys.readouterr().err


def _dciodvfy_errors(path: Path) -> list[str] | None:
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dciodvfy (dicom3tools) is required when CI=true")
        return None
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]


def test_export_writes_coco_labels_table_and_sr_with_the_review_state(run, tmp_path):
    import pyarrow.parquet as pq
    import pydicom

    from legalign.pipeline.cli import main
    from legalign.training.datasets import load_dataset

    svc = _service(run)
    by_film: dict[str, dict[str, str]] = {}
    for lid in svc.folder.leg_ids():
        film, leg = svc.folder.leg(lid)
        by_film.setdefault(film.name, {})[leg["side"]] = lid
    f0, f1 = by_film["film_000.dcm"], by_film["film_001.dcm"]
    # film 0: right leg amended (knee back to the truth), left leg accepted as is
    film0, leg0 = svc.folder.leg(f0["right"])
    truth = run.truth[str(film0.source)]["right"]["knee_centre"]
    st = svc.change(
        f0["right"],
        {"action": "points", "version": 0, "reviewer": "Dr A", "points": {"knee_centre": truth}},
    )
    svc.change(f0["right"], {"action": "accept", "version": st.version, "reviewer": "Dr A"})
    svc.change(f0["left"], {"action": "accept", "version": 0, "reviewer": "Dr A"})
    # film 1: one leg rejected, one left unreviewed
    reason = load_review_config().reject_reasons[1]
    svc.change(
        f1["right"], {"action": "reject", "version": 0, "reviewer": "Dr B", "reason": reason}
    )
    svc.store.close()

    out = tmp_path / "export"
    assert main(["review", str(run.results), "--export", str(out)]) == 0
    coco = json.loads((out / "annotations.json").read_text())
    assert [Path(im["file_name"]) for im in coco["images"]] == [film0.source]
    assert Path(coco["images"][0]["file_name"]).is_absolute()
    anns = {a["side"]: a for a in coco["annotations"]}
    assert set(anns) == {"right", "left"}
    names = coco["categories"][0]["keypoints"]
    k = names.index("knee_centre")
    assert anns["right"]["keypoints"][3 * k : 3 * k + 3] == [truth[0], truth[1], 2]
    model_knee = leg0["landmarks"]["knee_centre"]
    assert anns["right"]["keypoints"][3 * k] != pytest.approx(model_knee["x"])
    # the low-confidence landmark nobody moved is not a label
    low = names.index(LOW_CONF[1])
    assert anns["right"]["keypoints"][3 * low + 2] == 0
    excluded = coco["legalign_review"]["excluded"]
    assert (
        len(excluded) == 1 and reason in excluded[0]["why"] and "unreviewed" in excluded[0]["why"]
    )
    # training reads the export as it is (original films, amended points)
    ds = load_dataset(out / "annotations.json")
    film = ds[0]
    leg = next(lg for lg in film.legs if lg.side == "right")
    assert leg.points["knee_centre"] == pytest.approx(tuple(truth))
    # the results table: every leg, reviewed values, review columns
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert len(table) == 4
    row = next(r for r in table if r["file"] == str(film0.source) and r["side"] == "right")
    assert row["review_state"] == "amended" and row["reviewer"] == "Dr A"
    assert row["amended_landmarks"] == "knee_centre"
    assert row["knee_centre_x"] == pytest.approx(truth[0], abs=0.005)
    assert row["hka_deg"] != pytest.approx(leg0["measurements"]["hka_deg"], abs=0.1)
    states = sorted(r["review_state"] for r in table)
    assert states == ["accepted", "amended", "rejected", "unreviewed"]
    assert (out / "results.csv").read_text().splitlines()[0].endswith("amended_landmarks")
    # DICOM SR: the review state, verified when every leg is decided
    sr0 = pydicom.dcmread(out / "dicom" / f"{film0.stem}_review_sr.dcm")
    assert sr0.VerificationFlag == "VERIFIED"
    assert str(sr0.VerifyingObserverSequence[0].VerifyingObserverName) == "Dr A"
    text0 = str(sr0)
    assert "REV-AMENDED" in text0 and "REV-ACCEPTED" in text0 and "Placed by a reviewer" in text0
    film1 = svc.folder.leg(f1["right"])[0]
    sr1 = pydicom.dcmread(out / "dicom" / f"{film1.stem}_review_sr.dcm")
    assert sr1.VerificationFlag == "UNVERIFIED"
    assert "REV-REJECTED" in str(sr1) and reason in str(sr1)
    assert sr0.StudyInstanceUID == pydicom.dcmread(film0.source).StudyInstanceUID
    for sr in (out / "dicom").glob("*.dcm"):
        errors = _dciodvfy_errors(sr)
        assert errors in (None, []), errors
    # the export never writes into the results folder
    assert main(["review", str(run.results), "--export", str(run.results / "x")]) == 2


def test_jpeg2000_films_are_previewed_without_a_full_decode(tmp_path, monkeypatch):
    """A JPEG 2000 DICOM film's preview comes from a reduced resolution level decoded
    alone by pipeline.read.progressive (the full decode is never called)."""
    import cv2

    from legalign.pipeline.read import read_radiograph
    from legalign.pipeline.review.images import PixelCache
    from legalign.training.synth import dicom_archive as dicom
    from legalign.training.synth import generate_film

    path = tmp_path / "j2k.dcm"
    film = generate_film(3, size="small", distractors=False)
    dicom.write_film_dicom(path, film, dicom.DicomOptions(transfer_syntax="j2k"), index=0, seed=3)
    pixels = PixelCache(tmp_path, preview_max_rows=256, capacity=1)

    def no_full_decode(*a, **k):
        raise AssertionError("full decode called for the preview")

    monkeypatch.setattr(pixels, "pixels", no_full_decode)
    data, w, h = pixels.preview_png("f", path)
    assert h == 256
    prev = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).astype(float)
    full = read_radiograph(path).pixels
    want = cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA) * 255
    assert np.abs(prev - want).mean() < 6.0  # same grey semantics, another resampling
