"""Per-image outputs: safe output names derived from input paths, atomic file writes,
and the per-image JSON.

Output names never contain directory parts of the input path: the base name is
sanitised (letters, digits, ``._-``; no leading dot) and suffixed with a hash of the
input's absolute path, so two inputs with the same name in different folders do not
collide and nothing can be written outside the output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from legalign.pipeline.outputs.precision import rounded

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# temporary files of atomic writes: ".<name>.legalign-tmp-<pid>"; start-up cleanup of a
# run removes only names of this shape (never another program's ".*tmp*" files)
TMP_TAG = ".legalign-tmp-"
_OWN_TMP = re.compile(r"^\..+\.legalign-tmp-\d+$")


def temp_name(path: Path) -> Path:
    """The temporary sibling an atomic write of ``path`` goes through."""
    return path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")


def is_own_temp(name: str) -> bool:
    return bool(_OWN_TMP.match(name))


def output_stem(input_path: str | os.PathLike[str]) -> str:
    """A file-name-safe, collision-resistant stem for an input path."""
    raw = os.fspath(input_path)
    absolute = os.path.abspath(raw)
    digest = hashlib.sha1(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    base = os.path.basename(absolute.rstrip("/\\")) or "input"
    base = _UNSAFE.sub("_", base).strip("._-")[:80] or "input"
    return f"{base}-{digest}"


def safe_join(root: str | os.PathLike[str], *parts: str) -> Path:
    """root/parts, refusing anything that would resolve outside root."""
    root_path = Path(root).resolve()
    for p in parts:
        if p in ("", ".", "..") or "/" in p or "\\" in p or "\x00" in p:
            raise ValueError(f"unsafe output name part {p!r}")
    target = root_path.joinpath(*parts).resolve()
    if root_path != target and root_path not in target.parents:
        raise ValueError(f"output path {target} escapes {root_path}")
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> None:
    """Write via a temporary file in the same folder and os.replace: a reader (or a
    re-run after a kill) sees the old file or the whole new one, never a partial one."""
    path = Path(path)
    tmp = temp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, numpy scalars -> Python numbers, every
    float rounded to its documented precision (pipeline/outputs/precision.py)."""
    return rounded(obj)


def dumps(result: dict[str, Any], *, indent: int | None = 2) -> str:
    # ensure_ascii: file names with undecodable bytes (surrogate escapes) and control
    # characters are written as JSON escapes, so the file is valid UTF-8 and one line
    # per record in the journal; json.loads gives back the exact name (resume)
    return json.dumps(
        _clean(result), indent=indent, sort_keys=False, allow_nan=False, ensure_ascii=True
    )


def write_image_json(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    atomic_write_bytes(path, (dumps(result) + "\n").encode("utf-8"))
