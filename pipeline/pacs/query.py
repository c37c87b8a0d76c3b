"""Find the instances to process by QIDO-RS: studies, then their series, then instances.

The date range (and, with a study list file, each listed study) goes to the server;
modality, body part and series description are matched here on the series' attributes
(case-insensitive shell patterns, the same on every server).  Studies are paged, so the
listing is lazy: memory holds one page of studies and one study's series at a time.
Results legalign itself stored (SR, Secondary Capture) are never candidates: their
SOP classes are excluded whatever the modality filter says.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass

from legalign.pipeline.errors import LegalignError
from legalign.pipeline.pacs.client import PacsClient, tag

# Secondary Capture (all flavours) and every Structured Report storage class
_EXCLUDED_CLASS_PREFIXES = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.")
_DATE = re.compile(r"^\d{8}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(value: object) -> bool:
    """A DICOM UID (digits and dots, at most 64 characters): safe in a URL and a file name."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID.match(value))


@dataclass(frozen=True)
class Candidate:
    study: str
    series: str
    sop: str


@dataclass(frozen=True)
class QueryFilters:
    date_from: str | None = None  # YYYYMMDD, inclusive
    date_to: str | None = None
    modalities: tuple[str, ...] = ("DX", "CR")
    body_parts: tuple[str, ...] = ()  # patterns; empty: any
    series_descriptions: tuple[str, ...] = ()
    study_uids: tuple[str, ...] | None = None  # from --study-list
    page_size: int = 100

    def __post_init__(self) -> None:
        for name in ("date_from", "date_to"):
            v = getattr(self, name)
            if v is not None and not _DATE.match(v):
                raise LegalignError(f"--{name.replace('_', '-')}: expected YYYYMMDD, got {v!r}")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise LegalignError("--date-from is after --date-to")

    def study_filters(self) -> dict[str, str]:
        if not (self.date_from or self.date_to):
            return {}
        return {"StudyDate": f"{self.date_from or ''}-{self.date_to or ''}"}

    def series_matches(self, series: dict) -> bool:
        modality = str(tag(series, "00080060") or "")
        if self.modalities and modality.upper() not in {m.upper() for m in self.modalities}:
            return False
        if self.body_parts and not _any_match(str(tag(series, "00180015") or ""), self.body_parts):
            return False
        return not self.series_descriptions or _any_match(
            str(tag(series, "0008103E") or ""), self.series_descriptions
        )


def _any_match(value: str, patterns: tuple[str, ...]) -> bool:
    v = value.lower()
    return any(fnmatch.fnmatchcase(v, p.lower()) for p in patterns)


def read_study_list(path: str) -> tuple[str, ...]:
    """Study Instance UIDs, one a line (``#`` comments and blank lines ignored)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln.split("#", 1)[0].strip() for ln in fh]
    except OSError as exc:
        raise LegalignError(f"{path}: cannot read the study list ({exc.strerror})") from None
    uids = tuple(dict.fromkeys(ln for ln in lines if ln))
    bad = [u for u in uids if not valid_uid(u)]
    if bad:
        raise LegalignError(f"{path}: not a Study Instance UID: {bad[0]!r}")
    return uids


def studies(client: PacsClient, f: QueryFilters) -> Iterator[str]:
    """Study Instance UIDs matching the study-level filters, page by page."""
    base = f.study_filters()
    if f.study_uids is not None:
        for uid in f.study_uids:
            found = client.search_studies({**base, "StudyInstanceUID": uid}, offset=0, limit=2)
            if any(tag(s, "0020000D") == uid for s in found):
                yield uid
        return
    offset = 0
    while True:
        page = client.search_studies(base, offset=offset, limit=f.page_size)
        for s in page:
            uid = tag(s, "0020000D")
            if valid_uid(uid):
                yield str(uid)
        if len(page) < f.page_size:
            return
        offset += len(page)


SERIES_FIELDS = ["00080060", "00180015", "0008103E"]


def instances_of_study(client: PacsClient, study: str, f: QueryFilters) -> Iterator[Candidate]:
    """The candidate instances of one study (series filters applied)."""
    for series in client.search_series(study, SERIES_FIELDS):
        series_uid = tag(series, "0020000E")
        if not valid_uid(series_uid) or not f.series_matches(series):
            continue
        for inst in client.search_instances(study, str(series_uid)):
            sop, cls = tag(inst, "00080018"), str(tag(inst, "00080016") or "")
            if valid_uid(sop) and not cls.startswith(_EXCLUDED_CLASS_PREFIXES):
                yield Candidate(study, str(series_uid), str(sop))
