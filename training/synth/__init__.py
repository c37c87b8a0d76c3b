"""Synthetic standing full-leg AP radiographs with exact landmarks (see docs/synthetic.md).

``generate_film(seed, size=..., legs=..., spacing_mm=..., alignment=..., distractors=...)``
returns a ``SyntheticFilm``: a uint16 bone-bright image, its pixel spacing, one
``LegLandmarks`` per leg and the parameters used.  ``training.synth.coco`` writes films
as COCO keypoints in the format of ``../shared/data/oai-sample``.
"""

from .anatomy import ALIGN_KEYS, resolve_alignment
from .film import LEGS, SIZES, SyntheticFilm, generate_film

__all__ = [
    "ALIGN_KEYS",
    "LEGS",
    "SIZES",
    "SyntheticFilm",
    "generate_film",
    "resolve_alignment",
]
