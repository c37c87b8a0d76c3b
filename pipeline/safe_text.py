"""Text that is safe to put in an output: valid Unicode, no raw control characters, no
spreadsheet formulas.

Input file names come from the archive, DICOM values from whoever wrote the header; both
can hold bytes that are not UTF-8 (``os.fsdecode`` keeps them as surrogate escapes,
which no UTF-8 writer accepts), newlines, escape sequences or a leading ``=`` that a
spreadsheet would execute (CSV injection).

- ``printable(s)``: valid Unicode (undecodable bytes as ``\\xNN``) with every control
  character escaped (``\\n``, ``\\r``, ``\\t``, else ``\\xNN``); what the table, the
  terminal and one-line error messages use.
- ``csv_cell(s)``: ``printable`` plus formula neutralisation: a cell that starts with
  ``=``, ``+``, ``-``, ``@`` (or, before escaping, a tab or carriage return) gets a
  leading apostrophe (OWASP's recommendation for CSV injection).
- ``ascii_text(s)``: ``printable`` restricted to ASCII (non-ASCII as ``\\uXXXX``); the
  overlay's Hershey font draws nothing else.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def valid_unicode(s: str) -> str:
    """``s`` with surrogate escapes (undecodable file-name bytes) as ``\\xNN``."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def escape_controls(s: str) -> str:
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), s)


def printable(s: object) -> str:
    return escape_controls(valid_unicode(str(s)))


def csv_cell(s: object) -> str:
    raw = valid_unicode(str(s))
    text = escape_controls(raw)
    if raw.startswith(FORMULA_START):
        return "'" + text
    return text


def ascii_text(s: object) -> str:
    return printable(s).encode("ascii", "backslashreplace").decode("ascii")
