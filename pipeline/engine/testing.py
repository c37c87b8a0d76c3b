"""Helpers for tests and benchmarks of the engine (no network training needed).

``tiny_checkpoint`` writes a small randomly initialised locator checkpoint: the engine's
mechanics (reading, batching, journaling, outputs, resume) run end to end with it, but its
landmarks are meaningless, so nothing may assert accuracy on it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from legalign.models.checkpoint import build_nets, make_checkpoint, save_checkpoint
from legalign.models.spec import LocatorSpec


def tiny_spec_dict() -> dict:
    net = {"arch": "resnet18_fpn", "depth": 2, "out_stride": 4, "head_channels": 16, "sigma": 2.0}
    return {
        "coarse_height": 256,
        "coarse_width": 96,
        "coarse_landmarks": [
            "femoral_head",
            "knee_centre",
            "ankle_centre",
            "greater_trochanter",
            "femoral_shaft_proximal",
            "femoral_shaft_distal",
            "tibial_shaft_proximal",
            "tibial_shaft_distal",
        ],
        "coarse_net": dict(net),
        "fine_size": 64,
        "fine_landmarks": [
            "femoral_head",
            "greater_trochanter",
            "femoral_condyle_medial",
            "femoral_condyle_lateral",
            "tibial_plateau_medial",
            "tibial_plateau_lateral",
            "knee_centre",
            "ankle_centre",
        ],
        "fine_net": dict(net),
        "crops": [
            {
                "name": "hip",
                "anchors": ["femoral_head"],
                "weights": [1.0],
                "side": 0.3,
                "landmarks": ["femoral_head", "greater_trochanter"],
            },
            {
                "name": "knee",
                "anchors": ["knee_centre"],
                "weights": [1.0],
                "side": 0.3,
                "landmarks": [
                    "femoral_condyle_medial",
                    "femoral_condyle_lateral",
                    "tibial_plateau_medial",
                    "tibial_plateau_lateral",
                    "knee_centre",
                ],
            },
            {
                "name": "ankle",
                "anchors": ["ankle_centre"],
                "weights": [1.0],
                "side": 0.2,
                "landmarks": ["ankle_centre"],
            },
        ],
        "peak_threshold": 0.3,
        "fine_iterations": 1,
    }


def tiny_checkpoint(
    path: str | Path, seed: int = 0, out_std: float | None = None, **spec_overrides
) -> Path:
    """Write a tiny random locator checkpoint to ``path`` and return it.

    ``spec_overrides`` replace keys of ``tiny_spec_dict()`` (e.g. ``peak_threshold``);
    ``out_std`` re-draws the output layers' weights with that spread, which gives a
    random network heatmap peaks to find (so legs come out, wherever they are)."""

    torch.manual_seed(seed)
    spec = LocatorSpec.from_dict({**tiny_spec_dict(), **spec_overrides})
    coarse, fine = build_nets(spec)
    if out_std is not None:
        with torch.no_grad():
            for net in (coarse, fine):
                torch.nn.init.normal_(net.out.weight, std=out_std)
    save_checkpoint(
        make_checkpoint(spec, coarse, fine, config={"note": "random, tests only"}), path
    )
    return Path(path)
