"""A DICOM Secondary Capture of the overlay picture, in the source's study.

Built with highdicom ``SCImage.from_ref_dataset``: patient and study modules are copied
from the source header, a new series holds the capture.  The overlay has the source's
display orientation, so the source's PatientOrientation is carried over; the pixel
spacing is not (the overlay is reduced and has a text panel): measure on the source.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np

MANUFACTURER = "legalign"


def build_sc(
    rgb: np.ndarray,
    source: Any,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 9802,
) -> Any:
    """The Secondary Capture dataset of an RGB uint8 overlay for a source DICOM header."""

    orientation = getattr(source, "PatientOrientation", None)
    orientation = (
        tuple(str(v) for v in orientation) if orientation and len(orientation) == 2 else None
    )
    kwargs: dict[str, Any] = {}
    laterality = getattr(source, "Laterality", None) or getattr(source, "ImageLaterality", None)
    if laterality in ("R", "L"):
        kwargs["laterality"] = laterality
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        **kwargs,
    )
    if "Laterality" not in sc:
        # General Series Laterality is Type 2C for a paired body part (lower limb) when no
        # Image Laterality is present; a bilateral film has no single value: zero length.
        sc.Laterality = ""
    sc.SeriesDescription = "legalign overlay (planning support only)"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = "Landmarks, axes and values drawn by legalign on a reduced copy"
    return sc
