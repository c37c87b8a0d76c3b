"""The source header as the SR and Secondary Capture may copy it.

highdicom copies the patient and study modules of the source into the derived objects.
Real archives hand it headers that break that: de-identified files without Type 2
attributes (``PatientBirthDate`` absent: highdicom raises AttributeError), values that
violate their VR (a 5000-character PatientID, control characters in a name, a date that
is no date) and identity UIDs that are no UIDs (``=HYPERLINK(...)``, 204 characters).

``derivable_header(source)`` returns a copy fit for copying, and the warnings:

- every top-level value is checked against its VR (pydicom's validators: characters,
  lengths) and for control characters (ESC is allowed: character set switches; CR, LF,
  FF and TAB only in the text VRs LT, ST, UT);
- an invalid Type 2 attribute of the copied modules is left empty, any other invalid
  value is dropped, each with a warning naming the attribute (never its value);
- absent Type 2 attributes of the copied modules are added empty (Type 3 ones are left
  out);
- an invalid identity UID (study, series, SOP instance, SOP class) cannot be dropped or
  replaced without the SR pointing at the wrong image: ``InvalidSourceIdentity`` is
  raised, and the film records the SR and SC as not written, with this reason.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from pydicom import config
from pydicom.charset import python_encoding
from pydicom.valuerep import validate_value

# Type 2 attributes of the Patient and General Study modules, which highdicom copies
TYPE2_COPIED: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
IDENTITY_UIDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
)
_TEXT_VRS = ("LT", "ST", "UT")
_STRING_VRS = (
    "AE",
    "AS",
    "CS",
    "DA",
    "DS",
    "DT",
    "IS",
    "LO",
    "LT",
    "PN",
    "SH",
    "ST",
    "TM",
    "UC",
    "UI",
    "UR",
    "UT",
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_CONTROL_NON_TEXT = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")


class InvalidSourceIdentity(ValueError):
    """An identity UID of the source is not a valid UID: no derived object can reference it."""


def value_problem(elem: Any) -> str | None:
    """Why this element's value may not be copied into a derived object, or None (the
    rules above: the VR's characters and length, control characters, orientation terms,
    known character sets)."""

    vr = elem.VR
    if vr not in _STRING_VRS or elem.value in (None, ""):
        return None
    if elem.keyword == "PatientOrientation":
        terms = elem.value if elem.VM > 1 else [elem.value]
        if len(terms) != 2 or not all(re.fullmatch(r"[APRLHF]+", str(t)) for t in terms):
            return "not two directions of A, P, R, L, H, F"
    if elem.keyword == "SpecificCharacterSet":
        terms = elem.value if elem.VM > 1 else [elem.value]
        unknown = [t for t in terms if t and str(t).strip() not in python_encoding]
        return f"unknown character set {unknown[0]!r}" if unknown else None
    values = elem.value if elem.VM > 1 else [elem.value]
    pattern = _CONTROL if vr in _TEXT_VRS else _CONTROL_NON_TEXT
    for v in values:
        text = str(v)
        if pattern.search(text):
            return f"control characters in {vr} value"
        try:
            validate_value(vr, text, config.RAISE)
        except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError / KeyError
            msg = str(exc).split(". Please see")[0].split(":")[0]
            return msg.strip() or f"invalid {vr} value"
    return None


def derivable_header(source: Any) -> tuple[Any, list[str]]:
    """(a copy of ``source`` the SR / SC builders may copy from, warnings)."""
    ds = copy.deepcopy(source)
    if "PixelData" in ds:
        del ds.PixelData
    warnings: list[str] = []
    for keyword in IDENTITY_UIDS:
        elem = ds[keyword] if keyword in ds else None
        problem = "absent" if elem is None or not str(elem.value or "") else value_problem(elem)
        if problem:
            raise InvalidSourceIdentity(
                f"source {keyword} is not a valid UID ({problem}); a derived object cannot "
                "reference the image"
            )
    for elem in list(ds):
        if elem.tag.group == 0x0002 or elem.VR == "SQ" or elem.keyword in IDENTITY_UIDS:
            continue
        try:
            problem = value_problem(elem)
        except Exception:  # noqa: BLE001 - a value pydicom cannot even convert
            problem = "unreadable value"
        if problem is None:
            continue
        name = elem.keyword or str(elem.tag)
        if name in TYPE2_COPIED:
            ds[elem.tag].value = ""
            warnings.append(f"{name}: {problem}; left empty in the SR and SC")
        else:
            del ds[elem.tag]
            warnings.append(f"{name}: {problem}; not copied into the SR and SC")
    for keyword in TYPE2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds, warnings
