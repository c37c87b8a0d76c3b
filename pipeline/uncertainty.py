"""Calibrated landmark error radii and measurement intervals.

Error model (parameters in ``configs/uncertainty.yaml``, fitted by
``python -m legalign.training.calibration``; see the model card, "Uncertainty"):

    sd_px(landmark) = scale * landmark_scale[landmark] * spread_px / max(confidence, min_confidence) ** confidence_exponent

where ``spread_px`` is the per-axis spread of the network's heatmap peak in image pixels
(``LegLandmarks.spread``, from the locator) and ``confidence`` its peak value.  The
error is taken as isotropic Gaussian with that per-axis SD.  A landmark's reported
**error radius** is the radius of the circle that holds its true position with
probability ``level`` (90 % by default): ``sd * sqrt(-2 ln(1 - level))``; in mm where
the pixel spacing is known.

Measurement intervals are propagated from the landmarks through the project's own
geometry (``pipeline.measure.measure_leg``) by first-order (delta-method) propagation:
the Jacobian of every measurement with respect to every landmark coordinate by central
finite differences, ``var = sum_l sd_l**2 * (dm/dx_l**2 + dm/dy_l**2)``, and the interval
``value +- z * sqrt(var)`` with ``z`` the two-sided normal quantile of ``level``.  The
landmark scales come from landmark labels (the oai-sample val split); ``scale`` from
the OAI readers' HKA (split conformal on a calibration part), so the HKA interval is
meant to hold what a reader measures ``level`` of the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from legalign.pipeline.config_schema import ConfigError, load_config
from legalign.pipeline.errors import LegalignError
from legalign.pipeline.geometry_config import load_geometry_config
from legalign.pipeline.landmarks import LANDMARK_NAMES, LegLandmarks
from legalign.pipeline.measure import REQUIRES, measure_leg

DEFAULT_UNCERTAINTY_CONFIG = "uncertainty.yaml"
# measurements that get an interval (the per-leg numbers of pipeline.measure)
INTERVAL_MEASUREMENTS: tuple[str, ...] = (
    "hka_deg",
    "mad_mm",
    "wbl_ratio_pct",
    "mldfa_deg",
    "mpta_deg",
    "jlca_deg",
    "mlpfa_deg",
    "atfa_deg",
    "ama_deg",
    "femur_length_mm",
    "tibia_length_mm",
    "leg_length_mm",
)
_STEP_PX = 0.05  # finite-difference step for the Jacobian, image pixels


@dataclass(frozen=True)
class ReadersSplit:
    """How the films of the angle reference CSV are split: ``calibration_fraction`` of
    them are not held out; of those, ``angle_fraction`` train the default recipe's angle
    stage (part ``angle``) and the others calibrated ``scale`` (part ``calibration``);
    the rest is held out (part ``heldout``)."""

    seed: int
    calibration_fraction: float
    angle_fraction: float = 0.0

    def validate(self) -> None:
        if not 0.0 < self.calibration_fraction < 1.0:
            raise ConfigError("calibration_fraction: must be within (0, 1)")
        if not 0.0 <= self.angle_fraction < 1.0:
            raise ConfigError("angle_fraction: must be within [0, 1)")


@dataclass(frozen=True)
class UncertaintyConfig:
    """Schema of ``configs/uncertainty.yaml`` (see the module docstring)."""

    level: float
    confidence_exponent: float
    min_confidence: float
    scale: float
    landmark_scale: dict[str, float]
    readers_split: ReadersSplit
    fitted_by: str
    fitted_on: str

    def validate(self) -> None:
        if not 0.5 <= self.level < 1.0:
            raise ConfigError("level: must be within [0.5, 1)")
        if self.confidence_exponent < 0:
            raise ConfigError("confidence_exponent: must not be negative")
        if not 0.0 < self.min_confidence <= 1.0:
            raise ConfigError("min_confidence: must be within (0, 1]")
        if not self.scale > 0:
            raise ConfigError("scale: must be positive")
        for name, v in self.landmark_scale.items():
            if name not in LANDMARK_NAMES:
                raise ConfigError(f"landmark_scale.{name}: unknown landmark")
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ConfigError(f"landmark_scale.{name}: must be a positive number, got {v!r}")

    @property
    def z(self) -> float:
        """Two-sided normal quantile of ``level`` (1.645 for 90 %)."""
        return NormalDist().inv_cdf(0.5 + self.level / 2)

    @property
    def radius_factor(self) -> float:
        """Radius of the ``level`` circle of a 2-D isotropic Gaussian, in SDs."""
        return math.sqrt(-2.0 * math.log(1.0 - self.level))


def load_uncertainty_config(path: str | Path | None = None) -> UncertaintyConfig:
    """The defaults of configs/uncertainty.yaml, with ``path`` (a partial YAML) merged over."""
    return load_config(UncertaintyConfig, DEFAULT_UNCERTAINTY_CONFIG, path)


def landmark_sd_px(
    leg: LegLandmarks, cfg: UncertaintyConfig, names: Any = None
) -> dict[str, float]:
    """Per-axis error SD (image pixels) of every landmark that has a heatmap spread, a
    confidence and a calibrated scale.  Landmarks without them (e.g. read from a file)
    get none."""
    out: dict[str, float] = {}
    for name in names if names is not None else leg.points:
        spread = leg.spread.get(name)
        conf = leg.confidence.get(name)
        k = cfg.landmark_scale.get(name)
        if spread is None or conf is None or k is None or name not in leg.points:
            continue
        c = max(float(conf), cfg.min_confidence)
        out[name] = cfg.scale * float(k) * float(spread) / c**cfg.confidence_exponent
    return out


def error_radius(sd: float, cfg: UncertaintyConfig) -> float:
    """The radius that holds the true position with probability ``cfg.level``."""
    return sd * cfg.radius_factor


def _values(leg: LegLandmarks, spacing_mm: float | None, geometry_cfg: Any) -> dict[str, float]:

    try:
        m = measure_leg(leg, spacing_mm, geometry_cfg)
    except LegalignError:
        return {}
    return {k: v for k in INTERVAL_MEASUREMENTS if (v := getattr(m, k)) is not None}


def measurement_sds(
    leg: LegLandmarks,
    spacing_mm: float | None,
    sd_px: dict[str, float],
    geometry_cfg: Any = None,
) -> dict[str, float]:
    """SD of every measurement of ``leg`` propagated from the landmark SDs ``sd_px``.

    A measurement gets an SD only when every landmark it depends on has one (a
    landmark without one would make the interval falsely narrow)."""

    geometry_cfg = geometry_cfg or load_geometry_config()
    base = _values(leg, spacing_mm, geometry_cfg)
    var = dict.fromkeys(base, 0.0)
    for name, sd in sd_px.items():
        if name not in leg.points or sd <= 0:
            continue
        x, y = leg.points[name]
        for dx, dy in ((_STEP_PX, 0.0), (0.0, _STEP_PX)):
            plus = _moved(leg, name, x + dx, y + dy)
            minus = _moved(leg, name, x - dx, y - dy)
            vp = _values(plus, spacing_mm, geometry_cfg)
            vm = _values(minus, spacing_mm, geometry_cfg)
            for key in var:
                if key in vp and key in vm:
                    d = _wrapped(vp[key] - vm[key], key) / (2 * _STEP_PX)
                    var[key] += (d * sd) ** 2
    out = {}
    for key, v in var.items():
        needs = REQUIRES.get(key, ())
        if all(n in sd_px for n in needs):
            out[key] = math.sqrt(v)
    return out


def _wrapped(d: float, key: str) -> float:
    if key.endswith("_deg"):
        return (d + 180.0) % 360.0 - 180.0
    return d


def _moved(leg: LegLandmarks, name: str, x: float, y: float) -> LegLandmarks:
    pts = dict(leg.points)
    pts[name] = (x, y)
    return LegLandmarks(leg.side, pts, leg.confidence, leg.mirrored, leg.spread)


@dataclass
class LegUncertainty:
    """Per landmark: SD and ``level`` radius in image px; per measurement: SD and the
    ``level`` interval (lo, hi) around the measured value."""

    level: float
    landmark_sd_px: dict[str, float]
    landmark_radius_px: dict[str, float]
    measurement_sd: dict[str, float]
    intervals: dict[str, tuple[float, float]]


def leg_uncertainty(
    leg: LegLandmarks,
    values: dict[str, float | None],
    spacing_mm: float | None,
    cfg: UncertaintyConfig,
    geometry_cfg: Any = None,
) -> LegUncertainty:
    """Error radii of ``leg``'s landmarks and intervals for its measured ``values``
    (name -> value, as measured from ``leg``)."""
    sd = landmark_sd_px(leg, cfg)
    msd = measurement_sds(leg, spacing_mm, sd, geometry_cfg)
    z = cfg.z
    intervals = {
        k: (float(v) - z * s, float(v) + z * s)
        for k, s in msd.items()
        if (v := values.get(k)) is not None
    }
    return LegUncertainty(
        level=cfg.level,
        landmark_sd_px=sd,
        landmark_radius_px={n: error_radius(s, cfg) for n, s in sd.items()},
        measurement_sd=msd,
        intervals=intervals,
    )
