"""The framing test set: real single-leg films re-framed the way archives frame them.

``build_framing_set(sources, out_dir, cfg)`` writes, from each source film (a 128 x 1024
8-bit right leg of ``../shared/data/oai-sample`` val or ``../shared/data/oai-readers``):

- ``letterbox``: the film's exposed region shrunk so that it fills 50 / 70 / 85 % of the
  frame height, centred and off-centre, on black;
- ``native``: the film upsampled to about 0.15 mm/px and written as 16-bit DICOM with
  PixelSpacing, alternating two transfer syntaxes;
- ``bilateral``: two different legs side by side, the second mirrored into a left leg
  (standard AP display: the right leg on the viewer's left), a gap of 0-40 px, with and
  without a shared dark pelvis region across the gap;
- ``partial``: the hip or the ankle cut off at the film edge (labelled sources only: the
  cut is placed from the labelled femoral head / ankle centre);
- ``rotated``: rotated by 2-8 deg about the film centre, canvas enlarged, black fill.

Every variant records, per leg, its source (dataset and file), the 2x3 affine map from
source pixels to variant pixels, the expected side, the landmarks expected outside the
film and, for oai-readers sources, the readers' HKA.  So the reference of every leg is
known: the model's HKA on the original film, the readers' HKA, the labels.  Everything
depends only on the source films and ``cfg`` (seeded); ``framing.json`` is the manifest.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from legalign.models.crops import apply_affine, scale_matrix, warp
from legalign.pipeline.config_schema import ConfigError, load_config
from legalign.training.synth.dicom_archive import TRANSFER_SYNTAXES, DicomOptions, write_film_dicom

KINDS = ("letterbox", "native", "bilateral", "partial", "rotated")
MANIFEST = "framing.json"


# --------------------------------------------------------------------------- config
@dataclass
class LetterboxConfig:
    fills: list[float]
    off_centre: list[float]
    sources: int

    def validate(self) -> None:
        if not self.fills or not all(0.1 <= f <= 1.0 for f in self.fills):
            raise ConfigError(f"fills: each must be in [0.1, 1], got {self.fills}")
        if not self.off_centre or not all(0.0 <= f <= 1.0 for f in self.off_centre):
            raise ConfigError(f"off_centre: each must be in [0, 1], got {self.off_centre}")
        _check_sources(self.sources)


@dataclass
class NativeConfig:
    spacing_mm: float
    transfer_syntaxes: list[str]
    sources: int

    def validate(self) -> None:

        if not 0.05 <= self.spacing_mm <= 1.0:
            raise ConfigError(f"spacing_mm: must be in [0.05, 1], got {self.spacing_mm}")
        bad = [t for t in self.transfer_syntaxes if t not in TRANSFER_SYNTAXES]
        if not self.transfer_syntaxes or bad:
            raise ConfigError(
                f"transfer_syntaxes: each must be one of {list(TRANSFER_SYNTAXES)}, got "
                f"{self.transfer_syntaxes}"
            )
        _check_sources(self.sources)


@dataclass
class BilateralConfig:
    gap_px: list[int]
    pelvis_rows: float
    sources: int

    def validate(self) -> None:
        if len(self.gap_px) != 2 or not 0 <= self.gap_px[0] <= self.gap_px[1]:
            raise ConfigError(f"gap_px: must be [lo, hi] with 0 <= lo <= hi, got {self.gap_px}")
        if not 0.0 < self.pelvis_rows < 0.5:
            raise ConfigError(f"pelvis_rows: must be in (0, 0.5), got {self.pelvis_rows}")
        _check_sources(self.sources)


@dataclass
class PartialConfig:
    cut_beyond: float
    sources: int

    def validate(self) -> None:
        if not 0.0 < self.cut_beyond < 0.5:
            raise ConfigError(f"cut_beyond: must be in (0, 0.5), got {self.cut_beyond}")
        _check_sources(self.sources)


@dataclass
class RotationConfig:
    max_deg: float
    min_deg: float
    sources: int

    def validate(self) -> None:
        if not 0.0 <= self.min_deg <= self.max_deg <= 45.0:
            raise ConfigError(
                f"min_deg/max_deg: need 0 <= min_deg <= max_deg <= 45, got "
                f"{self.min_deg}/{self.max_deg}"
            )
        _check_sources(self.sources)


@dataclass
class FramingConfig:
    seed: int
    source_spacing_mm: float
    content_threshold: float
    letterbox: LetterboxConfig
    native: NativeConfig
    bilateral: BilateralConfig
    partial: PartialConfig
    rotation: RotationConfig

    def validate(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed: must be non-negative, got {self.seed}")
        if not self.source_spacing_mm > 0:
            raise ConfigError(f"source_spacing_mm: must be positive, got {self.source_spacing_mm}")
        if not 0.0 <= self.content_threshold < 1.0:
            raise ConfigError(f"content_threshold: must be in [0, 1), got {self.content_threshold}")


def _check_sources(n: int) -> None:
    if n < 0:
        raise ConfigError(f"sources: must be >= 0 (0: every source film), got {n}")


def load_framing_config(path: str | Path | None = None) -> FramingConfig:
    """``configs/framing.yaml``, with ``path`` merged over it."""
    return load_config(FramingConfig, "framing.yaml", path)


# --------------------------------------------------------------------------- sources
@dataclass
class SourceFilm:
    """One real film the set is made from.  ``landmarks``: labels, when the dataset has
    them (image pixels); ``readers_hka``: the readers' HKA, when the dataset has it."""

    dataset: str  # "oai-sample" or "oai-readers"
    file: str  # path relative to the dataset root
    path: Path
    side: str = "right"
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)
    readers_hka: float | None = None

    @property
    def key(self) -> str:
        return f"{self.dataset}:{self.file}"


def oai_sample_sources(root: str | Path, split: str = "val") -> list[SourceFilm]:
    """The films of one oai-sample split with their labelled landmarks."""
    root = Path(root)
    ann = root / "annotations" / f"{split}.json"
    try:
        coco = json.loads(ann.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{ann}: cannot read the oai-sample annotations ({exc})") from None
    names = {c["id"]: c["keypoints"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    out = []
    for a in coco["annotations"]:
        im = images[a["image_id"]]
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        pts = {
            n: (float(x), float(y))
            for n, (x, y, v) in zip(names[a["category_id"]], kp, strict=True)
            if v > 0
        }
        out.append(
            SourceFilm(
                dataset="oai-sample",
                file=f"images/{im['file_name']}",
                path=root / "images" / im["file_name"],
                side=a.get("side", "right"),
                landmarks=pts,
            )
        )
    return sorted(out, key=lambda s: s.file)


def oai_readers_sources(root: str | Path) -> list[SourceFilm]:
    """The oai-readers films with the readers' HKA (``readers.csv``: file, side, hka_deg)."""
    root = Path(root)
    table = root / "readers.csv"
    try:
        with table.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ConfigError(f"{table}: cannot read ({exc.strerror or exc})") from None
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            hka = float(row["hka_deg"]) if row["hka_deg"] not in ("", None) else None
            name, side = row["file"], row["side"]
        except (KeyError, ValueError):
            raise ConfigError(f"{table}: line {i}: need file, side, hka_deg") from None
        out.append(
            SourceFilm(
                dataset="oai-readers",
                file=f"images/{name}",
                path=root / "images" / name,
                side=side,
                readers_hka=hka,
            )
        )
    return sorted(out, key=lambda s: s.file)


def read_source(src: SourceFilm) -> np.ndarray:
    """The film as float32 in [0, 1] (8-bit greyscale JPEG/PNG)."""

    img = cv2.imread(str(src.path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ConfigError(f"{src.path}: cannot read the source film")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return img.astype(np.float32) / scale


# --------------------------------------------------------------------------- geometry
def content_box(img: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends: the rows and columns that are exposed (their 99th
    percentile above ``threshold``), i.e. the film without its black borders."""
    rows = np.flatnonzero(np.percentile(img, 99, axis=1) > threshold)
    cols = np.flatnonzero(np.percentile(img, 99, axis=0) > threshold)
    if len(rows) == 0 or len(cols) == 0:
        return 0, 0, img.shape[1], img.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def place_matrix(s: float, box_x0: float, box_y0: float, ox: float, oy: float) -> np.ndarray:
    """Source -> variant map scaling by ``s`` (pixel-centre convention) so that the left/top
    edge of source pixel (box_x0, box_y0) lands on the variant's pixel edge (ox, oy)."""
    return np.array(
        [
            [s, 0.0, s * (0.5 - box_x0) - 0.5 + ox],
            [0.0, s, s * (0.5 - box_y0) - 0.5 + oy],
        ]
    )


def mirror_matrix(width: int) -> np.ndarray:
    """x -> (width - 1) - x (pixel centres)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


def rotation_matrix(h: int, w: int, angle_deg: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Rotation by ``angle_deg`` about the film centre into a canvas that holds it all."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    out_w = int(math.ceil(abs(w * c) + abs(h * s)))
    out_h = int(math.ceil(abs(w * s) + abs(h * c)))
    m = np.array([[c, -s], [s, c]])
    centre_in = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    centre_out = np.array([(out_w - 1) / 2.0, (out_h - 1) / 2.0])
    t = centre_out - m @ centre_in
    return np.concatenate([m, t[:, None]], axis=1), (out_h, out_w)


def _warp(img: np.ndarray, A: np.ndarray, shape: tuple[int, int]) -> np.ndarray:

    return np.clip(warp(img, A, shape), 0.0, 1.0)


def _outside(points: dict[str, tuple[float, float]], A, shape) -> list[str]:
    """Names of labelled landmarks that ``A`` maps outside a film of ``shape``."""

    h, w = shape
    out = []
    for name, xy in points.items():
        x, y = apply_affine(A, np.asarray(xy))
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            out.append(name)
    return sorted(out)


# --------------------------------------------------------------------------- variants
@dataclass
class VariantLeg:
    source: str  # SourceFilm.key
    side: str
    matrix: list[list[float]]  # source pixels -> variant pixels
    outside: list[str] = field(default_factory=list)
    readers_hka: float | None = None


@dataclass
class Variant:
    file: str  # relative to the set's folder
    kind: str
    params: dict[str, Any]
    legs: list[VariantLeg]
    spacing_mm: float | None = None


def _leg(src: SourceFilm, A: np.ndarray, side: str, shape, mirrored: bool = False) -> VariantLeg:
    return VariantLeg(
        source=src.key,
        side=side,
        matrix=np.round(A, 9).tolist(),
        outside=_outside(src.landmarks, A, shape),
        readers_hka=src.readers_hka,
    )


def _stem(src: SourceFilm) -> str:
    return f"{'val' if src.dataset == 'oai-sample' else 'readers'}_{Path(src.file).stem}"


def _pick(sources: list[SourceFilm], n: int) -> list[int]:
    """``n`` indices spread evenly over ``sources`` (0: all)."""
    if n <= 0 or n >= len(sources):
        return list(range(len(sources)))
    return sorted({int(round(i * (len(sources) - 1) / max(n - 1, 1))) for i in range(n)})


def _write_png(path: Path, img: np.ndarray) -> None:

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)):
        raise ConfigError(f"{path}: could not write PNG")


def letterbox_variants(src, img, cfg: FramingConfig, rng) -> list[tuple[Variant, np.ndarray]]:
    h, w = img.shape
    x0, y0, x1, y1 = content_box(img, cfg.content_threshold)
    out = []
    for fill in cfg.letterbox.fills:
        s = fill * h / (y1 - y0)
        cw, ch = (x1 - x0) * s, (y1 - y0) * s
        W = max(w, int(math.ceil(cw)) + 8)
        positions = {
            "centre": (0.5, 0.5),
            "off": (
                float(rng.choice(cfg.letterbox.off_centre)),
                float(rng.choice(cfg.letterbox.off_centre)),
            ),
        }
        for tag, (fx, fy) in positions.items():
            ox, oy = fx * (W - cw), fy * (h - ch)
            A = place_matrix(s, x0, y0, ox, oy)
            v = Variant(
                file=f"letterbox/{_stem(src)}_fill{round(fill * 100):02d}_{tag}.png",
                kind="letterbox",
                params={"fill": fill, "position": [fx, fy], "scale": s},
                legs=[_leg(src, A, src.side, (h, W))],
            )
            out.append((v, _warp(img, A, (h, W))))
    return out


def rotated_variant(src, img, cfg: FramingConfig, rng) -> tuple[Variant, np.ndarray]:
    mag = float(rng.uniform(cfg.rotation.min_deg, cfg.rotation.max_deg))
    angle = mag if rng.random() < 0.5 else -mag
    A, shape = rotation_matrix(img.shape[0], img.shape[1], angle)
    v = Variant(
        file=f"rotated/{_stem(src)}_rot{angle:+.1f}.png",
        kind="rotated",
        params={"angle_deg": round(angle, 4)},
        legs=[_leg(src, A, src.side, shape)],
    )
    return v, _warp(img, A, shape)


def partial_variants(src, img, cfg: FramingConfig) -> list[tuple[Variant, np.ndarray]]:
    """Hip cut (rows above the head + cut_beyond x femur removed) and ankle cut."""
    lm = src.landmarks
    if not all(n in lm for n in ("femoral_head", "knee_centre", "ankle_centre")):
        return []
    h, w = img.shape
    hy, ky, ay = lm["femoral_head"][1], lm["knee_centre"][1], lm["ankle_centre"][1]
    k = cfg.partial.cut_beyond
    out = []
    top = int(math.ceil(hy + k * (ky - hy)))
    bottom = int(math.floor(ay - k * (ay - ky)))
    for tag, (r0, r1) in {"hip": (top, h), "ankle": (0, bottom + 1)}.items():
        A = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -float(r0)]])
        shape = (r1 - r0, w)
        v = Variant(
            file=f"partial/{_stem(src)}_no_{tag}.png",
            kind="partial",
            params={"cut": tag, "rows": [r0, r1]},
            legs=[_leg(src, A, src.side, shape)],
        )
        out.append((v, img[r0:r1].copy()))
    return out


def bilateral_variant(
    right: SourceFilm, rimg, left: SourceFilm, limg, cfg: FramingConfig, rng, pelvis: bool
) -> tuple[Variant, np.ndarray]:
    """``right`` as it is (a right leg on the viewer's left), ``left`` mirrored into a left
    leg on the viewer's right, ``gap`` px apart; with ``pelvis`` a dark band joins the two
    films across the gap and above the hips, as a bilateral film's pelvis would."""
    lo, hi = cfg.bilateral.gap_px
    gap = int(rng.integers(lo, hi + 1))
    (h1, w1), (h2, w2) = rimg.shape, limg.shape
    H, W = max(h1, h2), w1 + gap + w2
    canvas = np.zeros((H, W), np.float32)
    canvas[:h1, :w1] = rimg
    mirrored = limg[:, ::-1]
    canvas[:h2, w1 + gap :] = mirrored
    A_right = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    A_left = mirror_matrix(w2)
    A_left[0, 2] += w1 + gap
    if pelvis:
        # the soft-tissue level at the two films' inner content edges, in their pelvis rows,
        # spread across everything between the two exposed regions (gap and black borders)
        t = cfg.content_threshold
        rx0, ry0, rx1, ry1 = content_box(rimg, t)
        lx0, ly0, lx1, ly1 = content_box(mirrored, t)
        top = min(ry0, ly0)
        rows = int(round(cfg.bilateral.pelvis_rows * max(ry1 - ry0, ly1 - ly0)))
        edge = np.concatenate(
            [
                rimg[ry0 : ry0 + rows, max(rx1 - 6, rx0) : rx1].ravel(),
                mirrored[ly0 : ly0 + rows, lx0 : lx0 + 6].ravel(),
            ]
        )
        level = 0.6 * float(np.median(edge)) if edge.size else 0.0
        band = level * np.clip(1.2 - np.linspace(0.0, 1.2, rows), 0.0, 1.0)[:, None]
        c0, c1 = rx1, w1 + gap + lx0
        if c1 > c0 and rows > 0:
            seg = canvas[top : top + rows, c0:c1]
            seg[:] = np.maximum(seg, band[: seg.shape[0]])
    v = Variant(
        file=f"bilateral/{_stem(right)}__{_stem(left)}_gap{gap}{'_pelvis' if pelvis else ''}.png",
        kind="bilateral",
        params={"gap_px": gap, "pelvis": pelvis},
        legs=[
            _leg(right, A_right, right.side, (H, W)),
            _leg(left, A_left, "left" if left.side == "right" else "right", (H, W)),
        ],
    )
    return v, canvas


@dataclass
class _NativeFilm:
    """What ``training.synth.dicom_archive.write_film_dicom`` needs (its ``FilmLike``)."""

    image: np.ndarray
    spacing_mm: float
    legs: list[Any]
    bits_stored: int = 16
    mirrored: bool = False


@dataclass
class _Side:
    side: str


def native_variant(src, img, cfg: FramingConfig, index: int) -> tuple[Variant, _NativeFilm]:

    s = cfg.source_spacing_mm / cfg.native.spacing_mm
    h, w = img.shape
    shape = (int(round(h * s)), int(round(w * s)))
    A = scale_matrix(s)

    up = cv2.warpAffine(img, A, (shape[1], shape[0]), flags=cv2.INTER_CUBIC)
    pixels = np.rint(np.clip(up, 0, 1) * 65535).astype(np.uint16)
    syntax = cfg.native.transfer_syntaxes[index % len(cfg.native.transfer_syntaxes)]
    v = Variant(
        file=f"native/{_stem(src)}_{syntax}.dcm",
        kind="native",
        params={"transfer_syntax": syntax, "scale": s},
        legs=[_leg(src, A, src.side, shape)],
        spacing_mm=cfg.native.spacing_mm,
    )
    return v, _NativeFilm(pixels, cfg.native.spacing_mm, [_Side(src.side)])


def _write_dicom(path: Path, film: _NativeFilm, syntax: str, index: int, seed: int) -> None:

    # CR carries PixelSpacing alone; DX needs ImagerPixelSpacing too ("both").
    opts = DicomOptions(
        modality="CR" if index % 2 == 0 else "DX",
        photometric="MONOCHROME2",
        bits_stored=16,
        transfer_syntax=syntax,
        spacing_tags="pixel" if index % 2 == 0 else "both",
        magnification=1.0,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_film_dicom(path, film, opts, index=index, seed=seed)


# --------------------------------------------------------------------------- the set
def build_framing_set(
    sources: dict[str, list[SourceFilm]],
    out_dir: str | Path,
    cfg: FramingConfig,
    roots: dict[str, str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write every variant under ``out_dir`` and the manifest ``framing.json``.

    ``sources``: dataset name -> its films (see ``oai_sample_sources`` and
    ``oai_readers_sources``).  Returns the manifest.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variants: list[Variant] = []
    all_sources = [s for name in sorted(sources) for s in sources[name]]
    cache: dict[str, np.ndarray] = {}

    def image(src: SourceFilm) -> np.ndarray:
        if src.key not in cache:
            cache[src.key] = read_source(src)
        return cache[src.key]

    def rng_for(i: int, kind: str) -> np.random.Generator:
        return np.random.default_rng([cfg.seed, i, KINDS.index(kind)])

    def emit(v: Variant, img: np.ndarray) -> None:
        _write_png(out / v.file, img)
        variants.append(v)

    iterator = enumerate(all_sources)
    if progress:
        iterator = tqdm(list(iterator), desc="framing", unit="film")
    lb = set(_pick(all_sources, cfg.letterbox.sources))
    rot = set(_pick(all_sources, cfg.rotation.sources))
    nat = _pick(all_sources, cfg.native.sources)
    labelled = [i for i, s in enumerate(all_sources) if s.landmarks]
    part = {labelled[j] for j in _pick([all_sources[i] for i in labelled], cfg.partial.sources)}
    for i, src in iterator:
        img = image(src)
        if i in lb:
            for v, im in letterbox_variants(src, img, cfg, rng_for(i, "letterbox")):
                emit(v, im)
        if i in rot:
            emit(*rotated_variant(src, img, cfg, rng_for(i, "rotated")))
        if i in part:
            for v, im in partial_variants(src, img, cfg):
                emit(v, im)
        if i in nat:
            j = nat.index(i)
            v, film = native_variant(src, img, cfg, j)
            _write_dicom(out / v.file, film, v.params["transfer_syntax"], j, cfg.seed)
            variants.append(v)
    # bilateral: pairs (i, i + n/2) within each dataset, so the two legs differ
    for name in sorted(sources):
        films = sources[name]
        n = len(films)
        if n < 2:
            continue
        for j, i in enumerate(_pick(films, cfg.bilateral.sources)):
            other = films[(i + n // 2) % n]
            if other.key == films[i].key:
                continue
            rng = np.random.default_rng([cfg.seed, i, KINDS.index("bilateral"), len(name)])
            v, im = bilateral_variant(
                films[i], image(films[i]), other, image(other), cfg, rng, pelvis=j % 2 == 1
            )
            emit(v, im)
    manifest = {
        "version": 1,
        "description": "legalign framing test set (training/framing.py); every leg maps "
        "back to its source film with 'matrix' (source pixels -> variant pixels)",
        "config": _config_dict(cfg),
        "roots": dict(roots or {}),
        "sources": {
            s.key: {
                "dataset": s.dataset,
                "file": s.file,
                "side": s.side,
                "readers_hka": s.readers_hka,
                "landmarks": {k: list(v) for k, v in s.landmarks.items()},
            }
            for s in all_sources
        },
        "variants": [_variant_dict(v) for v in variants],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def _config_dict(cfg: Any) -> Any:

    return dataclasses.asdict(cfg)


def _variant_dict(v: Variant) -> dict[str, Any]:

    return dataclasses.asdict(v)


def load_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the framing manifest ({exc.strerror})") from None
    except ValueError:
        raise ConfigError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict) or "variants" not in data or "sources" not in data:
        raise ConfigError(f"{path}: not a framing manifest (needs 'sources' and 'variants')")
    return data
