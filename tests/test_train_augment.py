"""Training with the film-level albumentations augmentation (training/augment.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from legalign.pipeline.config_schema import ConfigError
from legalign.training import engine as engine_mod
from legalign.training.augment import build_augmentation
from legalign.training.datasets import SyntheticDataset
from legalign.training.engine import Sampler
from legalign.training.train import load_train_config

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "train_smoke.yaml"
ONLY_FLIP = {
    "flip": {"p": 1.0},
    **{
        k: {"p": 0.0}
        for k in ("affine", "brightness_contrast", "gamma", "noise", "blur", "clahe", "dropout")
    },
}


def _config_with(tmp_path, augmentation):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["augmentation"] = augmentation
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_train_config(path)


def test_augmentation_section_is_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"augmentation\.flip\.bogus"):
        _config_with(tmp_path, {"flip": {"bogus": 1}})
    assert _config_with(tmp_path, ONLY_FLIP).augmentation == ONLY_FLIP
    assert load_train_config(SMOKE).augmentation is None


def test_sampler_cuts_samples_from_the_augmented_film(tmp_path, monkeypatch):
    cfg = _config_with(tmp_path, ONLY_FLIP)
    film = SyntheticDataset(1, seed=3, size="small")[0]
    seen = []

    def capture(f, spec, aug, rng):
        seen.append(f)
        return np.zeros((2, 2), np.float32), np.zeros((1, 2, 2), np.float32), np.ones(1)

    monkeypatch.setattr(engine_mod, "coarse_sample", capture)
    sampler = Sampler(
        "coarse",
        [([film], 1.0)],
        cfg.model,
        cfg.coarse,
        seed=0,
        film_augment=build_augmentation(cfg.augmentation),
    )
    sampler.batch(3)
    assert len(seen) == 3
    width = film.image.shape[1]
    for f in seen:  # a horizontal flip: mirrored pixels, sides swapped, points reflected
        np.testing.assert_allclose(f.image, film.image[:, ::-1], atol=1e-6)
        assert sorted(leg.side for leg in f.legs) == sorted(leg.side for leg in film.legs)
        by_side = {leg.side: leg for leg in f.legs}
        for leg in film.legs:
            other = by_side["left" if leg.side == "right" else "right"]
            x, y = leg.points["knee_centre"]
            ox, oy = other.points["knee_centre"]
            assert ox == pytest.approx(width - 1 - x, abs=0.05) and oy == pytest.approx(y, abs=0.05)
