"""Contact sheet of synthetic films: 8-bit thumbnails side by side (display only)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

THUMB_HEIGHT = 800


def thumbnail(film: Any, height: int = THUMB_HEIGHT, landmarks: bool = False) -> np.ndarray:
    """The film as an 8-bit image ``height`` pixels tall (area-averaged); grey, or BGR
    with the landmarks drawn as dots when ``landmarks``."""
    img = film.image.astype(np.float32) / float(2**film.bits_stored - 1)
    k = height / img.shape[0]
    width = max(int(round(img.shape[1] * k)), 1)
    small = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    out = np.round(np.clip(small, 0, 1) * 255).astype(np.uint8)
    if landmarks:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
        for leg in film.legs:
            for x, y in leg.points.values():
                cv2.circle(out, (int(round(x * k)), int(round(y * k))), 2, (0, 220, 255), -1)
    return out


def assemble(thumbs: list[np.ndarray], gap: int = 6, per_row: int = 8) -> np.ndarray:
    """Thumbnails in rows of ``per_row``, on black, separated by ``gap`` pixels."""
    if not thumbs:
        return np.zeros((8, 8), np.uint8)
    if any(t.ndim == 3 for t in thumbs):
        thumbs = [t if t.ndim == 3 else cv2.cvtColor(t, cv2.COLOR_GRAY2BGR) for t in thumbs]
    extra = thumbs[0].shape[2:]

    def black(h: int, w: int) -> np.ndarray:
        return np.zeros((h, w, *extra), np.uint8)

    rows = []
    for start in range(0, len(thumbs), per_row):
        row: list[np.ndarray] = []
        for t in thumbs[start : start + per_row]:
            row += [t, black(t.shape[0], gap)]
        rows.append(np.hstack(row[:-1]))
    width = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        padded += [np.hstack([r, black(r.shape[0], width - r.shape[1])]), black(gap, width)]
    return np.vstack(padded[:-1])
