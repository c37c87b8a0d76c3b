"""The annotated film every dataset yields, and the helpers the readers share.

Coordinates follow the project convention: x right, y down, origin at the **centre** of
the top-left pixel, so a point inside the image satisfies ``-0.5 <= x <= W - 0.5`` and
``-0.5 <= y <= H - 0.5``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from legalign.pipeline.errors import InputError, LegalignError
from legalign.pipeline.landmarks import LANDMARK_NAMES, SIDES, LegLandmarks
from legalign.pipeline.radiograph import Radiograph
from legalign.pipeline.read import read_radiograph

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class AnnotatedFilm:
    """One training/evaluation film with its ground-truth landmarks.

    ``image`` is float32, H x W, in [0, 1], bone bright.  ``legs`` holds one
    ``LegLandmarks`` per annotated leg; a landmark that was not annotated (COCO
    ``v=0``, no LabelMe point, no CSV row) is simply absent from ``points`` and must be
    masked in the loss, not treated as an error.  ``spacing_mm`` is the isotropic pixel
    spacing in mm, or None when unknown.  ``source`` is the file path or
    ``"synthetic:<seed>"``.
    """

    source: str
    image: np.ndarray
    legs: list[LegLandmarks]
    spacing_mm: float | None = None
    mirrored: bool | None = None
    meta: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def leg(self, side: str) -> LegLandmarks | None:
        for leg in self.legs:
            if leg.side == side:
                return leg
        return None

    def to_radiograph(
        self, spacing_mm: float | None = None, spacing_source: str | None = None
    ) -> Radiograph:
        """The film as the pipeline's ``Radiograph`` (what the locator takes);
        ``spacing_mm`` overrides the film's own spacing."""
        spacing = self.spacing_mm if spacing_mm is None else spacing_mm
        if spacing is not None and spacing_source is None:
            spacing_source = "dataset" if spacing_mm is None else "user"
        return Radiograph(
            path=self.source,
            pixels=np.ascontiguousarray(self.image, dtype=np.float32),
            spacing_mm=spacing,
            spacing_source=spacing_source,
            mirrored=self.mirrored,
        )


def in_memory(film: AnnotatedFilm) -> AnnotatedFilm:
    """``film`` with its image as a contiguous float32 array (for sampling many times)."""
    image = np.ascontiguousarray(film.image, dtype=np.float32)
    return film if image is film.image else dataclasses.replace(film, image=image)


class FilmDataset(Sequence):
    """Base class: a sequence of ``AnnotatedFilm`` with lazily loaded (optionally cached) images."""

    def __init__(self, cache: bool = False) -> None:
        self.cache = cache
        self._cache: dict[int, Any] = {}

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, index: int) -> AnnotatedFilm:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not isinstance(index, int | np.integer):
            raise TypeError(f"dataset index must be an int, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} films")
        return self._load(index)

    def _cached_image(self, index: int, loader) -> np.ndarray:
        if self.cache and index in self._cache:
            return self._cache[index]
        image = loader()
        if self.cache:
            self._cache[index] = image
        return image


class RecordDataset(FilmDataset):
    """A ``FilmDataset`` over annotation records, one dict per film with its image ``path``."""

    def __init__(self, cache: bool = False) -> None:
        super().__init__(cache=cache)
        self._records: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._records)

    @property
    def paths(self) -> list[Path]:
        return [r["path"] for r in self._records]


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def load_image(path: str | Path, bits_stored: int | None = None) -> np.ndarray:
    """Read a PNG/JPEG/TIFF/BMP or DICOM file as float32 H x W in [0, 1], bone bright.

    Raster files: 8-bit images are divided by 255; 16-bit ones by ``2**bits_stored - 1``
    when ``bits_stored`` is given (e.g. the synthetic generator's 12-16-bit PNGs, whose
    COCO image records carry ``bits_stored``), else by 65535; float images are clipped to
    [0, 1]; colour is converted to grey.  The grey values are taken as stored (bone
    bright is assumed).  DICOM files go through ``pipeline.read`` (modality LUT, VOI
    window, MONOCHROME1 inverted).  Raises ``InputError`` naming the file.
    """

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image file not found")
    if _is_dicom(path):
        return np.ascontiguousarray(read_radiograph(path).pixels, dtype=np.float32)
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise InputError(f"{path}: cannot decode image")
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[:, :, :3]
        if image.shape[2] == 1:
            image = image[:, :, 0]
        else:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.dtype == np.uint8:
        out = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        if bits_stored is not None and not 8 <= int(bits_stored) <= 16:
            raise InputError(f"{path}: bits_stored must be 8-16, got {bits_stored!r}")
        scale = float(2 ** int(bits_stored) - 1) if bits_stored else 65535.0
        out = np.clip(image.astype(np.float32) / scale, 0.0, 1.0)
    elif np.issubdtype(image.dtype, np.floating):
        out = np.clip(image.astype(np.float32), 0.0, 1.0)
    else:
        raise InputError(f"{path}: unsupported pixel type {image.dtype}")
    return np.ascontiguousarray(out)


def check_side(side: object, where: str) -> str:
    if not isinstance(side, str) or side.lower() not in SIDES:
        raise InputError(f"{where}: bad side {side!r} (expected 'right' or 'left')")
    return side.lower()


def check_name(name: object, where: str) -> str:
    if name not in LANDMARK_NAMES:
        raise InputError(f"{where}: unknown landmark name {name!r}")
    return str(name)


def check_inside(
    name: str, x: float, y: float, width: int | None, height: int | None, where: str
) -> None:
    """Raise unless (x, y) is finite and inside the image (pixel-centre convention)."""
    if not (np.isfinite(x) and np.isfinite(y)):
        raise InputError(f"{where}: landmark {name!r} has a non-finite coordinate ({x}, {y})")
    if width is None or height is None:
        return
    if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
        raise InputError(
            f"{where}: landmark {name!r} at ({x:g}, {y:g}) is outside the {width} x {height} image"
        )


def make_leg(
    side: str, points: dict[str, tuple[float, float]], mirrored: bool, where: str
) -> LegLandmarks:
    try:
        # a str from the file: LegLandmarks validates it and makes it a Side
        return LegLandmarks(side=side, points=points, mirrored=bool(mirrored))  # type: ignore[arg-type]
    except LegalignError as exc:
        raise InputError(f"{where}: {exc}") from None


def check_legs_unique(legs: Iterable[LegLandmarks], where: str) -> None:
    seen: set[str] = set()
    for leg in legs:
        if leg.side in seen:
            raise InputError(f"{where}: two legs annotated as side {leg.side!r}")
        seen.add(leg.side)


def check_image_shape(image: np.ndarray, width: int | None, height: int | None, where: str):
    if width is not None and height is not None and image.shape[:2] != (height, width):
        raise InputError(
            f"{where}: image is {image.shape[1]} x {image.shape[0]} but the annotation "
            f"says {width} x {height}"
        )


def check_points_in_image(legs: Iterable[LegLandmarks], image: np.ndarray, where: str) -> None:
    h, w = image.shape[:2]
    for leg in legs:
        for name, (x, y) in leg.points.items():
            check_inside(name, x, y, w, h, where)


def check_spacing(value: object, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        spacing = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{where}: bad pixel spacing {value!r}") from None
    if not (np.isfinite(spacing) and spacing > 0):
        raise InputError(f"{where}: pixel spacing must be positive, got {value!r}")
    return spacing
