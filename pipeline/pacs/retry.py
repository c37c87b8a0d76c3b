"""Retries with exponential backoff and a bound, and the failure reasons they end in.

Connection refused or reset, timeouts, HTTP 5xx, 408 and 429 are transient: the call is
repeated after 0.5, 1, 2, 4 ... s (capped) up to ``attempts`` times, which rides out a
server restart.  Any other 4xx is final at once.  What is left is a :class:`PacsError`
whose ``reason`` becomes the row's ``error_reason``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

from legalign.pipeline.errors import FailureReason

T = TypeVar("T")

# error_reason values of the rows a PACS fault leaves (docs/pacs.md)
# (members of the one FailureReason enum, pipeline/errors.py)
REASON_UNREACHABLE = FailureReason.PACS_UNREACHABLE
REASON_TIMEOUT = FailureReason.PACS_TIMEOUT
REASON_SERVER = FailureReason.PACS_SERVER_ERROR
REASON_REJECTED = FailureReason.PACS_REJECTED
REASON_NOT_STORED = FailureReason.PACS_NOT_STORED
REASON_BAD_RESPONSE = FailureReason.PACS_BAD_RESPONSE
PACS_REASONS = frozenset(
    {
        REASON_UNREACHABLE,
        REASON_TIMEOUT,
        REASON_SERVER,
        REASON_REJECTED,
        REASON_NOT_STORED,
        REASON_BAD_RESPONSE,
    }
)
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class PacsError(Exception):
    """A DICOMweb request that failed for good."""

    def __init__(self, message: str, reason: FailureReason, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries in all, the first included
    backoff_s: float = 0.5  # first wait; doubled after each failure
    max_backoff_s: float = 8.0

    def delays(self) -> list[float]:
        return [
            min(self.max_backoff_s, self.backoff_s * 2**i) for i in range(max(0, self.attempts - 1))
        ]


def classify(exc: BaseException) -> tuple[bool, FailureReason, int | None]:
    """(transient?, reason, HTTP status) of an exception from a request."""

    if isinstance(exc, PacsError):
        return False, exc.reason, exc.status
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in RETRY_STATUS:
            return True, REASON_SERVER, status
        return False, REASON_REJECTED, status
    if isinstance(exc, requests.Timeout):
        return True, REASON_TIMEOUT, None
    if isinstance(exc, requests.ConnectionError | ConnectionError):
        return True, REASON_UNREACHABLE, None
    if isinstance(exc, requests.RequestException):
        # a response cut off mid-body (server killed while sending) and the like
        return True, REASON_UNREACHABLE, None
    return False, REASON_BAD_RESPONSE, None


def describe(exc: BaseException) -> str:
    """One line about a request failure, without URLs' query strings or headers."""

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        r = exc.response
        return f"HTTP {r.status_code} {r.reason or ''}".strip()
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, requests.ConnectionError) and "Connection refused" in first:
        first = "connection refused"
    return f"{type(exc).__name__}: {first}"[:300]


def call(
    fn: Callable[[], T],
    policy: RetryPolicy,
    what: str,
    *,
    sleep: Callable[[float], Any] = time.sleep,
    on_retry: Callable[[str], Any] | None = None,
) -> T:
    """``fn()`` with retries on transient failures; a :class:`PacsError` when it gives up."""
    delays = policy.delays()
    for attempt in range(len(delays) + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            transient, reason, status = classify(exc)
            if isinstance(exc, PacsError) and not transient:
                raise
            if not transient or attempt >= len(delays):
                tries = f" after {attempt + 1} tries" if transient else ""
                raise PacsError(f"{what}: {describe(exc)}{tries}", reason, status) from None
            if on_retry is not None:
                on_retry(f"{what}: {describe(exc)}; retrying in {delays[attempt]:g} s")
            sleep(delays[attempt])
    raise AssertionError("unreachable")
