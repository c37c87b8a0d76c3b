"""Failed results: one record per failed file, its reason typed (``FailureReason``)."""

from __future__ import annotations

from typing import Any

from legalign.pipeline.enums import Status
from legalign.pipeline.errors import FailureReason, LegalignError, failure_reason
from legalign.pipeline.results import ImageResult
from legalign.pipeline.safe_text import printable


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters), for result rows."""
    return printable(f"{type(exc).__name__}: {str(exc).strip()}")[:300]


def failed_result(
    path: str, exc: BaseException | str, reason: FailureReason | None = None
) -> ImageResult:
    """An ImageResult recording one failure (reason + one-line message, no traceback).

    ``reason`` None: the exception's own (``errors.failure_reason``); a message string
    without a reason is an internal error.
    """
    if isinstance(exc, BaseException):
        # one line whatever the file name holds: newlines and other control characters
        # (and undecodable bytes) escaped, not cut
        msg = printable(str(exc).strip()) if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, LegalignError):
            msg = f"{type(exc).__name__}: {msg}"
        reason = reason or failure_reason(exc)
    else:
        msg = printable(exc)
        reason = reason or FailureReason.INTERNAL_ERROR
    return ImageResult(file=str(path), status=Status.FAILED, error_reason=reason, error=msg)


def failure_dict(
    path: str, exc: BaseException | str, reason: FailureReason | None = None
) -> dict[str, Any]:
    """The result record (per-image JSON) of a file that failed."""
    return failed_result(path, exc, reason).to_dict()
