"""A locator on the framing test set (``training/framing.py``): is every leg found?

For every source film the model is first run on the original: its HKA there is the
reference of the variants made from it (the readers' HKA is a second reference for
oai-readers films).  Each variant is then analysed through ``pipeline.api.analyse`` (the
readers, the locator, the confidence cut and the measurement stage the product uses),
and each expected leg is matched to the predicted leg whose knee centre is nearest to
where the source's knee maps (labels when the source has them, else the model's knee on
the original); within ``match_fraction`` x femur length it is found.

Reported per kind and overall: legs expected, found with the correct side, missed, found
with the wrong side, extra legs, |HKA(variant) - HKA(original)| (mean, p95, max, how many
found legs have no HKA), HKA against the readers (bias, mean absolute difference) on the
readers variants and on the originals (also on the *held-out* readers films alone: the
angle stage, configs/train_angle.yaml, trains on the angle part, ``readers_split`` of
configs/uncertainty.yaml), and, on partial films, how many legs whose hip or ankle is cut
off say ``outside the film``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from legalign.models.crops import apply_affine
from legalign.pipeline.api import analyse, load_config, load_locator
from legalign.training.framing import load_manifest
from legalign.training.readers_eval import READERS_PARTS, load_angle_truth, truths_of_part

CORE = ("femoral_head", "knee_centre", "ankle_centre")
# a variant's HKA this far from its original's (deg) is counted apart, with how many of
# those legs the product flags for review (issue #11's "0.6 deg for all")
FAR_DEG = 0.6


def readers_parts(manifest: dict[str, Any], roots: dict[str, str]) -> dict[str, str]:
    """Source key -> ``angle``, ``calibration`` or ``heldout`` for the oai-readers
    sources, from the readers' CSV (``readers.csv`` in the dataset's root) and
    ``readers_split``; empty when the CSV is not there."""
    root = roots.get("oai-readers")
    if root is None or not (Path(root) / "readers.csv").is_file():
        return {}
    csv_path = Path(root) / "readers.csv"
    truths = load_angle_truth(csv_path)
    part_of = {
        t.path.resolve(): part for part in READERS_PARTS for t in truths_of_part(truths, part)
    }
    out = {}
    for key, src in manifest["sources"].items():
        if src["dataset"] == "oai-readers":
            part = part_of.get((Path(root) / src["file"]).resolve())
            if part is not None:
                out[key] = part
    return out


def _leg_info(leg: Any) -> dict[str, Any]:
    """What the evaluation needs from an api ``LegResult``."""
    pts = {n: (lm.x, lm.y) for n, lm in leg.landmarks.items()}
    return {
        "side": leg.side,
        "points": pts,
        "hka": getattr(leg.measurements, "hka_deg", None),
        "hka_reason": leg.null_reasons.get("hka_deg"),
        "review": bool(leg.review),
    }


def _analyse(path: Path, locator: Any, cfg: Any) -> tuple[list[dict[str, Any]], str | None]:

    try:
        res = analyse(path, model=locator, config=cfg)
    except Exception as exc:  # a variant the reader refuses is a miss, with its reason
        return [], f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return [_leg_info(leg) for leg in res.legs], res.error_reason


def _stats(values: list[float]) -> dict[str, Any]:
    a = np.abs(np.asarray(values, dtype=np.float64))
    if len(a) == 0:
        return {"n": 0, "mean": None, "p95": None, "max": None}
    return {
        "n": int(len(a)),
        "mean": float(a.mean()),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
    }


def _readers_stats(diffs: list[float]) -> dict[str, Any]:
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) == 0:
        return {"n": 0, "bias": None, "mad": None, "within_1": None}
    return {
        "n": int(len(d)),
        "bias": float(d.mean()),
        "mad": float(np.abs(d).mean()),
        "within_1": float(np.mean(np.abs(d) <= 1.0)),
    }


def _match(expected: list[dict], predicted: list[dict]) -> list[tuple[int, float]]:
    """Greedy nearest-knee assignment: for each expected leg (index into ``predicted``,
    distance in units of the leg's femur length), -1 when nothing is left."""
    pairs = []
    for i, e in enumerate(expected):
        for j, p in enumerate(predicted):
            knee = p["points"].get("knee_centre")
            if e["knee"] is None or knee is None:
                continue
            d = math.hypot(knee[0] - e["knee"][0], knee[1] - e["knee"][1]) / e["femur"]
            pairs.append((d, i, j))
    pairs.sort()
    out = [(-1, math.inf)] * len(expected)
    used_i, used_j = set(), set()
    for d, i, j in pairs:
        if i in used_i or j in used_j:
            continue
        out[i] = (j, d)
        used_i.add(i)
        used_j.add(j)
    return out


def evaluate_framing(
    folder: str | Path,
    checkpoint: str | Path | None = None,
    *,
    roots: dict[str, str] | None = None,
    kinds: list[str] | None = None,
    limit: int | None = None,
    match_fraction: float = 0.25,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``checkpoint`` (None: the shipped default) on the set in ``folder``."""

    folder = Path(folder)
    manifest = load_manifest(folder)
    roots = {**manifest.get("roots", {}), **(roots or {})}
    locator = load_locator(None if checkpoint is None else str(checkpoint), device=device)
    cfg = load_config(None)
    variants = [v for v in manifest["variants"] if kinds is None or v["kind"] in kinds]
    if limit is not None:
        variants = variants[:limit]
    needed = sorted({leg["source"] for v in variants for leg in v["legs"]})
    parts = readers_parts(manifest, roots)

    # ---- the originals: reference HKA and knee of each source
    refs: dict[str, dict[str, Any]] = {}
    it = needed
    if progress:
        it = tqdm(needed, desc="originals", unit="film")
    t_orig = time.perf_counter()
    for key in it:
        src = manifest["sources"][key]
        root = roots.get(src["dataset"])
        if root is None:
            raise FileNotFoundError(f"no root folder for dataset {src['dataset']!r} (--root)")
        legs, _ = _analyse(Path(root) / src["file"], locator, cfg)
        labels = {k: tuple(v) for k, v in src.get("landmarks", {}).items()}
        leg = None
        if legs:
            same = [lg for lg in legs if lg["side"] == src["side"]] or legs
            if "knee_centre" in labels:
                kx, ky = labels["knee_centre"]
                same.sort(
                    key=lambda lg: math.hypot(
                        lg["points"].get("knee_centre", (1e9, 1e9))[0] - kx,
                        lg["points"].get("knee_centre", (1e9, 1e9))[1] - ky,
                    )
                )
            leg = same[0]
        pts = labels if all(n in labels for n in CORE[:2]) else (leg["points"] if leg else {})
        femur = (
            math.hypot(*np.subtract(pts["knee_centre"], pts["femoral_head"]))
            if all(n in pts for n in CORE[:2])
            else None
        )
        refs[key] = {
            "hka": leg["hka"] if leg else None,
            "knee": pts.get("knee_centre"),
            "head": pts.get("femoral_head"),
            "femur": femur,
            "readers": src.get("readers_hka"),
            "readers_part": parts.get(key),
            "original_side": leg["side"] if leg else None,
        }
    t_orig = time.perf_counter() - t_orig

    # ---- the variants
    rows: list[dict[str, Any]] = []
    it = variants
    if progress:
        it = tqdm(variants, desc="variants", unit="film")
    t0 = time.perf_counter()
    for v in it:
        predicted, error = _analyse(folder / v["file"], locator, cfg)
        expected = []
        for leg in v["legs"]:
            ref = refs[leg["source"]]
            A = np.asarray(leg["matrix"], dtype=np.float64)
            knee = head = None
            if ref["knee"] is not None:
                knee = tuple(apply_affine(A, np.asarray(ref["knee"])))
            if ref["head"] is not None:
                head = tuple(apply_affine(A, np.asarray(ref["head"])))
            femur = (
                math.hypot(knee[0] - head[0], knee[1] - head[1])
                if knee is not None and head is not None
                else 1.0
            )
            expected.append({"knee": knee, "femur": max(femur, 1.0)})
        matches = _match(expected, predicted)
        for leg, (j, d) in zip(v["legs"], matches, strict=True):
            ref = refs[leg["source"]]
            p = predicted[j] if j >= 0 and d <= match_fraction else None
            row = {
                "file": v["file"],
                "kind": v["kind"],
                "params": v["params"],
                "source": leg["source"],
                "expected_side": leg["side"],
                "found": p is not None,
                "side": p["side"] if p else None,
                "knee_error_femur": None if j < 0 else float(d),
                "hka": p["hka"] if p else None,
                "hka_reason": p["hka_reason"] if p else None,
                "review": p["review"] if p else None,
                "hka_original": ref["hka"],
                "readers_hka": leg.get("readers_hka"),
                "readers_part": parts.get(leg["source"]),
                "outside": leg.get("outside", []),
                "error": error if p is None else None,
                "n_predicted": len(predicted),
            }
            rows.append(row)
        n_extra = max(0, len(predicted) - sum(1 for j, d in matches if j >= 0))
        if n_extra and rows:
            rows[-1]["extra_legs"] = n_extra
    elapsed = time.perf_counter() - t0
    report = summarise_rows(rows, refs)
    report["checkpoint"] = str(checkpoint) if checkpoint else "shipped default"
    report["folder"] = str(folder)
    report["seconds_per_variant"] = elapsed / max(len(variants), 1)
    report["seconds_originals"] = t_orig
    report["rows"] = rows
    return report


def _block(rows: list[dict[str, Any]]) -> dict[str, Any]:
    found = [r for r in rows if r["found"]]
    ok = [r for r in found if r["side"] == r["expected_side"]]
    deltas = [
        r["hka"] - r["hka_original"]
        for r in ok
        if r["hka"] is not None and r["hka_original"] is not None and not r["outside_core"]
    ]
    far = [
        r
        for r in ok
        if r["hka"] is not None
        and r["hka_original"] is not None
        and not r["outside_core"]
        and abs(r["hka"] - r["hka_original"]) > FAR_DEG
    ]
    no_hka = [r for r in ok if r["hka"] is None and not r["outside_core"]]
    readers = [
        r
        for r in ok
        if r["hka"] is not None and r["readers_hka"] is not None and not r["outside_core"]
    ]
    cut = [r for r in ok if r["outside_core"]]
    return {
        "legs": len(rows),
        "found_correct_side": len(ok),
        "missed": len(rows) - len(found),
        "wrong_side": len(found) - len(ok),
        "extra_legs": sum(r.get("extra_legs", 0) for r in rows),
        "hka_delta_deg": _stats(deltas),
        "hka_far": len(far),
        "hka_far_flagged_for_review": sum(1 for r in far if r.get("review")),
        "found_without_hka": len(no_hka),
        "readers": _readers_stats([r["hka"] - r["readers_hka"] for r in readers]),
        "readers_heldout": _readers_stats(
            [r["hka"] - r["readers_hka"] for r in readers if r.get("readers_part") == "heldout"]
        ),
        "cut_legs": len(cut),
        "cut_legs_outside_the_film": sum(
            1 for r in cut if r["hka"] is None and "outside the film" in (r["hka_reason"] or "")
        ),
        "cut_legs_with_hka": sum(1 for r in cut if r["hka"] is not None),
    }


def summarise_rows(rows: list[dict[str, Any]], refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for r in rows:
        r["outside_core"] = any(n in CORE for n in r.get("outside", []))
    kinds = sorted({r["kind"] for r in rows})
    originals = [
        ref for ref in refs.values() if ref["hka"] is not None and ref["readers"] is not None
    ]
    by_kind = {k: _block([r for r in rows if r["kind"] == k]) for k in kinds}
    return {
        "overall": _block(rows),
        "by_kind": by_kind,
        "originals": {
            "films": len(refs),
            "without_hka": sum(1 for ref in refs.values() if ref["hka"] is None),
            "readers": _readers_stats([ref["hka"] - ref["readers"] for ref in originals]),
            "readers_heldout": _readers_stats(
                [
                    ref["hka"] - ref["readers"]
                    for ref in originals
                    if ref.get("readers_part") == "heldout"
                ]
            ),
        },
        "misses": [
            {k: r[k] for k in ("file", "source", "expected_side", "side", "error", "n_predicted")}
            for r in rows
            if not r["found"] or r["side"] != r["expected_side"]
        ],
    }


def _f(v: Any, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def format_framing_report(report: dict[str, Any], max_misses: int = 15) -> str:
    lines = [
        "| kind | legs | found, side right | missed | wrong side | extra | "
        f"dHKA mean / p95 / max (deg) | dHKA > {FAR_DEG} (flagged for review) | no HKA | "
        "readers MAD / bias (n) | held-out readers MAD (n) | cut: outside the film |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    blocks = [*report["by_kind"].items(), ("all", report["overall"])]
    for name, b in blocks:
        h, rd, hd = b["hka_delta_deg"], b["readers"], b["readers_heldout"]
        cut = f"{b['cut_legs_outside_the_film']}/{b['cut_legs']}" if b["cut_legs"] else "-"
        lines.append(
            f"| {name} | {b['legs']} | {b['found_correct_side']} | {b['missed']} | "
            f"{b['wrong_side']} | {b['extra_legs']} | {_f(h['mean'])} / {_f(h['p95'])} / "
            f"{_f(h['max'])} | {b['hka_far']} ({b['hka_far_flagged_for_review']}) | "
            f"{b['found_without_hka']} | {_f(rd['mad'])} / {_f(rd['bias'])} "
            f"({rd['n']}) | {_f(hd['mad'])} ({hd['n']}) | {cut} |"
        )
    o = report["originals"]
    lines.append(
        f"originals: {o['films']} films, {o['without_hka']} without HKA; readers MAD "
        f"{_f(o['readers']['mad'])} deg, bias {_f(o['readers']['bias'])} ({o['readers']['n']} legs); "
        f"held-out readers MAD {_f(o['readers_heldout']['mad'])} ({o['readers_heldout']['n']} legs)"
    )
    lines.append(f"{report['seconds_per_variant']:.3f} s per variant (read + locate + measure)")
    misses = report["misses"]
    if misses:
        lines.append(f"misses ({len(misses)}):")
        for m in misses[:max_misses]:
            lines.append(
                f"  {m['file']} [{m['source']}] expected {m['expected_side']}, got "
                f"{m['side'] or 'nothing'} ({m['n_predicted']} legs){' ' + m['error'] if m['error'] else ''}"
            )
        if len(misses) > max_misses:
            lines.append(f"  ... {len(misses) - max_misses} more in report.json")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "framing_report.json"
    path.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return path
