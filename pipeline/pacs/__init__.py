"""PACS in and out over DICOMweb: QIDO-RS query, WADO-RS retrieval, STOW-RS store-back.

``legalign pacs URL --out DIR`` (pipeline/commands/pacs.py) drives :func:`run.run_pacs`;
docs/pacs.md describes the behaviour and an Orthanc set-up.
"""
