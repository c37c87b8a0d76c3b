"""The framing test set generator and its evaluation, on small made-up films (no ../shared).

Each fake source film is dark with one bright dot at every labelled landmark, so a
variant's transform can be checked by where the dots land."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from legalign.models.crops import apply_affine
from legalign.pipeline.config_schema import ConfigError
from legalign.training import framing
from legalign.training.framing_eval import _match, format_framing_report, summarise_rows

H, W = 256, 40
LABELS = {"femoral_head": (20.0, 60.0), "knee_centre": (22.0, 140.0), "ankle_centre": (21.0, 225.0)}


def _film(dots: dict[str, tuple[float, float]]) -> np.ndarray:
    img = np.zeros((H, W), np.uint8)
    img[20:250, 4:36] = 60  # the exposed region, black borders around it
    for x, y in dots.values():
        cv2.circle(img, (int(round(x)), int(round(y))), 2, 255, -1)
    return img


@pytest.fixture()
def sources(tmp_path: Path) -> dict[str, Path]:
    sample = tmp_path / "oai-sample"
    (sample / "images").mkdir(parents=True)
    (sample / "annotations").mkdir()
    names = list(LABELS)
    images, anns = [], []
    for i in range(3):
        shifted = {n: (x + i, y + 2 * i) for n, (x, y) in LABELS.items()}
        cv2.imwrite(
            str(sample / "images" / f"v{i}.jpg"), _film(shifted), [cv2.IMWRITE_JPEG_QUALITY, 100]
        )
        images.append({"id": i + 1, "file_name": f"v{i}.jpg", "width": W, "height": H})
        kp = [c for n in names for c in (*shifted[n], 2)]
        anns.append(
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "side": "right", "keypoints": kp}
        )
    coco = {
        "categories": [{"id": 1, "name": "leg", "keypoints": names}],
        "images": images,
        "annotations": anns,
    }
    (sample / "annotations" / "val.json").write_text(json.dumps(coco))
    readers = tmp_path / "oai-readers"
    (readers / "images").mkdir(parents=True)
    with (readers / "readers.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "side", "hka_deg"])
        for i in range(2):
            cv2.imwrite(str(readers / "images" / f"r{i}.jpg"), _film(LABELS))
            w.writerow([f"r{i}.jpg", "right", -1.5 + i])
    return {"oai-sample": sample, "oai-readers": readers}


def _small_cfg(tmp_path: Path) -> framing.FramingConfig:
    over = tmp_path / "over.yaml"
    over.write_text("native: {spacing_mm: 0.5, sources: 2}\n")
    return framing.load_framing_config(over)


def _brightest(img: np.ndarray, near: np.ndarray, radius: int = 12) -> np.ndarray:
    x, y = int(round(near[0])), int(round(near[1]))
    y0, x0 = max(0, y - radius), max(0, x - radius)
    win = img[y0 : y + radius + 1, x0 : x + radius + 1].astype(np.float64)
    m = win >= 0.8 * win.max()
    ys, xs = np.nonzero(m)
    return np.array([xs.mean() + x0, ys.mean() + y0])


def test_build_writes_every_kind_with_exact_transforms(sources, tmp_path):
    srcs = {
        "oai-sample": framing.oai_sample_sources(sources["oai-sample"]),
        "oai-readers": framing.oai_readers_sources(sources["oai-readers"]),
    }
    out = tmp_path / "set"
    manifest = framing.build_framing_set(srcs, out, _small_cfg(tmp_path))
    kinds = {v["kind"] for v in manifest["variants"]}
    assert kinds == set(framing.KINDS)
    n = 5
    counts = {k: sum(v["kind"] == k for v in manifest["variants"]) for k in framing.KINDS}
    assert counts == {
        "letterbox": 6 * n,
        "rotated": n,
        "native": 2,
        "partial": 2 * 3,
        "bilateral": n,
    }
    assert json.loads((out / "framing.json").read_text())["variants"] == manifest["variants"]
    from legalign.pipeline.read import read_radiograph

    checked = 0
    for v in manifest["variants"]:
        path = out / v["file"]
        assert path.is_file(), v["file"]
        if v["kind"] == "native":
            rad = read_radiograph(str(path))
            assert rad.spacing_mm == pytest.approx(0.5)
            img = rad.pixels
        else:
            img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        for leg in v["legs"]:
            src = manifest["sources"][leg["source"]]
            pts = src["landmarks"] or LABELS  # the readers fakes carry the dots at LABELS
            A = np.asarray(leg["matrix"])
            for name, xy in pts.items():
                if name in leg["outside"]:
                    continue
                want = apply_affine(A, np.asarray(xy))
                got = _brightest(img, want, radius=max(4, int(4 * abs(A[0, 0]))))
                assert np.hypot(*(got - want)) < 1.0 + 0.6 * abs(A[0, 0]), (v["file"], name)
                checked += 1
    assert checked > 100


def test_letterbox_fills_and_sides(sources, tmp_path):
    srcs = {"oai-sample": framing.oai_sample_sources(sources["oai-sample"])}
    manifest = framing.build_framing_set(srcs, tmp_path / "set", _small_cfg(tmp_path))
    for v in manifest["variants"]:
        if v["kind"] == "letterbox":
            img = cv2.imread(str(tmp_path / "set" / v["file"]), cv2.IMREAD_GRAYSCALE) / 255.0
            x0, y0, x1, y1 = framing.content_box(img, 0.06)
            assert (y1 - y0) / img.shape[0] == pytest.approx(v["params"]["fill"], abs=0.02)
        if v["kind"] == "bilateral":
            sides = [leg["side"] for leg in v["legs"]]
            assert sides == ["right", "left"]
            a, b = (np.asarray(leg["matrix"]) for leg in v["legs"])
            assert np.linalg.det(a[:, :2]) > 0 > np.linalg.det(b[:, :2])  # the left leg is mirrored
            assert v["legs"][0]["source"] != v["legs"][1]["source"]
        if v["kind"] == "partial":
            cut = v["params"]["cut"]
            want = "femoral_head" if cut == "hip" else "ankle_centre"
            assert want in v["legs"][0]["outside"]
            assert "knee_centre" not in v["legs"][0]["outside"]


def test_readers_hka_travels_with_each_leg(sources, tmp_path):
    srcs = {"oai-readers": framing.oai_readers_sources(sources["oai-readers"])}
    manifest = framing.build_framing_set(srcs, tmp_path / "set", _small_cfg(tmp_path))
    for v in manifest["variants"]:
        for leg in v["legs"]:
            assert leg["readers_hka"] == manifest["sources"][leg["source"]]["readers_hka"]
    assert not any(v["kind"] == "partial" for v in manifest["variants"])  # no labels to cut by


def test_build_is_deterministic(sources, tmp_path):
    srcs = {"oai-sample": framing.oai_sample_sources(sources["oai-sample"])}
    a = framing.build_framing_set(srcs, tmp_path / "a", _small_cfg(tmp_path))
    b = framing.build_framing_set(srcs, tmp_path / "b", _small_cfg(tmp_path))
    assert a["variants"] == b["variants"]
    for v in a["variants"]:
        assert (tmp_path / "a" / v["file"]).read_bytes() == (
            tmp_path / "b" / v["file"]
        ).read_bytes() or v["kind"] == "native"  # DICOM files carry a creation time


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("letterbox: {fills: [0.05]}\n")
    with pytest.raises(ConfigError, match="letterbox.fills"):
        framing.load_framing_config(bad)
    bad.write_text("native: {transfer_syntaxes: [zip]}\n")
    with pytest.raises(ConfigError, match="native.transfer_syntaxes"):
        framing.load_framing_config(bad)
    bad.write_text("rotation: {nope: 1}\n")
    with pytest.raises(ConfigError, match="rotation.nope"):
        framing.load_framing_config(bad)


def test_match_is_one_to_one_and_nearest():
    expected = [{"knee": (10.0, 100.0), "femur": 50.0}, {"knee": (60.0, 100.0), "femur": 50.0}]
    predicted = [
        {"points": {"knee_centre": (61.0, 101.0)}},
        {"points": {"knee_centre": (12.0, 99.0)}},
        {"points": {"knee_centre": (14.0, 104.0)}},
    ]
    m = _match(expected, predicted)
    assert [j for j, _ in m] == [1, 0]
    assert m[0][1] == pytest.approx(np.hypot(2, 1) / 50)


def _row(
    kind,
    found=True,
    side="right",
    hka=1.0,
    orig=1.2,
    readers=None,
    outside=(),
    reason=None,
    review=False,
):
    return {
        "file": "f.png",
        "kind": kind,
        "source": "s",
        "expected_side": "right",
        "found": found,
        "side": side if found else None,
        "hka": hka,
        "hka_reason": reason,
        "hka_original": orig,
        "readers_hka": readers,
        "outside": list(outside),
        "error": None,
        "n_predicted": 1,
        "review": review if found else None,
    }


def test_summary_counts_misses_sides_and_cut_legs():
    rows = [
        {**_row("letterbox", hka=1.0, orig=1.2, readers=0.5), "readers_part": "heldout"},
        _row("letterbox", hka=2.0, orig=1.0, readers=1.5, review=True),
        _row("letterbox", hka=1.65, orig=1.0),
        _row("letterbox", found=False),
        _row("bilateral", side="left"),
        _row("partial", hka=None, outside=["femoral_head"], reason="femoral_head outside the film"),
        _row("partial", hka=3.0, outside=["ankle_centre"]),
    ]
    refs = {"s": {"hka": 1.0, "readers": 0.4}}
    rep = summarise_rows(rows, refs)
    lb = rep["by_kind"]["letterbox"]
    assert (lb["legs"], lb["found_correct_side"], lb["missed"]) == (4, 3, 1)
    # legs more than 0.6 deg from their original's HKA, and how many are flagged
    assert (lb["hka_far"], lb["hka_far_flagged_for_review"]) == (2, 1)
    assert lb["hka_delta_deg"]["max"] == pytest.approx(1.0)
    assert lb["readers"]["mad"] == pytest.approx(0.5)
    # the readers' held-out films alone (the default recipe trains on the others)
    assert (lb["readers_heldout"]["n"], lb["readers_heldout"]["mad"]) == (1, pytest.approx(0.5))
    assert rep["by_kind"]["bilateral"]["wrong_side"] == 1
    part = rep["by_kind"]["partial"]
    assert (part["cut_legs"], part["cut_legs_outside_the_film"], part["cut_legs_with_hka"]) == (
        2,
        1,
        1,
    )
    assert part["hka_delta_deg"]["n"] == 0  # a cut leg's HKA is never compared
    assert len(rep["misses"]) == 2
    rep["seconds_per_variant"] = 0.1
    table = format_framing_report(rep)
    assert "| letterbox | 4 | 3 | 1 |" in table
    assert "| 2 (1) |" in table


def test_cli_build_and_evaluate_with_a_tiny_model(sources, tmp_path, capsys):
    from tiny_checkpoint import tiny_checkpoint

    from legalign.pipeline.cli import main

    over = tmp_path / "over.yaml"
    over.write_text(
        "native: {spacing_mm: 0.5, sources: 1}\nletterbox: {fills: [0.7], sources: 1}\n"
        "rotation: {sources: 1}\nbilateral: {sources: 1}\npartial: {sources: 1}\n"
    )
    out = tmp_path / "set"
    assert (
        main(
            [
                "framing",
                "build",
                "--out",
                str(out),
                "--oai-sample",
                str(sources["oai-sample"]),
                "--config",
                str(over),
            ]
        )
        == 0
    )
    assert (
        main(["framing", "build", "--out", str(out), "--oai-sample", str(sources["oai-sample"])])
        == 2
    )
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    rc = main(
        [
            "framing",
            "evaluate",
            str(out),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "rep"),
            "--limit",
            "3",
        ]
    )
    assert rc == 0
    rep = json.loads((tmp_path / "rep" / "framing_report.json").read_text())
    n_legs = sum(len(v["legs"]) for v in framing.load_manifest(out)["variants"][:3])
    assert rep["overall"]["legs"] == n_legs == len(rep["rows"])
    assert "| all |" in capsys.readouterr().out
