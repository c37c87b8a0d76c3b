"""Error types and failure reasons (the bottom layer: imports nothing from legalign).

Every user-facing failure is a ``LegalignError`` whose message is one line naming the file
(where there is one) and the problem.  A failure that ends one file of a batch run carries
its :class:`FailureReason` as a class attribute (``InputError.reason`` and its
subclasses), as pydicom's ``errors.py`` and highdicom's ``enum.py`` do: the reason is
chosen where the error is raised, never guessed from the message afterwards.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class FailureReason(StrEnum):
    """Why a file failed (``error_reason`` in the results, docs/results-schema.md)."""

    UNREADABLE = "unreadable"  # corrupt or truncated file, decoder failure
    NOT_AN_IMAGE = "not_an_image"  # not DICOM / PNG / JPEG / TIFF, or DICOM without pixels
    WRONG_MODALITY = "wrong_modality"  # DICOM modality that is not a projection radiograph
    TOO_LARGE = "too_large"  # more pixels than the configured limit
    NO_SPACING = "no_spacing"  # invalid pixel spacing, or none with --require-spacing
    NO_LEGS_FOUND = "no_legs_found"  # the locator found no leg with its core landmarks
    INTERNAL_ERROR = "internal_error"  # a bug: an unexpected exception (message recorded)
    WORKER_CRASHED = "worker_crashed"  # the worker process died on this file
    TIMEOUT = "timeout"  # still running after --file-timeout seconds (killed)
    # `legalign pacs` (docs/pacs.md): the archive's faults, after retries
    PACS_UNREACHABLE = "pacs_unreachable"  # connection refused / reset / DNS
    PACS_TIMEOUT = "pacs_timeout"
    PACS_SERVER_ERROR = "pacs_server_error"  # 5xx, 408, 429 after every retry
    PACS_REJECTED = "pacs_rejected"  # 4xx: the server refused the request
    PACS_NOT_STORED = "pacs_not_stored"  # STOW answered but the archive does not hold it
    PACS_BAD_RESPONSE = "pacs_bad_response"  # not the DICOMweb answer expected


class LegalignError(ValueError):
    """Base class for errors reported to the user as one line, with a non-zero exit."""

    exit_code: ClassVar[int] = 2


class ConfigError(LegalignError):
    """A configuration file or value is invalid; the message names file and key."""


class InputError(LegalignError):
    """An input file is malformed, unreadable or inconsistent (reason ``unreadable``;
    the subclasses below name the other input reasons)."""

    reason: ClassVar[FailureReason] = FailureReason.UNREADABLE


class NotAnImageError(InputError):
    """Not a DICOM / PNG / JPEG / TIFF file, or no usable pixel data."""

    reason = FailureReason.NOT_AN_IMAGE


class WrongModalityError(InputError):
    """A DICOM object that is not a projection radiograph."""

    reason = FailureReason.WRONG_MODALITY


class TooLargeError(InputError):
    """More pixels than the configured limit (or than memory allows)."""

    reason = FailureReason.TOO_LARGE


class SpacingError(InputError):
    """Pixel spacing that cannot be used (invalid, non-isotropic), or none where it is
    required."""

    reason = FailureReason.NO_SPACING


class FileTimeoutError(InputError):
    """A file still being read after ``--file-timeout`` seconds (stopped)."""

    reason = FailureReason.TIMEOUT


class PlanningError(LegalignError):
    """An osteotomy plan cannot be made (e.g. the target cannot be reached)."""


def failure_reason(exc: BaseException) -> FailureReason:
    """The reason a file failed with ``exc``: the input error's own reason; running out
    of memory on a file is ``too_large``; anything else is a bug (``internal_error``)."""
    if isinstance(exc, InputError):
        return exc.reason
    if isinstance(exc, MemoryError):
        return FailureReason.TOO_LARGE
    return FailureReason.INTERNAL_ERROR
