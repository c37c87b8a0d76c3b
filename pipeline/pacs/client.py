"""The DICOMweb client: QIDO-RS searches, WADO-RS retrieval to a file, STOW-RS store.

Searches and stores go through ``dicomweb-client`` (its own retrying is switched off:
:mod:`.retry` does it, with a bound); retrieval streams the instance's bytes straight to
disk with ``requests`` (see :mod:`.multipart`), so memory does not grow with the film.
STOW never uses chunked transfer encoding (some servers answer such an upload 200 without
storing it) and what it stored is checked by a QIDO-RS search, not taken from the status.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from legalign.pipeline.errors import LegalignError
from legalign.pipeline.pacs import retry as rt
from legalign.pipeline.pacs.auth import Credentials, redact
from legalign.pipeline.pacs.multipart import MultipartError, boundary_of, write_single_part

CHUNK = 1 << 20
NO_CHUNKED_UPLOAD = 1 << 40  # dicomweb-client chunks uploads larger than its chunk size
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True)
class ClientOptions:
    url: str
    credentials: Credentials | None = None
    verify_tls: bool = True
    ca_bundle: str | None = None
    timeout_s: float = 30.0
    retry: rt.RetryPolicy = rt.RetryPolicy()
    pool_size: int = 8


def check_url(url: str) -> str:
    """The service URL without a trailing slash; credentials in it are refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LegalignError(f"{_safe_url(url)}: not an http(s) DICOMweb URL")
    if parts.username is not None or parts.password is not None:
        raise LegalignError(
            "credentials in the URL are not accepted: use --auth-env VAR or --auth-file FILE"
        )
    if parts.query or parts.fragment:
        raise LegalignError(f"{_safe_url(url)}: the DICOMweb URL takes no query or fragment")
    return url.rstrip("/")


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def tag(item: dict[str, Any], hex_tag: str) -> Any:
    """First value of a DICOM JSON attribute (None when absent or empty)."""
    values = (item.get(hex_tag) or {}).get("Value") or []
    return values[0] if values else None


class PacsClient:
    def __init__(self, opts: ClientOptions) -> None:

        self.opts = opts
        self.url = check_url(opts.url)
        self.creds = opts.credentials
        s = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=opts.pool_size, pool_maxsize=opts.pool_size, max_retries=0
        )
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        s.verify = opts.ca_bundle if (opts.ca_bundle and opts.verify_tls) else opts.verify_tls
        s.trust_env = False  # no credentials from ~/.netrc, no proxy from the environment
        if opts.credentials is not None:
            s.auth = opts.credentials.requests_auth()
        self.session = s
        self.dw = DICOMwebClient(
            self.url, session=s, chunk_size=NO_CHUNKED_UPLOAD, timeout=opts.timeout_s
        )
        self.dw.set_http_retry_params(retry=False)

    def close(self) -> None:
        self.session.close()

    def _call(self, fn: Any, what: str) -> Any:
        try:
            return rt.call(fn, self.opts.retry, what)
        except rt.PacsError as exc:
            raise rt.PacsError(redact(str(exc), self.creds), exc.reason, exc.status) from None

    # ------------------------------------------------------------------ QIDO-RS
    def search_studies(
        self, filters: dict[str, Any], *, offset: int, limit: int
    ) -> list[dict[str, Any]]:
        return self._call(
            lambda: self.dw.search_for_studies(
                offset=offset, limit=limit, search_filters=dict(filters)
            ),
            "QIDO-RS studies",
        )

    def search_series(self, study: str, fields: list[str]) -> list[dict[str, Any]]:
        return self._call(
            lambda: self.dw.search_for_series(study_instance_uid=study, fields=fields),
            f"QIDO-RS series of study {study}",
        )

    def search_instances(
        self, study: str, series: str, filters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        return self._call(
            lambda: self.dw.search_for_instances(
                study_instance_uid=study,
                series_instance_uid=series,
                fields=["00080016"],
                search_filters=dict(filters or {}),
            ),
            f"QIDO-RS instances of series {series}",
        )

    def has_instance(self, study: str, series: str, sop: str) -> bool:
        found = self.search_instances(study, series, {"SOPInstanceUID": sop})
        return any(tag(i, "00080018") == sop for i in found)

    # ------------------------------------------------------------------ WADO-RS
    def retrieve_to_file(self, study: str, series: str, sop: str, target: Path) -> int:
        """Stream one instance into ``target`` (atomically: a hidden temporary, then a
        rename).  Returns its size in bytes."""
        url = f"{self.url}/studies/{study}/series/{series}/instances/{sop}"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")

        def once() -> int:
            with self.session.get(
                url, headers={"Accept": WADO_ACCEPT}, stream=True, timeout=self.opts.timeout_s
            ) as r:
                r.raise_for_status()
                try:
                    boundary = boundary_of(r.headers.get("Content-Type", ""))
                    with open(tmp, "wb") as fh:
                        chunks = r.iter_content(CHUNK)
                        if boundary is None:  # a single body without multipart framing
                            n = 0
                            for c in chunks:
                                fh.write(c)
                                n += len(c)
                        else:
                            n = write_single_part(chunks, boundary, fh)
                except MultipartError as exc:
                    raise rt.PacsError(f"WADO-RS {sop}: {exc}", rt.REASON_BAD_RESPONSE) from None
                if n == 0:
                    raise rt.PacsError(f"WADO-RS {sop}: empty instance", rt.REASON_BAD_RESPONSE)
            os.replace(tmp, target)
            return n

        try:
            return self._call(once, f"WADO-RS instance {sop}")
        finally:
            if tmp.exists():
                tmp.unlink()

    # ------------------------------------------------------------------ STOW-RS
    def store(self, study: str, files: list[Path]) -> None:
        """STOW-RS ``files`` (DICOM Part 10) into ``study``; raises PacsError when the server
        reports a failed instance.  Whether they were stored is checked by the caller."""

        datasets = [pydicom.dcmread(f) for f in files]

        def once() -> Any:
            return self.dw.store_instances(datasets, study_instance_uid=study)

        answer = self._call(once, f"STOW-RS into study {study}")
        failed = getattr(answer, "FailedSOPSequence", None) or []
        if failed:
            uids = ", ".join(str(getattr(f, "ReferencedSOPInstanceUID", "?")) for f in failed)
            raise rt.PacsError(
                f"STOW-RS into study {study}: the server refused {uids}", rt.REASON_REJECTED
            )
