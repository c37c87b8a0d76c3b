"""How much JPEG 2000 bit-flip damage the readers can detect (docs/progressive.md).

    python benchmarks/bench_j2k_flips.py --flips 300 --seed 7

On the hostile corpus's synthetic DX film, JPEG 2000 lossless (pydicom's encoder):

- every single-bit flip of the main and tile-part headers (up to SOD), decoded at the
  deepest level: how many give an OpenJPEG error, a warning, or nothing;
- ``--flips`` random single-bit flips and ``--flips // 3`` eight-flip cases in the packet
  data after SOD, decoded at full resolution and at the deepest level: errors, warnings,
  and for the undetected ones the share of pixels changed and the largest change as a
  share of the grey range.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from pydicom.encaps import generate_frames

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hostile_corpus import _compressed, good_dataset  # noqa: E402

from legalign.pipeline.read.codecs import openjpeg  # noqa: E402
from legalign.pipeline.read.codecs.base import CodecError  # noqa: E402


def _outcome(frame: bytes, level: int) -> tuple[str, np.ndarray | None]:
    try:
        out, warnings = openjpeg.decode(frame, level=level)
    except CodecError:
        return "error", None
    return ("warning" if warnings else "none"), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flips", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if not openjpeg.is_available():
        print("no OpenJPEG >= 2.5 library")
        return 1
    ds, _ = good_dataset()
    c = _compressed(ds, "j2k")
    frame = bytes(next(generate_frames(c.PixelData, number_of_frames=1)))
    sod = frame.find(b"\xff\x93")
    deepest = 5  # pydicom's encoder: 5 decomposition levels
    ref, _ = openjpeg.decode(frame)
    print(f"codestream {len(frame)} bytes, headers {sod + 2} bytes, image {ref.shape}")

    counts = {"error": 0, "warning": 0, "none": 0}
    for pos in range(sod + 2):
        for bit in range(8):
            b = bytearray(frame)
            b[pos] ^= 1 << bit
            counts[_outcome(bytes(b), deepest)[0]] += 1
    print(f"header single-bit flips {sum(counts.values())}: {counts}")

    rng = np.random.default_rng(args.seed)
    for nflip, n in ((1, args.flips), (8, max(1, args.flips // 3))):
        detected = 0
        changed, worst = [], []
        for _ in range(n):
            b = bytearray(frame)
            for _ in range(nflip):
                b[int(rng.integers(sod + 2, len(b) - 2))] ^= 1 << int(rng.integers(0, 8))
            full, out = _outcome(bytes(b), 0)
            deep, _ = _outcome(bytes(b), deepest)
            if full != "none" or deep != "none":
                detected += 1
                continue
            assert out is not None
            d = np.abs(out.astype(np.int64) - ref)
            changed.append(float(np.mean(d > 0)))
            worst.append(float(d.max()) / 65535.0)
        c_, w_ = np.array(changed), np.array(worst)
        print(
            f"{nflip}-bit flips in packet data: {n}, detected {detected}; undetected: pixels "
            f"changed median {np.median(c_):.3f} max {c_.max():.3f}; largest change / range "
            f"median {np.median(w_):.5f} p90 {np.percentile(w_, 90):.4f} max {w_.max():.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
