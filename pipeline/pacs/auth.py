"""Credentials for the DICOMweb server: from an environment variable or a file only.

The value (the variable's content, or the file's first non-empty line) is one of::

    basic USER:PASSWORD
    bearer TOKEN
    USER:PASSWORD            (basic)

Secrets never come from the command line, never appear in a URL and are never logged:
the objects below print as ``<basic auth>`` / ``<bearer auth>``, and :func:`redact`
removes the secret from any message that might echo it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import requests.auth

from legalign.pipeline.errors import LegalignError

DEFAULT_AUTH_ENV = "LEGALIGN_PACS_AUTH"


@dataclass(frozen=True)
class Credentials:
    kind: str  # "basic" or "bearer"
    user: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return f"<{self.kind} auth>"

    def requests_auth(self) -> Any:
        """A ``requests`` auth object (sets the Authorization header per request)."""
        if self.kind == "basic":
            return _Basic(self.user, self.secret)
        return _Bearer(self.secret)


def parse_credentials(text: str, where: str) -> Credentials:
    value = text.strip()
    low = value.lower()
    if low.startswith("bearer "):
        token = value[7:].strip()
        if not token:
            raise LegalignError(f"{where}: empty bearer token")
        return Credentials("bearer", secret=token)
    if low.startswith("basic "):
        value = value[6:].strip()
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise LegalignError(
            f"{where}: credentials must be 'basic USER:PASSWORD', 'USER:PASSWORD' or 'bearer TOKEN'"
        )
    return Credentials("basic", user=user, secret=password)


def load_credentials(env_name: str | None, file: str | None) -> Credentials | None:
    """Credentials from ``--auth-file`` or ``--auth-env`` (default LEGALIGN_PACS_AUTH when set)."""
    if file is not None and env_name is not None:
        raise LegalignError("give --auth-env or --auth-file, not both")
    if file is not None:
        try:
            with open(file, encoding="utf-8") as fh:
                lines = [ln for ln in fh.read().splitlines() if ln.strip()]
        except OSError as exc:
            raise LegalignError(
                f"{file}: cannot read the credentials file ({exc.strerror})"
            ) from None
        if not lines:
            raise LegalignError(f"{file}: the credentials file is empty")
        return parse_credentials(lines[0], file)
    name = env_name or DEFAULT_AUTH_ENV
    value = os.environ.get(name)
    if value is None or not value.strip():
        if env_name is not None:
            raise LegalignError(f"--auth-env {env_name}: the environment variable is not set")
        return None
    return parse_credentials(value, f"environment variable {name}")


def redact(text: str, creds: Credentials | None) -> str:
    """``text`` with the secret (and a basic-auth user:password pair) removed."""
    if creds is None:
        return text
    for s in (f"{creds.user}:{creds.secret}" if creds.kind == "basic" else "", creds.secret):
        if s:
            text = text.replace(s, "***")
    return text


class _Basic:
    """HTTP basic auth that does not print its secret."""

    def __init__(self, user: str, password: str) -> None:

        self._inner = requests.auth.HTTPBasicAuth(user, password)

    def __call__(self, r: Any) -> Any:
        return self._inner(r)

    def __repr__(self) -> str:
        return "<basic auth>"


class _Bearer:
    """``Authorization: Bearer TOKEN``, which does not print its token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, r: Any) -> Any:
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:
        return "<bearer auth>"
