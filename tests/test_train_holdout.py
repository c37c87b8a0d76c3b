"""Held-out parts of a training dataset (``holdout:`` on a ``train_data``/``val_data`` entry)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from legalign.pipeline.config_schema import ConfigError
from legalign.training.train import load_films, load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _entries(tmp_path, holdouts):
    raw = yaml.safe_load((CONFIGS / "train_smoke.yaml").read_text())
    raw["train_data"] = [
        {"spec": "synthetic:6:small", "weight": 1.0, "options": {"seed": 40}, "holdout": h}
        for h in holdouts
    ]
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_train_config(path).train_data


def test_parts_are_disjoint_and_cover_the_dataset(tmp_path):
    split = {"fraction": 0.34, "seed": 5}
    entries = _entries(tmp_path, [None, {**split, "part": "train"}, {**split, "part": "heldout"}])
    logged = []
    (full, _), (train, _), (held, _) = load_films(entries, log=logged.append)
    names = lambda films: [f.source for f in films]  # noqa: E731
    assert len(held) == 2 and len(train) == 4
    assert not set(names(train)) & set(names(held))
    assert sorted(names(train) + names(held)) == sorted(names(full))
    assert entries[2].label == "synthetic:6:small#heldout"
    assert "heldout" in logged[2] and "seed 5" in logged[2]
    # the same fraction and seed give the same films again
    ((again, _),) = load_films(entries[2:], log=lambda *_: None)
    assert names(again) == names(held)


@pytest.mark.parametrize(
    "holdout, key",
    [
        ({"fraction": 1.5, "seed": 0, "part": "train"}, r"train_data\[0\]\.holdout.*fraction"),
        ({"fraction": 0.2, "seed": 0, "part": "test"}, r"train_data\[0\]\.holdout\.part"),
        ({"fraction": 0.2, "part": "train"}, r"train_data\[0\]\.holdout\.seed"),
    ],
)
def test_bad_holdout_names_the_key(tmp_path, holdout, key):
    with pytest.raises(ConfigError, match=key):
        _entries(tmp_path, [holdout])


def test_crossval_config_matches_the_default_recipe():
    """configs/train_crossval.yaml is the default recipe on part of the train split."""
    default = load_train_config(CONFIGS / "train_default.yaml")
    cv = load_train_config(CONFIGS / "train_crossval.yaml")
    for section in ("model", "coarse", "fine", "augmentation", "seed"):
        assert getattr(cv, section) == getattr(default, section), section
    assert cv.export.path is None
    real = [e for e in cv.train_data if e.holdout is not None]
    held = [e for e in cv.val_data if e.holdout is not None]
    assert len(real) == 1 and len(held) == 1
    assert real[0].spec == held[0].spec
    assert (real[0].holdout.fraction, real[0].holdout.seed) == (
        held[0].holdout.fraction,
        held[0].holdout.seed,
    )
    assert (real[0].holdout.part, held[0].holdout.part) == ("train", "heldout")


def test_extends_merges_over_the_base_and_names_bad_files(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text((CONFIGS / "train_smoke.yaml").read_text())
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nseed: 99\ncoarse: {steps: 7}\n")
    cfg = load_train_config(child)
    smoke = load_train_config(CONFIGS / "train_smoke.yaml")
    assert cfg.seed == 99 and cfg.coarse.steps == 7
    assert cfg.coarse.lr == smoke.coarse.lr and cfg.model == smoke.model
    child.write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: extends: .*nowhere\.yaml not found"):
        load_train_config(child)
    base.write_text("extends: child.yaml\n")
    child.write_text("extends: base.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_train_config(child)
