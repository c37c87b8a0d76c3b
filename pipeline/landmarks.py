"""Landmark names and the per-leg landmark container shared by every stage.

Coordinates are image pixels: x to the right, y down, origin at the centre of the
top-left pixel (see docs/clinical-geometry.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from legalign.pipeline.enums import Side
from legalign.pipeline.errors import InputError

LANDMARK_NAMES: tuple[str, ...] = (
    "femoral_head",
    "femoral_condyle_medial",
    "femoral_condyle_lateral",
    "tibial_plateau_medial",
    "tibial_plateau_lateral",
    "knee_centre",
    "ankle_centre",
    "greater_trochanter",
    "femoral_shaft_proximal",
    "femoral_shaft_distal",
    "tibial_shaft_proximal",
    "tibial_shaft_distal",
)
CORE_LANDMARKS: tuple[str, ...] = ("femoral_head", "knee_centre", "ankle_centre")
SIDES: tuple[Side, ...] = (Side.RIGHT, Side.LEFT)

# Medial/lateral pairs: anatomical labels.  Code that works in image terms (a network
# predicting "smaller x / larger x" points, an augmentation flip) maps through these.
MEDIAL_LATERAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("femoral_condyle_medial", "femoral_condyle_lateral"),
    ("tibial_plateau_medial", "tibial_plateau_lateral"),
)


class LandmarkError(InputError):
    """Raised for landmark sets that cannot be used (unknown names, NaN, bad side)."""


@dataclass(frozen=True)
class LegLandmarks:
    """The landmarks of one leg on one film.

    ``points`` maps landmark name -> (x, y) in pixels; a missing landmark is simply
    absent.  ``confidence`` (optional) maps name -> [0, 1] network confidence;
    ``spread`` (optional) name -> heatmap peak spread in image pixels.
    """

    side: Side  # a "right"/"left" string is accepted and made a Side
    points: dict[str, tuple[float, float]]
    confidence: dict[str, float] = field(default_factory=dict)
    # True when the film shows this leg mirrored against the standard AP display
    # (patient's right on the viewer's right).  Medial is then -x for a right leg.
    mirrored: bool = False
    # Optional: name -> spread of the network's heatmap peak (per-axis SD of its mass),
    # in image pixels.  With the confidence it gives the landmark's expected error
    # (pipeline/uncertainty.py).  Absent for landmarks not located by a network.
    spread: dict[str, float] = field(default_factory=dict)
    # Landmarks the film cuts off (the locator's judgement: the joint lies at or beyond
    # the film's edge).  They keep their located place in ``points`` but are not
    # measured from: what needs them is null "outside the film" (pipeline/landmark_use.py).
    outside: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise LandmarkError(f"side must be 'right' or 'left', got {self.side!r}")
        object.__setattr__(self, "side", Side(self.side))
        for name, xy in self.points.items():
            if name not in LANDMARK_NAMES:
                raise LandmarkError(
                    f"unknown landmark name {name!r} (expected one of: {', '.join(LANDMARK_NAMES)})"
                )
            if len(xy) != 2:
                raise LandmarkError(f"landmark {name!r} must be [x, y], got {list(xy)!r}")
            x, y = xy
            if not (isinstance(x, int | float) and isinstance(y, int | float)):
                raise LandmarkError(f"landmark {name!r} has non-numeric coordinates {list(xy)!r}")
            if not (math.isfinite(x) and math.isfinite(y)):
                raise LandmarkError(f"landmark {name!r} has a non-finite coordinate {list(xy)!r}")

    def has(self, *names: str) -> bool:
        return all(n in self.points for n in names)

    @property
    def medial_sign(self) -> int:
        """+1 when medial is +x in the image, -1 when it is -x."""
        sign = 1 if self.side is Side.RIGHT else -1
        return -sign if self.mirrored else sign

    def as_other_leg(self, width: float) -> LegLandmarks:
        """The mirror-image leg: this leg reflected in x as the *other* side's leg.

        Pixel centres run 0..width-1, so x -> (width - 1) - x.  Medial/lateral labels
        stay; the side flips, so the result is what the contralateral leg of the same
        shape looks like on a standard AP film.  Measurements must not change.
        """
        pts = {n: ((width - 1.0) - x, y) for n, (x, y) in self.points.items()}
        return LegLandmarks(
            side=self.side.other,
            points=pts,
            confidence=dict(self.confidence),
            mirrored=self.mirrored,
            spread=dict(self.spread),
            outside=self.outside,
        )
