"""Evaluate the whole pipeline against an angle-only ground truth (e.g. OAI readers' HKA).

The ground truth is a CSV with the columns ``file, side, hka_deg`` (header required, order
free, extra columns ignored), like ``../shared/data/oai-readers/readers.csv``:

=============  =====================================================================
column         meaning
=============  =====================================================================
``file``       image path, relative to the CSV's folder or its ``images/`` subfolder
               (or absolute); one film may carry a right and a left leg
``side``       ``right`` or ``left``
``hka_deg``    the reference hip-knee-ankle angle, varus negative
               (docs/clinical-geometry.md)
=============  =====================================================================

Each film goes through the same path as ``legalign run`` (``pipeline.api.analyse``:
read, locate, measure with the geometry config), so the figures are what a user gets.
The report gives, over the legs of the CSV: bias (prediction minus reference), SD,
mean absolute difference, the share within 1 and 2 deg, the largest difference,
Pearson r, 95 % limits of agreement, and every leg without a value with the reason.
When the results carry 90 % intervals (``hka_deg_lo`` / ``hka_deg_hi``) the report also
gives their coverage of the reference, and ``write_outputs`` a reliability plot.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import norm
from tqdm import tqdm

from legalign.pipeline.api import analyse, load_config, load_locator
from legalign.pipeline.errors import InputError, LegalignError
from legalign.pipeline.landmarks import SIDES
from legalign.pipeline.uncertainty import load_uncertainty_config
from legalign.training.datasets import split_indices
from legalign.training.evaluate import bland_altman_plot

ANGLE_COLUMNS: tuple[str, ...] = ("file", "side", "hka_deg")


@dataclass(frozen=True)
class AngleTruth:
    """One reference leg: the image, its side and the reference HKA."""

    file: str  # as written in the CSV
    path: Path  # resolved image path
    side: str
    hka_deg: float


@dataclass
class AngleLeg:
    """One reference leg against the pipeline's answer (``pred`` None: no value)."""

    file: str
    side: str
    truth: float
    pred: float | None = None
    reason: str | None = None  # why there is no value
    lo: float | None = None  # the stated interval, when the results carry one
    hi: float | None = None
    review: bool | None = None  # the leg was flagged for review


# ---------------------------------------------------------------- the CSV


def csv_header(path: str | Path) -> list[str]:
    """The stripped header row of a CSV (empty list for an empty file)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        row = next(csv.reader(fh), [])
    return [c.strip() for c in row]


def is_angle_csv(path: str | Path) -> bool:
    """True when the CSV's header has ``file``, ``side`` and ``hka_deg`` and is not a
    landmark CSV (no ``landmark`` column)."""
    header = set(csv_header(path))
    return set(ANGLE_COLUMNS) <= header and "landmark" not in header


def _resolve(csv_path: Path, name: str) -> Path:
    p = Path(name)
    if p.is_absolute():
        return p
    for base in (csv_path.parent, csv_path.parent / "images"):
        if (base / p).exists():
            return base / p
    return csv_path.parent / p


READERS_PARTS = ("angle", "calibration", "heldout")


def readers_part(
    n_films: int, part: str, fraction: float, seed: int, angle_fraction: float = 0.0
) -> list[int]:
    """Indices of the ``angle``, ``calibration`` or ``heldout`` films of an angle CSV of
    ``n_films`` films (in CSV order of first appearance), split reproducibly: ``fraction``
    of the films are not held out; ``angle_fraction`` of those are the angle stage's
    (none when 0), the others the conformal calibration's."""

    rest, chosen = split_indices(n_films, fraction, seed)
    if part == "heldout":
        return rest
    conformal, angle = chosen, []
    if angle_fraction > 0:
        keep, taken = split_indices(len(chosen), angle_fraction, seed + 1)
        conformal, angle = [chosen[i] for i in keep], [chosen[i] for i in taken]
    if part == "calibration":
        return conformal
    if part == "angle":
        return angle
    raise ValueError(f"part must be one of {', '.join(READERS_PARTS)}, got {part!r}")


def truths_of_part(truths: Sequence[AngleTruth], part: str | None) -> list[AngleTruth]:
    """The legs of the ``angle``, ``calibration`` or ``heldout`` films of the split in
    configs/uncertainty.yaml (``readers_split``); None keeps every leg."""
    if part is None:
        return list(truths)
    split = load_uncertainty_config().readers_split
    films = list(dict.fromkeys(t.path for t in truths))
    chosen = {
        films[i]
        for i in readers_part(
            len(films), part, split.calibration_fraction, split.seed, split.angle_fraction
        )
    }
    return [t for t in truths if t.path in chosen]


def load_angle_truth(path: str | Path) -> list[AngleTruth]:
    """Read and validate an angle CSV; errors name the file and the line."""
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    rows: list[AngleTruth] = []
    seen: set[tuple[str, str]] = set()
    with fh:
        reader = csv.DictReader(fh)
        header = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ANGLE_COLUMNS if c not in header]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)} (need file, side, hka_deg)"
            )
        for line, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            name, side = row["file"], row["side"].lower()
            if not name:
                raise InputError(f"{path}:{line}: empty file name")
            if side not in SIDES:
                raise InputError(f"{path}:{line}: side must be right or left, got {row['side']!r}")
            try:
                hka = float(row["hka_deg"])
            except ValueError:
                raise InputError(
                    f"{path}:{line}: hka_deg is not a number: {row['hka_deg']!r}"
                ) from None
            if not math.isfinite(hka) or abs(hka) > 90:
                raise InputError(f"{path}:{line}: hka_deg out of range: {hka}")
            if (name, side) in seen:
                raise InputError(f"{path}:{line}: {name} {side} listed twice")
            seen.add((name, side))
            rows.append(AngleTruth(name, _resolve(path, name), side, hka))
    if not rows:
        raise InputError(f"{path}: no legs listed")
    return rows


# ---------------------------------------------------------------- running the pipeline


def _leg_answer(result: Any, side: str) -> tuple[float | None, str | None, dict]:
    """(hka, reason if none, extras) for ``side`` from an ``ImageResult``."""
    legs = [leg for leg in result.legs if leg.side == side]
    if not legs:
        if result.status == "failed" and not result.legs:
            return None, f"{result.error_reason}: {result.error}", {}
        found = ", ".join(leg.side for leg in result.legs) or "none"
        return None, f"no {side} leg found (legs found: {found})", {}
    leg = legs[0]
    m = leg.measurements
    hka = getattr(m, "hka_deg", None)
    lo, hi = (getattr(leg, "intervals", None) or {}).get("hka_deg", (None, None))
    extras = {"lo": lo, "hi": hi, "review": getattr(leg, "review", None)}
    if hka is None:
        return None, leg.null_reasons.get("hka_deg", "no value"), extras
    return float(hka), None, extras


def predict_angles(
    truths: Sequence[AngleTruth],
    analyse: Callable[[Path], Any],
    progress: Callable[[int], None] | None = None,
) -> list[AngleLeg]:
    """Run ``analyse(path) -> ImageResult`` once per film and pair each reference leg
    with the leg of the same side.  An input error becomes the leg's reason."""
    by_path: dict[Path, list[AngleTruth]] = {}
    for t in truths:
        by_path.setdefault(t.path, []).append(t)
    out: list[AngleLeg] = []
    for i, (path, rows) in enumerate(by_path.items()):
        try:
            result, err = analyse(path), None
        except LegalignError as exc:
            result, err = None, str(exc).splitlines()[0]
        for t in rows:
            leg = AngleLeg(t.file, t.side, t.hka_deg)
            if result is None:
                leg.reason = err
            else:
                leg.pred, leg.reason, extras = _leg_answer(result, t.side)
                leg.lo, leg.hi, leg.review = (
                    extras.get("lo"),
                    extras.get("hi"),
                    extras.get("review"),
                )
            out.append(leg)
        if progress is not None:
            progress(i + 1)
    return out


# ---------------------------------------------------------------- the figures


def angle_summary(legs: Sequence[AngleLeg]) -> dict[str, Any]:
    """Agreement of the measured legs with the reference, and the legs without a value."""
    done = [leg for leg in legs if leg.pred is not None]
    t = np.array([leg.truth for leg in done], dtype=np.float64)
    p = np.array([leg.pred for leg in done], dtype=np.float64)
    d = p - t
    out: dict[str, Any] = {
        "n_legs": len(legs),
        "n_measured": len(done),
        "n_without_value": len(legs) - len(done),
        "without_value": [
            {"file": leg.file, "side": leg.side, "reason": leg.reason}
            for leg in legs
            if leg.pred is None
        ],
    }
    if d.size:
        bias = float(d.mean())
        sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
        r = None
        if d.size > 2 and t.std() > 0 and p.std() > 0:
            r = float(np.corrcoef(t, p)[0, 1])
        out.update(
            bias=bias,
            sd=sd,
            mad=float(np.abs(d).mean()),
            within_1=float(np.mean(np.abs(d) <= 1.0)),
            within_2=float(np.mean(np.abs(d) <= 2.0)),
            max_abs=float(np.abs(d).max()),
            pearson_r=r,
            loa_low=bias - 1.96 * sd,
            loa_high=bias + 1.96 * sd,
        )
        order = np.argsort(-np.abs(d))[:5]
        out["largest"] = [
            {
                "file": done[i].file,
                "side": done[i].side,
                "truth": done[i].truth,
                "pred": done[i].pred,
            }
            for i in order
        ]
    with_iv = [leg for leg in done if leg.lo is not None and leg.hi is not None]
    if with_iv:
        inside = [leg.lo <= leg.truth <= leg.hi for leg in with_iv]
        widths = [leg.hi - leg.lo for leg in with_iv]
        out["interval"] = {
            "n": len(with_iv),
            "coverage": float(np.mean(inside)),
            "width_median": float(np.median(widths)),
            "width_max": float(np.max(widths)),
        }
    flagged = [leg for leg in done if leg.review]
    if any(leg.review is not None for leg in done):
        fd = np.array([abs(leg.pred - leg.truth) for leg in flagged])
        out["review"] = {
            "n_flagged": len(flagged),
            "mad_flagged": float(fd.mean()) if fd.size else None,
            "mad_not_flagged": (
                float(np.mean([abs(leg.pred - leg.truth) for leg in done if not leg.review]))
                if len(done) > len(flagged)
                else None
            ),
        }
    return out


def _f(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def format_angle_report(report: dict[str, Any], max_rows: int = 20) -> str:
    """A readable summary of ``angle_summary``'s report."""
    s = report
    lines = [
        f"legs {s['n_legs']}: HKA for {s['n_measured']}, without a value {s['n_without_value']}",
        f"HKA, prediction - reference (deg): bias {_f(s.get('bias'), '+.2f')}  "
        f"SD {_f(s.get('sd'))}  mean abs diff {_f(s.get('mad'))}  max {_f(s.get('max_abs'))}",
        f"  within 1 deg {_f(100 * s['within_1'] if 'within_1' in s else None, '.1f')} %  "
        f"within 2 deg {_f(100 * s['within_2'] if 'within_2' in s else None, '.1f')} %  "
        f"Pearson r {_f(s.get('pearson_r'), '.3f')}  95 % LoA {_f(s.get('loa_low'), '+.2f')} / "
        f"{_f(s.get('loa_high'), '+.2f')}",
    ]
    if "interval" in s:
        iv = s["interval"]
        lines.append(
            f"  90 % interval holds the reference for {100 * iv['coverage']:.1f} % of {iv['n']} legs "
            f"(median width {iv['width_median']:.2f} deg)"
        )
    if "review" in s:
        rv = s["review"]
        lines.append(
            f"  flagged for review: {rv['n_flagged']} legs (mean abs diff {_f(rv['mad_flagged'])} "
            f"flagged, {_f(rv['mad_not_flagged'])} not flagged)"
        )
    for w in s["without_value"][:max_rows]:
        lines.append(f"  no value: {w['file']} [{w['side']}]: {w['reason']}")
    if len(s["without_value"]) > max_rows:
        lines.append(f"  ... {len(s['without_value']) - max_rows} more in report.json")
    return "\n".join(lines)


def reliability_plot(
    legs: Sequence[AngleLeg], path: str | Path, levels: Sequence[float] = ()
) -> Path:
    """Reliability of the stated intervals: for nominal levels 10-99 %, the share of legs
    whose reference lies inside the interval rescaled to that level (Gaussian, from the
    stated 90 % interval), against the nominal level.  PNG."""

    matplotlib.use("Agg", force=False)

    z90 = float(norm.ppf(0.95))
    levels = np.asarray(levels or np.linspace(0.1, 0.99, 24), dtype=np.float64)
    legs = [
        leg for leg in legs if leg.pred is not None and leg.lo is not None and leg.hi is not None
    ]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    try:
        ax.plot([0, 100], [0, 100], "k:", lw=1, label="ideal")
        if legs:
            centre = np.array([(leg.lo + leg.hi) / 2 for leg in legs])
            half = np.array([(leg.hi - leg.lo) / 2 for leg in legs])
            err = np.abs(np.array([leg.truth for leg in legs]) - centre)
            sd = np.maximum(half / z90, 1e-9)
            z = err / sd
            obs = [float(np.mean(z <= norm.ppf(0.5 + lv / 2))) for lv in levels]
            ax.plot(
                100 * levels, [100 * o for o in obs], "o-", ms=3, label=f"observed (n={len(legs)})"
            )
            cov90 = float(np.mean([leg.lo <= leg.truth <= leg.hi for leg in legs]))
            ax.plot([90], [100 * cov90], "rs", label=f"stated 90 %: {100 * cov90:.1f} %")
            ax.axhspan(85, 95, xmin=0.85, xmax=0.95, color="g", alpha=0.15)
            ax.legend(loc="upper left", fontsize=8)
        else:
            ax.text(50, 50, "no intervals", ha="center", va="center")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("nominal interval level (%)")
        ax.set_ylabel("reference inside the interval (%)")
        ax.set_title("Reliability of the HKA intervals")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


LEG_COLUMNS = ("file", "side", "truth", "pred", "diff", "lo", "hi", "review", "reason")


def write_outputs(
    report: dict[str, Any], legs: Sequence[AngleLeg], out_dir: str | Path
) -> dict[str, Path]:
    """``report.json``, ``legs.csv``, ``bland_altman_hka.png`` and (when the results carry
    intervals) ``reliability_hka.png`` in ``out_dir``."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.json", "legs": out / "legs.csv"}
    with open(paths["legs"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(LEG_COLUMNS)
        for leg in legs:
            diff = None if leg.pred is None else leg.pred - leg.truth
            row = {**asdict(leg), "diff": diff}
            w.writerow(["" if row[c] is None else row[c] for c in LEG_COLUMNS])
    done = [leg for leg in legs if leg.pred is not None]
    paths["bland_altman"] = bland_altman_plot(
        [leg.truth for leg in done],
        [leg.pred for leg in done],
        out / "bland_altman_hka.png",
        label="HKA vs reference (deg)",
    )
    if "interval" in report:
        paths["reliability"] = reliability_plot(legs, out / "reliability_hka.png")
    report = {**report, "outputs": {k: str(v) for k, v in paths.items()}}
    paths["report"].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return paths


def evaluate_angles(
    checkpoint: str | Path | None,
    csv_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    assumed_spacing_mm: float | None = None,
    device: str = "cpu",
    geometry_config: str | Path | None = None,
    limit: int | None = None,
    part: str | None = None,
) -> tuple[dict[str, Any], list[AngleLeg]]:
    """Run the pipeline with ``checkpoint`` over the films of an angle CSV; returns the
    report (with ``"outputs"`` when ``out_dir`` is given) and the legs.  ``part``:
    ``calibration`` or ``heldout`` restricts the films to that part of the split in
    configs/uncertainty.yaml (``readers_split``; the calibration part fitted the
    interval scale), None takes every film."""

    truths = truths_of_part(load_angle_truth(csv_path), part)
    if limit is not None:
        films = list(dict.fromkeys(t.path for t in truths))[: int(limit)]
        truths = [t for t in truths if t.path in set(films)]
    cfg = load_config(geometry_config)
    locator = load_locator(checkpoint, device=device)
    n_films = len({t.path for t in truths})
    with tqdm(total=n_films, desc="evaluate", unit="film", disable=None, leave=False) as bar:
        legs = predict_angles(
            truths,
            lambda p: analyse(p, model=locator, spacing_mm=assumed_spacing_mm, config=cfg),
            progress=lambda k: bar.update(1),
        )
    report = angle_summary(legs)
    report.update(
        checkpoint=str(checkpoint) if checkpoint is not None else "default",
        dataset=str(csv_path),
        ground_truth="angles (file, side, hka_deg)",
        part=part or "all",
        n_films=n_films,
        assumed_spacing_mm=assumed_spacing_mm,
        device=device,
    )
    if out_dir is not None:
        paths = write_outputs(report, legs, out_dir)
        report["outputs"] = {k: str(v) for k, v in paths.items()}
    return report, legs
