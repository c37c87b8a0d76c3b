"""Enumerated values of the results (bottom layer, like highdicom's ``enum.py``).

Each is a ``StrEnum``: compared with, formatted as and written to the outputs as its
string value ("right", "partial", "HTO"), an enum in the code.
"""

from __future__ import annotations

from enum import StrEnum


class _Value(StrEnum):
    """Shown as its string value in messages too (``f"{side!r}"`` reads ``'left'``)."""

    def __repr__(self) -> str:
        return repr(self.value)


class Side(_Value):
    """The patient's side a leg belongs to."""

    RIGHT = "right"
    LEFT = "left"

    @property
    def other(self) -> Side:
        return Side.LEFT if self is Side.RIGHT else Side.RIGHT


class Status(_Value):
    """A leg's or an image's status (docs/results-schema.md, "Statuses")."""

    OK = "ok"  # every value the film allows is present
    PARTIAL = "partial"  # some values are null, each with a reason
    FAILED = "failed"  # no hip-knee-ankle axis (leg); error_reason set (image)


class OsteotomyLevel(_Value):
    """Where a proposed osteotomy cuts."""

    HTO = "HTO"  # high tibial osteotomy
    DFO = "DFO"  # distal femoral osteotomy
    DLO = "DLO"  # double-level: DFO then HTO
