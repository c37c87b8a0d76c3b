"""Contact sheet of synthetic films: 8-bit thumbnails side by side (display only)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

THUMB_HEIGHT = 720


def thumbnail(film: Any, height: int = THUMB_HEIGHT, landmarks: bool = False) -> np.ndarray:
    """The film as an 8-bit BGR image ``height`` pixels tall (area-averaged)."""
    img = film.image.astype(np.float32) / float(2**film.bits_stored - 1)
    k = height / img.shape[0]
    width = max(int(round(img.shape[1] * k)), 1)
    small = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    out = cv2.cvtColor(np.round(np.clip(small, 0, 1) * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    if landmarks:
        for leg in film.legs:
            for x, y in leg.points.values():
                cv2.circle(out, (int(round(x * k)), int(round(y * k))), 2, (0, 220, 255), -1)
    return out


def assemble(thumbs: list[np.ndarray], gap: int = 6, per_row: int = 6) -> np.ndarray:
    """Thumbnails in rows of ``per_row``, on black, separated by ``gap`` pixels."""
    if not thumbs:
        return np.zeros((8, 8, 3), np.uint8)
    rows = []
    for r in range(0, len(thumbs), per_row):
        row = []
        for t in thumbs[r : r + per_row]:
            row += [t, np.zeros((t.shape[0], gap, 3), np.uint8)]
        rows.append(np.hstack(row[:-1]))
    width = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        pad = np.zeros((r.shape[0], width - r.shape[1], 3), np.uint8)
        padded += [np.hstack([r, pad]), np.zeros((gap, width, 3), np.uint8)]
    return np.vstack(padded[:-1])
