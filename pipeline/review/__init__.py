"""``legalign review``: a local web app to accept, reject or amend a run's legs, and the
export that feeds the reviewed landmarks back into training (docs/review.md).

Modules: ``config`` (configs/review.yaml), ``results`` (a run's output folder, read only),
``store`` (the durable review state, SQLite in WAL mode), ``reviewed`` (amended landmarks
-> measurements and plan through ``pipeline.api``), ``images`` (preview and crops of the
original films through ``pipeline.read``), ``app`` (the Starlette/FastAPI app),
``export`` (COCO keypoints, results table and DICOM SR of the reviewed legs).

Planning support only: a reviewed plan is still a proposal for a clinician to check.
"""
