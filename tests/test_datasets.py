"""Dataset readers: COCO, LabelMe, CSV, synthetic; validation errors name the file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from legalign.pipeline.errors import InputError
from legalign.pipeline.landmarks import LANDMARK_NAMES, LegLandmarks
from legalign.training.datasets import (
    AnnotatedFilm,
    CocoKeypointDataset,
    ConcatFilms,
    CsvDataset,
    LabelMeDataset,
    SyntheticDataset,
    load_dataset,
    split_indices,
    train_val_split,
)

OAI = Path(__file__).resolve().parents[2] / "shared" / "data" / "oai-sample"
W, H = 40, 120


def _write_png(path: Path, value: int = 200, bits16: bool = False) -> np.ndarray:
    rng = np.random.default_rng(0)
    if bits16:
        img = rng.integers(0, 65536, size=(H, W), dtype=np.uint16)
    else:
        img = rng.integers(0, 256, size=(H, W), dtype=np.uint8)
        img[0, 0] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return img


def _points(dx: float = 0.0) -> dict[str, tuple[float, float]]:
    return {name: (5.0 + i * 2.5 + dx, 3.0 + i * 9.25) for i, name in enumerate(LANDMARK_NAMES)}


def _coco(tmp_path: Path, *, legs=None, extra_image=None, names=None) -> Path:
    """A COCO file in tmp/annotations/x.json with images in tmp/images (oai layout)."""
    names = list(names or LANDMARK_NAMES)
    _write_png(tmp_path / "images" / "a.png")
    _write_png(tmp_path / "images" / "b.png")
    images = [
        {"id": 1, "file_name": "a.png", "width": W, "height": H},
        {
            "id": 2,
            "file_name": "b.png",
            "width": W,
            "height": H,
            "pixel_spacing_mm": 0.5,
            "mirrored": True,
        },
    ]
    if extra_image:
        images.append(extra_image)
    if legs is None:
        pts = _points()
        kp = []
        for n in names:
            x, y = pts[n]
            kp += [x, y, 0 if n == "greater_trochanter" else 2]
        legs = [
            {"id": 1, "image_id": 1, "category_id": 1, "side": "right", "keypoints": kp},
            {"id": 2, "image_id": 2, "category_id": 1, "side": "left", "keypoints": kp},
            {"id": 3, "image_id": 2, "category_id": 1, "side": "right", "keypoints": kp},
        ]
    doc = {
        "images": images,
        "annotations": legs,
        "categories": [{"id": 1, "name": "leg", "keypoints": names}],
    }
    path = tmp_path / "annotations" / "x.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_coco_reads_films_lazily_with_missing_landmarks_absent(tmp_path):
    ann = _coco(tmp_path)
    ds = load_dataset(ann)
    assert isinstance(ds, CocoKeypointDataset) and len(ds) == 2
    assert ds.image_root == tmp_path / "images"
    f0, f1 = ds[0], ds[1]
    assert isinstance(f0, AnnotatedFilm)
    assert f0.image.dtype == np.float32 and f0.image.shape == (H, W)
    assert f0.image[0, 0] == pytest.approx(200 / 255)
    assert 0.0 <= f0.image.min() and f0.image.max() <= 1.0
    assert f0.source.endswith("a.png") and f0.spacing_mm is None
    (leg,) = f0.legs
    assert leg.side == "right" and not leg.mirrored
    assert "greater_trochanter" not in leg.points  # v=0 -> absent, not dropped film
    assert len(leg.points) == 11
    assert leg.points["femoral_head"] == _points()["femoral_head"]
    assert f1.spacing_mm == 0.5 and f1.mirrored is True
    assert [lg.side for lg in f1.legs] == ["left", "right"]
    assert all(lg.mirrored for lg in f1.legs)
    assert ds[-1].source == f1.source
    r = f1.to_radiograph()
    assert r.spacing_mm == 0.5 and r.pixels.shape == (H, W) and r.mirrored is True


def test_coco_subset_of_names_in_any_order(tmp_path):
    names = ["knee_centre", "femoral_head", "ankle_centre"]
    ann = _coco(tmp_path, names=names)
    leg = CocoKeypointDataset(ann)[0].legs[0]
    assert set(leg.points) == set(names)
    assert leg.points["knee_centre"] == _points()["knee_centre"]


def test_coco_cache_returns_same_array(tmp_path):
    ds = CocoKeypointDataset(_coco(tmp_path), cache=True)
    assert ds[0].image is ds[0].image
    ds2 = CocoKeypointDataset(_coco(tmp_path))
    assert ds2[0].image is not ds2[0].image


def _kp(name_values):
    out = []
    for x, y, v in name_values:
        out += [x, y, v]
    return out


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["categories"][0]["keypoints"].__setitem__(0, "hip"),
            "unknown landmark name 'hip'",
        ),
        (lambda d: d["annotations"][0]["keypoints"].__setitem__(0, W + 3.0), "outside"),
        (lambda d: d["annotations"][0]["keypoints"].__setitem__(1, -0.6), "outside"),
        (lambda d: d["annotations"][0].__setitem__("side", "middle"), "bad side 'middle'"),
        (lambda d: d["annotations"][0].pop("side"), "bad side None"),
        (lambda d: d["images"][0].__setitem__("file_name", "nope.png"), "image file not found"),
        (lambda d: d["annotations"][0]["keypoints"].pop(), "must hold 36 numbers"),
        (lambda d: d["annotations"][0].__setitem__("image_id", 99), "unknown image 99"),
        (lambda d: d["annotations"][2].__setitem__("side", "left"), "two legs"),
        (lambda d: d["images"][1].__setitem__("pixel_spacing_mm", -1), "spacing"),
    ],
)
def test_coco_broken_annotations_name_the_file(tmp_path, mutate, message):
    ann = _coco(tmp_path)
    doc = json.loads(ann.read_text())
    mutate(doc)
    ann.write_text(json.dumps(doc))
    with pytest.raises(InputError) as exc:
        CocoKeypointDataset(ann)
    text = str(exc.value)
    assert message in text
    assert "\n" not in text
    assert ("x.json" in text) or ("nope.png" in text)


def test_coco_malformed_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(InputError, match=r"bad\.json: malformed JSON"):
        load_dataset(bad)
    with pytest.raises(InputError, match="missing.json: file not found"):
        load_dataset(tmp_path / "missing.json")


def test_coco_point_on_the_border_is_inside(tmp_path):
    ann = _coco(tmp_path)
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["keypoints"][0:2] = [W - 0.5, -0.5]
    ann.write_text(json.dumps(doc))
    leg = CocoKeypointDataset(ann)[0].legs[0]
    assert leg.points["femoral_head"] == (W - 0.5, -0.5)


def test_coco_image_size_mismatch_is_reported_on_load(tmp_path):
    ann = _coco(tmp_path)
    doc = json.loads(ann.read_text())
    doc["images"][0]["width"] = W + 10
    ann.write_text(json.dumps(doc))
    ds = CocoKeypointDataset(ann)
    with pytest.raises(InputError, match="a.png: image is 40 x 120"):
        ds[0]


# ---------------------------------------------------------------- LabelMe


def _labelme(folder: Path, shapes, name="f1", **top) -> Path:
    _write_png(folder / f"{name}.png", bits16=True)
    doc = {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": f"{name}.png",
        "imageData": None,
        "imageHeight": H,
        "imageWidth": W,
    }
    doc.update(top)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def _shape(label, x, y, flags=None, shape_type="point"):
    return {
        "label": label,
        "points": [[x, y]],
        "group_id": None,
        "shape_type": shape_type,
        "flags": flags or {},
    }


def test_labelme_side_conventions_and_corner_origin(tmp_path):
    shapes = [
        _shape("right/femoral_head", 10.5, 20.5),
        _shape("knee_centre", 11.0, 60.0, flags={"left": True}),
        _shape("ankle_centre", 12.0, 100.0),  # side from file-level flags
        {"label": "femur", "points": [[0, 0], [3, 3], [0, 3]], "shape_type": "polygon"},
    ]
    _labelme(tmp_path, shapes, flags={"right": True}, pixel_spacing_mm=0.2)
    _labelme(tmp_path, [_shape("left/femoral_head", 30.5, 20.5)], name="f2")
    ds = load_dataset(tmp_path)
    assert isinstance(ds, LabelMeDataset) and len(ds) == 2
    f = ds[0]
    assert f.spacing_mm == 0.2
    assert f.image.dtype == np.float32 and f.image.max() <= 1.0
    right, left = f.leg("right"), f.leg("left")
    assert right.points == {"femoral_head": (10.0, 20.0), "ankle_centre": (11.5, 99.5)}
    assert left.points == {"knee_centre": (10.5, 59.5)}
    centre = LabelMeDataset(tmp_path, pixel_origin="centre")[0]
    assert centre.leg("right").points["femoral_head"] == (10.5, 20.5)


@pytest.mark.parametrize(
    "shapes, top, message",
    [
        ([_shape("right/hip", 1, 1)], {}, "unknown landmark name 'hip'"),
        ([_shape("femoral_head", 1, 1)], {}, "has no side"),
        ([_shape("middle/femoral_head", 1, 1)], {}, "bad side 'middle'"),
        ([_shape("right/femoral_head", W + 1, 1)], {}, "outside"),
        ([_shape("right/femoral_head", 1, 1)] * 2, {}, "given twice"),
        ([_shape("right/femoral_head", 1, 1)], {"imagePath": "gone.png"}, "image file not found"),
    ],
)
def test_labelme_errors_name_the_file(tmp_path, shapes, top, message):
    _labelme(tmp_path, shapes, **top)
    with pytest.raises(InputError) as exc:
        LabelMeDataset(tmp_path)
    assert message in str(exc.value)
    assert "f1.json" in str(exc.value) or "gone.png" in str(exc.value)


def test_labelme_malformed_json(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2")
    with pytest.raises(InputError, match=r"x\.json: malformed JSON"):
        LabelMeDataset(tmp_path)


# ---------------------------------------------------------------- CSV


def _csv(tmp_path: Path, rows: list[str], header="image,side,landmark,x,y,spacing_mm") -> Path:
    _write_png(tmp_path / "img" / "a.png")
    _write_png(tmp_path / "img" / "b.png")
    path = tmp_path / "marks.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_long_format(tmp_path):
    path = _csv(
        tmp_path,
        [
            "img/b.png,left,femoral_head,30,10,0.15",
            "img/a.png,right,femoral_head,3.5,7.25,",
            "img/a.png,right,knee_centre,4,60,",
            "img/a.png,right,ankle_centre,,,",  # not labelled -> missing
            "img/b.png,left,knee_centre,31,61,0.15",
            "",
        ],
    )
    ds = load_dataset(path)
    assert isinstance(ds, CsvDataset) and len(ds) == 2
    b, a = ds[0], ds[1]
    assert b.source.endswith("b.png") and b.spacing_mm == 0.15
    assert b.legs[0].side == "left" and set(b.legs[0].points) == {"femoral_head", "knee_centre"}
    assert a.spacing_mm is None
    assert a.legs[0].points == {"femoral_head": (3.5, 7.25), "knee_centre": (4.0, 60.0)}


@pytest.mark.parametrize(
    "rows, header, message",
    [
        (["img/a.png,right,hip,1,1,"], None, "unknown landmark name 'hip'"),
        (["img/a.png,up,femoral_head,1,1,"], None, "bad side 'up'"),
        (["img/a.png,right,femoral_head,1,500,"], None, "outside"),
        (["img/zz.png,right,femoral_head,1,1,"], None, "image file not found"),
        (["img/a.png,right,femoral_head,a,1,"], None, "bad coordinates"),
        (
            ["img/a.png,right,femoral_head,1,1,0.1", "img/a.png,right,knee_centre,1,2,0.2"],
            None,
            "differs",
        ),
        (["img/a.png,right,femoral_head,1,1"], "image,side,name,x,y", "missing column(s) landmark"),
    ],
)
def test_csv_errors_name_the_file(tmp_path, rows, header, message):
    path = _csv(tmp_path, rows, **({"header": header} if header else {}))
    with pytest.raises(InputError) as exc:
        CsvDataset(path)
    assert message in str(exc.value)
    assert "marks.csv" in str(exc.value) or "zz.png" in str(exc.value)


# ---------------------------------------------------------------- synthetic


@dataclass
class _FakeFilm:
    image: np.ndarray
    bits_stored: int
    spacing_mm: float
    legs: list
    mirrored: bool = False
    params: dict = field(default_factory=dict)


def test_synthetic_dataset_converts_and_is_reproducible():
    calls = []

    def fake(seed, size, legs, spacing_mm):
        calls.append((seed, size, legs, spacing_mm))
        img = np.full((8, 4), 4095, dtype=np.uint16)
        img[0, 0] = 0
        leg = LegLandmarks(side="right", points={"femoral_head": (1.0, 2.0)})
        return _FakeFilm(img, 12, spacing_mm if spacing_mm else 0.14, [leg], mirrored=True)

    ds = SyntheticDataset(3, seed=10, spacing_range=(0.1, 0.2), legs="right", generator=fake)
    f = ds[2]
    assert len(ds) == 3 and f.source == "synthetic:12"
    assert f.image.dtype == np.float32 and f.image.max() == 1.0 and f.image[0, 0] == 0.0
    assert f.mirrored is True and f.legs[0].points["femoral_head"] == (1.0, 2.0)
    seed, size, legs, spacing = calls[-1]
    assert (seed, size, legs) == (12, "small", "right") and 0.1 <= spacing <= 0.2
    assert f.spacing_mm == spacing
    assert ds[2].spacing_mm == spacing  # same seed -> same spacing
    assert ds[0].spacing_mm != ds[1].spacing_mm
    with pytest.raises(IndexError):
        ds[3]


def test_load_dataset_synthetic_spec_and_bad_specs(tmp_path):
    ds = load_dataset("synthetic:5:native", seed=3)
    assert isinstance(ds, SyntheticDataset) and len(ds) == 5
    assert ds.size == "native" and ds.seed == 3
    assert load_dataset("synthetic:2").size == "small"
    with pytest.raises(InputError, match="synthetic:x"):
        load_dataset("synthetic:x")
    with pytest.raises(InputError, match="huge"):
        load_dataset("synthetic:2:huge")
    with pytest.raises(InputError, match=r"foo\.txt: unknown dataset kind"):
        load_dataset(tmp_path / "foo.txt")


def test_synthetic_dataset_with_real_generator():
    synth = pytest.importorskip("legalign.training.synth")
    if not hasattr(synth, "generate_film"):
        pytest.skip("legalign.training.synth.generate_film not available yet")
    ds = SyntheticDataset(1, seed=0, size="small")
    f = ds[0]
    assert f.image.dtype == np.float32 and f.image.ndim == 2
    assert 0.0 <= f.image.min() and f.image.max() <= 1.0
    assert f.legs and all(isinstance(lg, LegLandmarks) for lg in f.legs)
    h, w = f.image.shape
    for leg in f.legs:
        for x, y in leg.points.values():
            assert -0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5


# ---------------------------------------------------------------- helpers


def test_split_and_concat(tmp_path):
    train, val = split_indices(10, 0.3, seed=1)
    assert len(val) == 3 and sorted(train + val) == list(range(10))
    assert split_indices(10, 0.3, seed=1) == (train, val)
    ds = CocoKeypointDataset(_coco(tmp_path))
    tr, va = train_val_split(ds, 0.5, seed=0)
    assert len(tr) == 1 and len(va) == 1 and tr[0].source != va[0].source
    both = ConcatFilms([ds, ds])
    assert len(both) == 4 and both[3].source == ds[1].source and both[0].source == ds[0].source


@pytest.mark.skipif(not OAI.is_dir(), reason="../shared/data/oai-sample not present")
def test_oai_sample_reads():
    ds = load_dataset(OAI / "annotations" / "val.json")
    assert len(ds) == 25
    f = ds[0]
    assert f.image.shape == (1024, 128) and f.legs[0].side == "right"
    assert len(f.legs[0].points) == 12


def test_coco_written_like_legalign_synth_reads_back_exactly(tmp_path):
    synth = pytest.importorskip("legalign.training.synth")
    coco_mod = pytest.importorskip("legalign.training.synth.coco")
    if not hasattr(synth, "generate_film"):
        pytest.skip("legalign.training.synth.generate_film not available yet")
    film = synth.generate_film(3, size="small", legs="both")
    assert cv2.imwrite(str(tmp_path / "f.png"), film.image)
    coco = coco_mod.new_coco("test")
    coco_mod.add_film(coco, film, "f.png")
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(coco))
    got = CocoKeypointDataset(ann)[0]
    expected = film.image.astype(np.float32) / (2**film.bits_stored - 1)
    assert got.image.shape == film.image.shape
    assert np.allclose(got.image, expected, atol=1e-6)
    assert got.spacing_mm == pytest.approx(film.spacing_mm)
    assert got.mirrored == film.mirrored
    assert [leg.side for leg in got.legs] == [leg.side for leg in film.legs]
    for a, b in zip(got.legs, film.legs, strict=True):
        assert a.mirrored == b.mirrored
        for name, (x, y) in b.points.items():
            assert a.points[name] == pytest.approx((x, y), abs=1e-4)
    # the same film from the synthetic dataset is the same film
    same = SyntheticDataset(1, seed=3)[0]
    assert np.allclose(same.image, expected, atol=1e-6)


def test_dicom_image_in_a_coco_file(tmp_path):
    synth = pytest.importorskip("legalign.training.synth")
    dicom = pytest.importorskip("legalign.training.synth.dicom_archive")
    coco_mod = pytest.importorskip("legalign.training.synth.coco")
    film = synth.generate_film(4, size="small", legs="right")
    opts = dicom.DicomOptions(photometric="MONOCHROME1", bits_stored=12)
    dicom.write_film_dicom(tmp_path / "f.dcm", film, opts, index=0, seed=0)
    coco = coco_mod.new_coco("test")
    coco_mod.add_film(coco, film, "f.dcm")
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(coco))
    got = CocoKeypointDataset(ann)[0]
    assert got.image.shape == film.image.shape and got.image.dtype == np.float32
    # bone bright after the MONOCHROME1 inversion: correlates positively with the source
    r = np.corrcoef(got.image.ravel(), film.image.astype(np.float64).ravel())[0, 1]
    assert r > 0.9
