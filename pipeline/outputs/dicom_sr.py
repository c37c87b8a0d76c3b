"""A DICOM Structured Report (TID 1500 Measurement Report) of one film's result.

Built with highdicom as a Comprehensive 3D SR in the source's study (same
StudyInstanceUID, patient and study modules copied from the source header), new series.

Content:
- per landmark: a planar ROI measurement group (TID 1410) whose image region is an
  SCOORD POINT on the source image, tracking identifier "<side> <landmark name>",
  finding type the landmark (private code), the network confidence as a measurement
  and a "low confidence, not used" qualitative evaluation when it was dropped;
- per leg: a measurement group (TID 1501) with every computed value as a numeric item
  in UCUM units (deg, mm, %), finding site lower limb with laterality, and the osteotomy
  proposal (level, correction angle, gap).
SR graphic data uses (column, row) with the pixel *corner* as origin: 0.5 is added to
legalign's centre-origin coordinates.

Concepts without a standard code use the private coding scheme ``99LEGALIGN``.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from legalign.pipeline import __version__

SCHEME = "99LEGALIGN"
MANUFACTURER = "legalign"

# measurement key -> (code value, meaning, UCUM unit, unit meaning)
MEASUREMENT_CODES: dict[str, tuple[str, str, str, str]] = {
    "hka_deg": ("HKA", "Hip-knee-ankle angle (varus negative)", "deg", "degree"),
    "mad_mm": ("MAD", "Mechanical axis deviation (medial positive)", "mm", "millimeter"),
    "wbl_ratio_pct": ("WBLR", "Weight-bearing line ratio on tibial plateau", "%", "percent"),
    "mldfa_deg": ("MLDFA", "Mechanical lateral distal femoral angle", "deg", "degree"),
    "mpta_deg": ("MPTA", "Medial proximal tibial angle", "deg", "degree"),
    "jlca_deg": ("JLCA", "Joint line convergence angle", "deg", "degree"),
    "mlpfa_deg": ("MLPFA", "Mechanical lateral proximal femoral angle", "deg", "degree"),
    "atfa_deg": ("ATFA", "Anatomical tibiofemoral angle", "deg", "degree"),
    "ama_deg": ("AMA", "Anatomical-mechanical angle of the femur", "deg", "degree"),
    "femur_length_mm": ("FEMLEN", "Femoral mechanical length", "mm", "millimeter"),
    "tibia_length_mm": ("TIBLEN", "Tibial mechanical length", "mm", "millimeter"),
    "leg_length_mm": ("LEGLEN", "Leg mechanical length", "mm", "millimeter"),
}
PLAN_CODES: dict[str, tuple[str, str, str, str]] = {
    "correction_deg": ("OSTCORR", "Proposed osteotomy correction angle", "deg", "degree"),
    "gap_mm": ("OSTGAP", "Proposed osteotomy wedge gap", "mm", "millimeter"),
    "target_wbl_pct": ("OSTTGT", "Target weight-bearing line ratio", "%", "percent"),
}
LANDMARK_MEANINGS: dict[str, str] = {
    "femoral_head": "Femoral head centre",
    "femoral_condyle_medial": "Medial femoral condyle distal point",
    "femoral_condyle_lateral": "Lateral femoral condyle distal point",
    "tibial_plateau_medial": "Medial tibial plateau edge",
    "tibial_plateau_lateral": "Lateral tibial plateau edge",
    "knee_centre": "Knee centre",
    "ankle_centre": "Ankle centre",
    "greater_trochanter": "Greater trochanter tip",
    "femoral_shaft_proximal": "Femoral shaft midpoint proximal",
    "femoral_shaft_distal": "Femoral shaft midpoint distal",
    "tibial_shaft_proximal": "Tibial shaft midpoint proximal",
    "tibial_shaft_distal": "Tibial shaft midpoint distal",
}
LANDMARK_FLAGS: dict[str, tuple[str, str]] = {
    "low_confidence": ("LOWCONF", "Low confidence, measured from with a wider error radius"),
    "outside_film": ("OUTSIDE", "Outside the film, not used for measurement"),
    "unusable": ("UNUSABLE", "No heatmap peak, not used for measurement"),
}
_LANDMARK_VALUES = {
    "femoral_head": "LM-FH",
    "femoral_condyle_medial": "LM-FCM",
    "femoral_condyle_lateral": "LM-FCL",
    "tibial_plateau_medial": "LM-TPM",
    "tibial_plateau_lateral": "LM-TPL",
    "knee_centre": "LM-KC",
    "ankle_centre": "LM-AC",
    "greater_trochanter": "LM-GT",
    "femoral_shaft_proximal": "LM-FSP",
    "femoral_shaft_distal": "LM-FSD",
    "tibial_shaft_proximal": "LM-TSP",
    "tibial_shaft_distal": "LM-TSD",
}


def _code(value: str, meaning: str) -> Any:

    return hd.sr.CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


def _unit(ucum: str, meaning: str) -> Any:

    return hd.sr.CodedConcept(value=ucum, scheme_designator="UCUM", meaning=meaning)


def build_sr(
    result: dict[str, Any],
    source: Any,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 9801,
    review: dict[str, dict[str, Any]] | None = None,
    verifier: str | None = None,
) -> Any:
    """The SR dataset for an image result dict and its source DICOM header.

    ``review`` (``legalign review --export``): side -> {"state": accepted | amended |
    rejected | in_progress | unreviewed, "reason": reject reason or None, "amended":
    [landmark names placed by the reviewer]}; recorded as a "Review status" (and "Reject
    reason") evaluation per leg and an "Amended by reviewer" flag per moved landmark.
    ``verifier``: the reviewer's name; the SR is then marked VERIFIED by that observer.
    """
    report = measurement_report(result, source, review=review)
    sr = sr_document(
        report,
        source,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        verifier=verifier,
    )
    sr.SeriesDescription = "legalign alignment measurements (planning support only)"
    return sr


def sr_kwargs(
    *, series_instance_uid: str, series_number: int, sop_instance_uid: str, verifier: str | None
) -> dict[str, Any]:
    """The Comprehensive 3D SR document arguments besides evidence and content."""
    return {
        "series_instance_uid": series_instance_uid,
        "series_number": series_number,
        "sop_instance_uid": sop_instance_uid,
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "is_complete": True,
        "is_final": False,
        "is_verified": verifier is not None,
        "verifying_observer_name": verifier,
        "verifying_organization": "legalign review" if verifier is not None else None,
    }


def sr_document(
    report: Any,
    source: Any,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    verifier: str | None = None,
) -> Any:
    """``hd.sr.Comprehensive3DSR(evidence=[source], content=report, ...)`` without its
    deep copy of the content tree (the same dataset, built in a fraction of the time).

    highdicom's constructor deep-copies the whole content tree and parses the copy into
    typed content items only to keep them as ``sr.content``, then walks the tree to check
    that every referenced image is in the evidence; the dataset it writes holds the
    original items.  For a film's report (about 900 nested items) that took 3/4 of the
    SR's build time.  Here the document is built by highdicom around the root container
    *without* its children (header, evidence, flags, observer: all highdicom's), then the
    root's children are attached as highdicom does (``sr[tag] = root[tag]``) and
    ``sr.content`` is the report itself (already typed items).  The evidence check is
    kept: every image the tree references must be the source (the only evidence).
    tests/test_outputs.py compares this document with highdicom's own constructor.
    """
    root = report[0]
    referenced = _referenced_sop_instances(root)
    if not referenced <= {str(source.SOPInstanceUID)}:
        raise ValueError(
            "the SR content references images that are not its evidence: "
            + ", ".join(sorted(referenced - {str(source.SOPInstanceUID)}))
        )
    shell = Dataset()
    for elem in root:
        if elem.keyword != "ContentSequence":
            shell.add(elem)
    shell.ContentSequence = []
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=shell,
        **sr_kwargs(
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            verifier=verifier,
        ),
    )
    for elem in root:
        sr[elem.tag] = elem
    # ``sr.content`` (a private attribute in highdicom 0.28; the test checks the property)
    sr._content = hd.sr.ContentSequence([root], is_root=True)
    _mark_content_encoding(sr)
    return sr


def _mark_content_encoding(sr: Any) -> None:
    """Declare every content item's encoding (explicit VR little endian, the SR's transfer
    syntax) so that pydicom's writer does not re-run its ambiguous-VR pass on each item.

    pydicom runs that pass (``correct_ambiguous_vr``, recursive) on every dataset whose
    original encoding differs from the one it is written in: a freshly built dataset has
    none, so the whole subtree of each of the ~900 nested items was walked again, about
    half of the SR's encoding time.  ``set_original_encoding`` is pydicom's way of saying
    a dataset needs no such fix-up; it is set only on content items (built here, no raw
    elements) without an ambiguous-VR element of their own, so the pass still runs once
    over the whole document from its top level and on any item that needs it.  Another
    transfer syntax at save time differs from the declared one and gets the full pass.
    The encoded bytes are unchanged (tests/test_outputs.py).
    """
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        if not any(" or " in elem.VR for elem in item):
            item.set_original_encoding(False, True, item._character_set)
        for elem in item:
            if elem.VR == "SQ":
                stack.extend(elem.value)


def _referenced_sop_instances(item: Any) -> set[str]:
    """The SOP instance UIDs of every IMAGE / COMPOSITE item under ``item``."""
    found: set[str] = set()
    stack = list(item.get("ContentSequence") or [])
    while stack:
        it = stack.pop()
        if it.get("ValueType") in ("IMAGE", "COMPOSITE"):
            found.add(str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        stack.extend(it.get("ContentSequence") or [])
    return found


def measurement_report(
    result: dict[str, Any],
    source: Any,
    *,
    review: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """The TID 1500 Measurement Report content of an image result (see build_sr)."""

    algorithm = hd.sr.AlgorithmIdentification(name="legalign", version=__version__)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="legalign", manufacturer_name=MANUFACTURER
        ),
    )
    context = hd.sr.ObservationContext(observer_device_context=observer)
    source_region = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
    )
    lower_limb = hd.sr.CodedConcept("61685007", "SCT", "Lower limb")
    laterality = {
        "right": hd.sr.CodedConcept("24028007", "SCT", "Right"),
        "left": hd.sr.CodedConcept("7771000", "SCT", "Left"),
    }
    groups: list[Any] = []
    for leg in result.get("legs") or []:
        level_pct = f"{100 * float(leg.get('interval_level') or 0.9):g}"
        side = leg["side"]
        site = hd.sr.FindingSite(anatomic_location=lower_limb, laterality=laterality[side])
        for name, lm in (leg.get("landmarks") or {}).items():
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POINT,
                graphic_data=np.array([[lm["x"] + 0.5, lm["y"] + 0.5]], dtype=float),
                source_image=source_region,
            )
            measurements = []
            if lm.get("confidence") is not None:
                measurements.append(
                    hd.sr.Measurement(
                        name=_code("LMCONF", "Landmark detection confidence"),
                        value=float(lm["confidence"]),
                        unit=_unit("1", "no units"),
                    )
                )
            radius_mm = lm.get("error_radius_mm")
            radius = radius_mm if radius_mm is not None else lm.get("error_radius_px")
            if radius is not None:
                measurements.append(
                    hd.sr.Measurement(
                        name=_code("LMERR", f"Landmark {level_pct} % error radius"),
                        value=float(radius),
                        unit=(
                            _unit("mm", "millimeter")
                            if radius_mm is not None
                            else _unit("{pixel}", "pixel")
                        ),
                    )
                )
            evaluations = []
            if name in ((review or {}).get(side) or {}).get("amended", ()):
                evaluations.append(
                    hd.sr.QualitativeEvaluation(
                        name=_code("LMFLAG", "Landmark flag"),
                        value=_code("AMENDED", "Placed by a reviewer"),
                    )
                )
            elif lm.get("flag") in LANDMARK_FLAGS:
                code, meaning = LANDMARK_FLAGS[lm["flag"]]
                evaluations.append(
                    hd.sr.QualitativeEvaluation(
                        name=_code("LMFLAG", "Landmark flag"), value=_code(code, meaning)
                    )
                )
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=hd.UID(), identifier=f"{side} {name}"
                    ),
                    referenced_region=region,
                    finding_type=_code(_LANDMARK_VALUES[name], LANDMARK_MEANINGS[name]),
                    measurements=measurements or None,
                    qualitative_evaluations=evaluations or None,
                )
            )
        measurements = []
        meas = leg.get("measurements") or {}
        intervals = leg.get("intervals") or {}
        for key, (value, meaning, ucum, umeaning) in MEASUREMENT_CODES.items():
            if meas.get(key) is not None:
                measurements.append(
                    hd.sr.Measurement(
                        name=_code(value, meaning),
                        value=float(meas[key]),
                        unit=_unit(ucum, umeaning),
                    )
                )
                for end, (lim, word) in enumerate((("LO", "lower"), ("HI", "upper"))):
                    if key in intervals:
                        measurements.append(
                            hd.sr.Measurement(
                                name=_code(
                                    f"{value}-{lim}", f"{value} {level_pct} % interval {word} limit"
                                ),
                                value=float(intervals[key][end]),
                                unit=_unit(ucum, umeaning),
                            )
                        )
        plan = leg.get("plan") or {}
        for key, (value, meaning, ucum, umeaning) in PLAN_CODES.items():
            if plan.get(key) is not None and plan.get("level"):
                measurements.append(
                    hd.sr.Measurement(
                        name=_code(value, meaning),
                        value=float(plan[key]),
                        unit=_unit(ucum, umeaning),
                    )
                )
        evaluations = []
        if leg.get("review"):
            evaluations.append(
                hd.sr.QualitativeEvaluation(
                    name=_code("REVIEW", "Leg flagged for review"),
                    value=_code("REVIEW-WIDE", "Wide HKA interval"),
                )
            )
        if meas.get("category"):
            evaluations.append(
                hd.sr.QualitativeEvaluation(
                    name=_code("ALIGNCAT", "Coronal alignment category"),
                    value=_code(f"CAT-{meas['category'].upper()}", meas["category"]),
                )
            )
        if plan.get("level"):
            evaluations.append(
                hd.sr.QualitativeEvaluation(
                    name=_code("OSTLEVEL", "Proposed osteotomy level (planning support only)"),
                    value=_code(f"LVL-{plan['level']}", plan["level"]),
                )
            )
        rev = (review or {}).get(side)
        if rev is not None:
            evaluations.append(
                hd.sr.QualitativeEvaluation(
                    name=_code("REVSTAT", "Review status"),
                    value=_code(f"REV-{rev['state'].upper()}", rev["state"].replace("_", " ")),
                )
            )
            if rev.get("reason"):
                evaluations.append(
                    hd.sr.QualitativeEvaluation(
                        name=_code("REVREJ", "Reject reason"),
                        value=_code(rev.get("reason_code") or "REJ", str(rev["reason"])[:64]),
                    )
                )
        if measurements or evaluations:
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=hd.UID(), identifier=f"{side} leg alignment"
                    ),
                    finding_sites=[site],
                    algorithm_id=algorithm,
                    measurements=measurements or None,
                    qualitative_evaluations=evaluations or None,
                )
            )
    return hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=hd.sr.CodedConcept("39714003", "SCT", "Skeletal X-ray of lower limb"),
        imaging_measurements=groups or None,
        referenced_images=None if groups else [source],
    )
