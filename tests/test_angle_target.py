"""The weak HKA target (training/angle_target.py): differentiable decoding, the HKA in
torch, the reference legs' crops, a loss that pulls the HKA the right way, the config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from legalign.models import heatmap_codec as hc
from legalign.models.crops import apply_affine, joint_crop_matrix, warp
from legalign.pipeline.config_schema import ConfigError
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.locate import Locator, crop_angle
from legalign.pipeline.measure import measure_leg
from legalign.training.angle_target import (
    HKA_POINTS,
    AngleTarget,
    AngleTargetConfig,
    hka_from_heatmaps,
    load_target_legs,
)
from legalign.training.train import load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _peaks(points, shape=(32, 32), sigma=1.5, noise=0.0, seed=0):
    maps = hc.encode(np.asarray(points, float), np.ones(len(points), bool), shape, sigma)
    if noise:
        maps = maps + np.random.default_rng(seed).normal(0, noise, maps.shape).astype(np.float32)
    return maps


def test_differentiable_decode_is_decode():
    pts = [(10.3, 7.8), (0.2, 15.5), (20.71, 31.0), (5.5, 5.5), (30.9, 0.4), (16.05, 22.6)]
    maps = _peaks(pts, noise=0.01)
    want, _ = hc.decode(maps)
    t = torch.from_numpy(maps).requires_grad_(True)
    got = hc.decode_differentiable(t)
    np.testing.assert_allclose(got.detach().numpy(), want, atol=2e-4)
    got.sum().backward()
    assert t.grad is not None and float(t.grad.abs().sum()) > 0


@pytest.fixture(scope="module")
def locator():
    torch.set_num_threads(2)
    return Locator.from_checkpoint()


def _leg_case(spec, side: str, seed: int):
    """A leg's H, K, A in film pixels and the hip, knee and ankle crops the locator
    would cut around it (with the shipped model's crop spec)."""
    rng = np.random.default_rng(seed)
    x = 200.0 if side == "right" else 600.0
    pts = {
        "femoral_head": (x + rng.uniform(-20, 20), 100.0),
        "greater_trochanter": (x + (-40 if side == "right" else 40), 110.0),
        "knee_centre": (x + rng.uniform(-25, 25), 520.0),
        "ankle_centre": (x + rng.uniform(-20, 20), 900.0),
    }
    medial = 1 if side == "right" else -1
    flip = medial < 0
    femur = float(np.hypot(*np.subtract(pts["knee_centre"], pts["femoral_head"])))
    angle = crop_angle(pts, flip)
    mats = []
    for name in HKA_POINTS:
        c = next(c for c in spec.crops if name in c.landmarks)
        mats.append(
            joint_crop_matrix(
                pts, c.anchors, c.weights, c.side, femur, spec.fine_size, flip, angle_deg=angle
            )
        )
    return spec, pts, medial, mats


@pytest.mark.parametrize("side,seed", [("right", 0), ("left", 1), ("right", 2)])
def test_hka_from_heatmaps_is_the_pipelines_hka(locator, side, seed):
    spec, pts, medial, mats = _leg_case(locator.spec, side, seed)
    stride = spec.fine_net.out_stride
    shape = (spec.fine_size // stride,) * 2
    k = len(spec.fine_landmarks)
    maps = np.zeros((3, k, *shape), np.float32)
    for i, (name, A) in enumerate(zip(HKA_POINTS, mats, strict=True)):
        at = hc.to_heatmap(apply_affine(A, np.asarray(pts[name]))[None], stride)
        maps[i, spec.fine_landmarks.index(name)] = hc.encode(at, [True], shape, 1.5)[0]
    from legalign.models.crops import invert_affine

    got = hka_from_heatmaps(
        torch.from_numpy(maps),
        [spec.fine_landmarks.index(n) for n in HKA_POINTS],
        torch.from_numpy(np.stack([invert_affine(A) for A in mats])).float(),
        torch.tensor([float(medial)]),
        stride,
    )
    leg = LegLandmarks(side, pts, mirrored=False)
    want = measure_leg(leg, 1.0).hka_deg
    assert abs(want) > 0.5  # a leg with an angle, so a sign error would show
    assert float(got[0]) == pytest.approx(want, abs=0.02)


@pytest.fixture(scope="module")
def angle_csv(tmp_path_factory):
    """Two synthetic bilateral films as PNG with their true HKA as an angle CSV."""
    from legalign.training.synth.film import generate_film

    folder = tmp_path_factory.mktemp("angles")
    rows = []
    for i, seed in enumerate((3, 4)):
        film = generate_film(seed, size="small", legs="both", distractors=False)
        assert cv2.imwrite(str(folder / f"f{i}.png"), film.image)
        for side in ("right", "left"):
            rows.append([f"f{i}.png", side, f"{film.params['alignment'][side]['hka_deg']:.2f}"])
    path = folder / "angles.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "side", "hka_deg"])
        w.writerows(rows)
    return path


def _target_cfg(csv_path, **over) -> AngleTargetConfig:
    base = dict(
        data=str(csv_path),
        part="all",
        weight=1.0,
        legs_per_step=2,
        anchor_jitter=0.0,
        femur_log_sd=0.0,
        rotate_deg=0.0,
        loss_beta=0.5,
    )
    base.update(over)
    return AngleTargetConfig(**base)


@pytest.fixture(scope="module")
def reference_legs(angle_csv, locator):
    return load_target_legs(_target_cfg(angle_csv), locator, log=lambda *a: None)


def test_reference_legs_are_found_and_cropped_as_the_locator_crops(
    angle_csv, locator, reference_legs
):
    loc, legs = locator, reference_legs
    assert len(legs) == 4
    assert sorted(leg.medial_sign for leg in legs) == [-1, -1, 1, 1]
    film = cv2.imread(str(angle_csv.parent / "f0.png"), cv2.IMREAD_UNCHANGED)
    from legalign.pipeline.read import read_radiograph

    pixels = read_radiograph(angle_csv.parent / "f0.png").pixels
    assert film is not None and pixels.shape == film.shape
    leg = next(leg for leg in legs if leg.file == "f0.png")
    spec = loc.spec
    flip = leg.medial_sign < 0
    for c in spec.crops:
        A = joint_crop_matrix(
            leg.points,
            c.anchors,
            c.weights,
            c.side,
            leg.femur_px,
            spec.fine_size,
            flip,
            angle_deg=crop_angle(leg.points, flip),
        )
        region = leg.regions[c.name]
        assert region.pixels.size < pixels.size  # a region, not the film
        np.testing.assert_allclose(
            region.crop(A, spec.fine_size), warp(pixels, A, (spec.fine_size,) * 2), atol=1e-4
        )


def test_the_angle_loss_pulls_the_hka_towards_the_reference(angle_csv, reference_legs):
    """A few steps on the angle loss alone move the measured HKA of a fixed batch
    towards a reference 1.5 deg away (a wrong sign or a broken gradient would not)."""
    torch.manual_seed(0)
    loc = Locator.from_checkpoint()  # its own copy: the networks are changed here
    cfg = _target_cfg(angle_csv, legs_per_step=1)
    target = AngleTarget(reference_legs, loc.spec, cfg, None, seed=0)
    batch = target.batch()
    net = loc.fine_net
    net.eval()  # BatchNorm statistics kept, as the angle stage does
    with torch.no_grad():
        start = hka_from_heatmaps(
            net(torch.from_numpy(batch.crops)),
            target.channels,
            torch.from_numpy(batch.crop_to_film),
            torch.from_numpy(batch.medial_sign),
            loc.spec.fine_net.out_stride,
        )
    batch.hka_deg = (start.numpy() + 1.5).astype(np.float32)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    for _ in range(3):
        loss, _ = target.loss(net(torch.from_numpy(batch.crops)), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, err = target.loss(net(torch.from_numpy(batch.crops)), batch)
    assert err < 1.2, err  # was 1.5


def test_the_recipes_angle_stage_tunes_on_the_readers_angle_part():
    cfg = load_train_config(CONFIGS / "train_default.yaml")
    assert cfg.stages == ["coarse", "fine"]  # not in the shipped model
    assert cfg.angle is not None and cfg.angle.target.part == "angle"
    assert load_train_config(CONFIGS / "train_angle.yaml").stages == ["angle"]
    assert cfg.angle.target.data.endswith("oai-readers/readers.csv")


def test_angle_config_errors_name_the_key(tmp_path):
    data = yaml.safe_load((CONFIGS / "train_smoke.yaml").read_text())
    data["stages"] = ["coarse", "fine", "angle"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"angle: missing required key"):
        load_train_config(bad)
    default = yaml.safe_load((CONFIGS / "train_default.yaml").read_text())
    data["angle"] = default["angle"]
    data["angle"]["target"]["part"] = "most"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"angle\.target\.part"):
        load_train_config(bad)


@pytest.mark.slow
def test_angle_stage_trains_from_the_shipped_model(tmp_path, angle_csv, monkeypatch):
    data = yaml.safe_load((CONFIGS / "train_default.yaml").read_text())
    data.update(
        output_dir=str(tmp_path / "run"),
        init_from="default",
        stages=["angle"],
        train_data=[{"spec": "synthetic:2:small", "weight": 1.0, "options": {"seed": 0}}],
        val_data=[],
        log_every=1,
        checkpoint_every=2,
    )
    data["angle"].update(steps=3, batch_size=2, warmup_steps=1)
    data["angle"]["target"].update(data=str(angle_csv), part="all", legs_per_step=2)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    from legalign.training import engine
    from legalign.training.train import train

    saved = []
    real_save = engine.save_checkpoint

    def record(ck, dest):
        saved.append(dict(ck.get("train_state", {})))
        real_save(ck, dest)

    monkeypatch.setattr(engine, "save_checkpoint", record)
    torch.set_num_threads(2)
    res = train(load_train_config(path), log=lambda *a: None, progress=False)
    # the mid-stage checkpoint carries the reference batches' RNG (resume draws on)
    assert saved[0]["step"] == 2 and "extra_rng" in saved[0] and "rng" in saved[0]
    assert len(res["stages"]["angle"]) == 3
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in lines] == ["angle"] * 3
    assert all(np.isfinite(r["extra"]) and r["extra"] < 5 for r in lines)
    Locator.from_checkpoint(tmp_path / "run" / "final.pt")
