"""Outputs of ``legalign run``: results table, per-image JSON, overlay PNG, DICOM SR and
Secondary Capture, run summary."""
