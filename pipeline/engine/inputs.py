"""Expand ``legalign run`` INPUTs lazily into file paths.

An INPUT is a file, a folder (walked recursively, in sorted order, one folder at a time),
or a text file listing paths (``@list.txt``, or a name ending in .txt / .lst / .list;
one path per line, ``#`` comments, relative paths relative to the list's folder; a
listed folder is walked too).  Nothing is listed up front: the generator yields paths as
it finds them, so a tree of millions of files costs memory for one folder's entries.

Skipped while walking: hidden files and folders (names starting with "."), DICOMDIR
files, sidecar files whose extension says they are not images (annotations, reports,
tables: ``SIDECAR_SUFFIXES``; DICOM files may have any other extension or none, so
only these are skipped), and the run's own output folder (so the SR / SC objects a run writes are not
picked up as inputs by the next run).  Paths that do not exist are yielded anyway: the
engine records them as failures instead of stopping.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

LIST_SUFFIXES = (".txt", ".lst", ".list")
# Files found in a folder walk that are never films.  A file named explicitly on the
# command line is processed whatever its name (and recorded as a failure if it is no image).
SIDECAR_SUFFIXES = (
    ".json",
    ".csv",
    ".tsv",
    ".txt",
    ".lst",
    ".list",
    ".md",
    ".yaml",
    ".yml",
    ".xml",
    ".html",
    ".pdf",
    ".parquet",
    ".log",
    ".py",
    ".sh",
    ".zip",
    ".gz",
)


# A file in every folder ``legalign run`` writes (pipeline/engine/local.py): the walk never
# enters a folder carrying it, wherever it is and whatever it is called.
OUTPUT_MARKER = ".legalign-output"


def is_list_file(arg: str) -> bool:
    return arg.startswith("@") or (arg.lower().endswith(LIST_SUFFIXES) and os.path.isfile(arg))


def _excluded(path: str, exclude: tuple[str, ...]) -> bool:
    return os.path.abspath(path) in exclude or os.path.realpath(path) in exclude


def _walk(root: str, exclude: tuple[str, ...]) -> Iterator[str]:
    # os.walk with topdown=True lets us prune and sort each folder's entries.  A folder
    # that cannot be listed is yielded as an input of its own: the engine records it
    # (reason unreadable) instead of skipping its films silently.
    unlisted: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unlisted.append):
        while unlisted:
            err = unlisted.pop(0)
            if err.filename:
                yield os.fsdecode(err.filename)
        if OUTPUT_MARKER in filenames:  # a legalign output folder: never input
            dirnames[:] = []
            continue
        absdir = os.path.abspath(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and not _excluded(os.path.join(absdir, d), exclude)
        )
        for name in sorted(filenames):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            if name.lower().endswith(SIDECAR_SUFFIXES):
                continue
            yield os.path.join(dirpath, name)
    for err in unlisted:
        if err.filename:
            yield os.fsdecode(err.filename)


def _list_entries(list_path: str) -> Iterator[str]:
    base = os.path.dirname(os.path.abspath(list_path))
    with open(list_path, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            yield entry if os.path.isabs(entry) else os.path.join(base, entry)


def expand_inputs(
    inputs: Iterable[str], *, exclude: Iterable[str | os.PathLike[str]] = ()
) -> Iterator[str]:
    """Yield every file path the INPUTs name, lazily (see the module docstring)."""
    excl = tuple(
        p for e in exclude for p in {os.path.abspath(os.fspath(e)), os.path.realpath(os.fspath(e))}
    )
    for arg in inputs:
        arg = os.fspath(arg)
        if is_list_file(arg):
            list_path = arg[1:] if arg.startswith("@") else arg
            for entry in _list_entries(list_path):
                yield from _expand_one(entry, excl)
        else:
            yield from _expand_one(arg, excl)


def _expand_one(path: str, exclude: tuple[str, ...]) -> Iterator[str]:
    if os.path.isdir(path):
        if _excluded(path, exclude) or os.path.exists(os.path.join(path, OUTPUT_MARKER)):
            return
        yield from _walk(path, exclude)
    else:
        yield path


def check_inputs(inputs: Iterable[str]) -> list[str]:
    """Problems that make the command itself wrong: an INPUT on the command line that does
    not exist, a list file that cannot be read.  (Paths inside a list file that do not
    exist are per-file failures, recorded as rows.)"""
    problems = []
    for arg in inputs:
        if arg.startswith("@"):
            if not Path(arg[1:]).is_file():
                problems.append(f"{arg[1:]}: list file not found")
        elif not os.path.lexists(arg):
            problems.append(f"{arg}: not found")
    return problems
