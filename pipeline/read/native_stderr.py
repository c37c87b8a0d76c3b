"""What native decoders (OpenJPEG, libjpeg, libtiff, GDCM) write to file descriptor 2.

Several C decoders report a damaged codestream only as a line on stderr and return an
image anyway (OpenJPEG: "Tile part length size inconsistent with stream length", a
JPEG 2000 file with flipped bits decoding to 60-100 % wrong pixels).  The readers run
their decoders inside ``native_stderr()`` and fail the file when anything was written.

Python-level output in the block (warnings, logging) goes to a private buffer instead,
so only native messages count.  File descriptor 2 is process-wide: use this only where
one decode runs at a time (the engine's worker processes, the API's single call).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Yield a list that, after the block, holds the non-empty lines written to fd 2."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a closed or odd stderr: capture what we can
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to capture
        yield lines
        return
    py_stderr = sys.stderr
    with tempfile.TemporaryFile() as tmp, warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        os.dup2(tmp.fileno(), 2)
        sys.stderr = io.StringIO()
        try:
            yield lines
        finally:
            sys.stderr = py_stderr
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read(65536).decode("utf-8", "replace")
            lines.extend(ln.strip() for ln in text.splitlines() if ln.strip())
