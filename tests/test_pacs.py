"""legalign pacs without a real archive: multipart streaming, credentials, retries,
filters, and faults against a scripted DICOMweb server (tests/pacs_fakes.py)."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
import requests
from pacs_fakes import FakeDicomWeb

from legalign.pipeline.errors import LegalignError
from legalign.pipeline.pacs import retry as rt
from legalign.pipeline.pacs.auth import load_credentials, parse_credentials, redact
from legalign.pipeline.pacs.client import ClientOptions, PacsClient, check_url
from legalign.pipeline.pacs.multipart import MultipartError, write_single_part
from legalign.pipeline.pacs.query import QueryFilters, read_study_list

FAST = rt.RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.02)


# ----------------------------------------------------------------- multipart
def _message(payload: bytes, boundary: bytes = b"b0undary", parts: int = 1) -> bytes:
    one = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + payload + b"\r\n"
    return b"preamble\r\n" + one * parts + b"--" + boundary + b"--\r\n"


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_multipart_single_part_streamed_whatever_the_chunking(chunk):
    payload = os.urandom(5000) + b"\r\n--b0undar" + os.urandom(100)  # a near-boundary inside
    msg = _message(payload)
    out = io.BytesIO()
    n = write_single_part((msg[i : i + chunk] for i in range(0, len(msg), chunk)), b"b0undary", out)
    assert n == len(payload) and out.getvalue() == payload


def test_multipart_truncated_and_two_parts_are_errors():
    msg = _message(b"x" * 100)
    with pytest.raises(MultipartError, match="truncated"):
        write_single_part([msg[:60]], b"b0undary", io.BytesIO())
    with pytest.raises(MultipartError, match="more than one part"):
        write_single_part([_message(b"y" * 10, parts=2)], b"b0undary", io.BytesIO())


# ----------------------------------------------------------------- credentials
def test_credentials_formats_and_they_never_print():
    c = parse_credentials("basic alice:pa:ss", "x")
    assert (c.kind, c.user, c.secret) == ("basic", "alice", "pa:ss")
    assert parse_credentials("alice:pw", "x").kind == "basic"
    b = parse_credentials("Bearer tok.en", "x")
    assert (b.kind, b.secret) == ("bearer", "tok.en")
    for cred in (c, b):
        assert cred.secret not in repr(cred) and cred.secret not in repr(cred.requests_auth())
    assert (
        redact("Authorization failed for alice:pa:ss and tok", c)
        == "Authorization failed for *** and tok"
    )
    with pytest.raises(LegalignError, match="credentials must be"):
        parse_credentials("nocolon", "x")


def test_credentials_from_env_or_file_never_the_url(tmp_path, monkeypatch):
    monkeypatch.delenv("LEGALIGN_PACS_AUTH", raising=False)
    assert load_credentials(None, None) is None
    monkeypatch.setenv("LEGALIGN_PACS_AUTH", "bearer abc")
    assert load_credentials(None, None).secret == "abc"
    monkeypatch.setenv("MY_PACS", "u:p")
    assert load_credentials("MY_PACS", None).user == "u"
    with pytest.raises(LegalignError, match="not set"):
        load_credentials("MISSING_VAR_X", None)
    f = tmp_path / "cred"
    f.write_text("\nbasic u2:p2\n")
    assert load_credentials(None, str(f)).user == "u2"
    with pytest.raises(LegalignError, match="credentials in the URL"):
        check_url("http://u:p@host/dicom-web")
    assert check_url("https://host:8042/dicom-web/") == "https://host:8042/dicom-web"


# ----------------------------------------------------------------- retries
def _http_error(status):
    r = requests.Response()
    r.status_code = status
    return requests.HTTPError(response=r)


def test_retry_transient_then_success_and_bound():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _http_error(503)
        return "ok"

    slept = []
    assert rt.call(flaky, FAST, "x", sleep=slept.append) == "ok"
    assert len(calls) == 3 and slept == [0.01, 0.02]

    def down():
        raise requests.ConnectionError("Connection refused")

    with pytest.raises(rt.PacsError) as e:
        rt.call(down, FAST, "WADO-RS", sleep=lambda s: None)
    assert e.value.reason == rt.REASON_UNREACHABLE and "after 3 tries" in str(e.value)


def test_retry_4xx_is_final_at_once():
    calls = []

    def refused():
        calls.append(1)
        raise _http_error(400)

    with pytest.raises(rt.PacsError) as e:
        rt.call(refused, FAST, "STOW-RS", sleep=lambda s: None)
    assert len(calls) == 1 and e.value.reason == rt.REASON_REJECTED and e.value.status == 400


# ----------------------------------------------------------------- filters
def test_series_filters_and_study_list(tmp_path):
    f = QueryFilters(body_parts=("leg*",), series_descriptions=("*standing*",))

    def series(mod, part, desc):
        return {
            "00080060": {"Value": [mod]},
            "00180015": {"Value": [part]},
            "0008103E": {"Value": [desc]},
        }

    assert f.series_matches(series("DX", "LEG", "Full-leg AP Standing"))
    assert not f.series_matches(series("CT", "LEG", "standing"))
    assert not f.series_matches(series("CR", "KNEE", "standing"))
    assert not f.series_matches(series("CR", "LEG", "supine"))
    assert QueryFilters(date_from="20240101", date_to="20241231").study_filters() == {
        "StudyDate": "20240101-20241231"
    }
    with pytest.raises(LegalignError, match="YYYYMMDD"):
        QueryFilters(date_from="2024-01-01")
    p = tmp_path / "studies.txt"
    p.write_text("# wanted\n1.2.3\n\n1.2.4  # second\n1.2.3\n")
    assert read_study_list(str(p)) == ("1.2.3", "1.2.4")
    p.write_text("1.2.x\n")
    with pytest.raises(LegalignError, match="not a Study Instance UID"):
        read_study_list(str(p))


# ----------------------------------------------------------------- a scripted server
@pytest.fixture(scope="module")
def films(tmp_path_factory):
    from legalign.pipeline.cli import main

    d = tmp_path_factory.mktemp("pacs_films")
    assert (
        main(
            [
                "synth",
                "--n",
                "2",
                "--out",
                str(d),
                "--format",
                "dicom",
                "--size",
                "small",
                "--seed",
                "11",
            ]
        )
        == 0
    )
    return sorted(str(p) for p in d.glob("*.dcm"))


def _client(url, **kw):
    return PacsClient(ClientOptions(url=url, retry=FAST, timeout_s=kw.pop("timeout_s", 5.0), **kw))


def test_retrieve_streams_the_exact_file_and_sends_bearer(films, tmp_path):
    from legalign.pipeline.pacs.auth import Credentials
    from legalign.pipeline.pacs.query import instances_of_study, studies

    with FakeDicomWeb(films) as srv:
        srv.faults["qido_503"] = 2  # retried
        c = _client(srv.url, credentials=Credentials("bearer", secret="T0KEN"))
        found = [
            x for s in studies(c, QueryFilters()) for x in instances_of_study(c, s, QueryFilters())
        ]
        assert sorted(x.sop for x in found) == sorted(srv.instances)
        x = found[0]
        n = c.retrieve_to_file(x.study, x.series, x.sop, tmp_path / "got.dcm")
        assert (tmp_path / "got.dcm").read_bytes() == srv.instances[x.sop][1] and n > 0
        assert all(a == "Bearer T0KEN" for _, _, a in srv.requests)
        assert sum(1 for m, p, _ in srv.requests if p.endswith("/studies")) == 3  # 2 x 503


def test_unreachable_and_timeout_give_reasons(films, tmp_path):
    from orthanc_server import free_port

    c = _client(f"http://127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(rt.PacsError) as e:
        c.retrieve_to_file("1.2", "1.3", "1.4", tmp_path / "x.dcm")
    assert e.value.reason == rt.REASON_UNREACHABLE
    with FakeDicomWeb(films) as srv:
        srv.faults["wado_sleep"] = 1.0
        c = _client(srv.url, timeout_s=0.2)
        with pytest.raises(rt.PacsError) as e:
            c.retrieve_to_file("1.2", "1.3", next(iter(srv.instances)), tmp_path / "x.dcm")
        assert e.value.reason == rt.REASON_TIMEOUT
    assert not any(tmp_path.iterdir())  # no partial file left


def _run(url, out, *extra):
    from legalign.pipeline.cli import main

    return main(
        [
            "pacs",
            url,
            "--out",
            str(out),
            "--workers",
            "1",
            "--no-progress",
            "--retries",
            "2",
            *extra,
        ]
    )


def test_retrieval_5xx_becomes_rows_and_rerun_retries_them(films, tmp_path, capsys):
    import pandas as pd

    with FakeDicomWeb(films) as srv:
        srv.faults["wado_status"] = 503
        assert _run(srv.url, tmp_path / "out") == 3
        table = pd.read_parquet(tmp_path / "out" / "results.parquet")
        assert set(table["error_reason"]) == {"pacs_server_error"} and len(table) == len(films)
        assert all("503" in e for e in table["error"])
        dry = capsys.readouterr()
        assert _run(srv.url, tmp_path / "out", "--dry-run") == 0
        lines = capsys.readouterr().out.strip().splitlines()[1:]
        assert len(lines) == len(films) and all(ln.startswith("process\t") for ln in lines), dry


@pytest.mark.slow
def test_store_4xx_and_silent_200_are_rows_not_crashes(films, tmp_path):
    import csv

    with FakeDicomWeb(films[:1]) as srv:
        srv.faults["stow_status"] = 400
        assert _run(srv.url, tmp_path / "a") == 3
        rows = list(csv.DictReader(open(tmp_path / "a" / "pacs.csv")))
        assert [(r["status"], r["store_status"], r["store_reason"]) for r in rows] == [
            ("ok", "failed", "pacs_rejected")
        ]
        assert (tmp_path / "a" / "results.parquet").exists()
        # a STOW answered 200 that stored nothing is caught by the QIDO-RS check
        srv.faults = {"stow_drop": True}
        assert _run(srv.url, tmp_path / "a") == 3
        rows = list(csv.DictReader(open(tmp_path / "a" / "pacs.csv")))
        assert rows[0]["store_reason"] == "pacs_not_stored"
        n_posts = sum(1 for m, *_ in srv.requests if m == "POST")
        assert n_posts == 2  # 4xx was not retried; the re-run tried the store once more
        # the archive works again: the next run only stores (nothing retrieved again)
        srv.faults = {}
        n_wado = sum(1 for m, p, _ in srv.requests if m == "GET" and "/instances/" in p)
        assert _run(srv.url, tmp_path / "a") == 0
        rows = list(csv.DictReader(open(tmp_path / "a" / "pacs.csv")))
        assert rows[0]["store_status"] == "stored"
        assert sum(1 for m, p, _ in srv.requests if m == "GET" and "/instances/" in p) == n_wado
        summary = json.loads((tmp_path / "a" / "pacs_summary.json").read_text())
        assert summary["this_run"]["retrieved"] == 0 and summary["this_run"]["stored"] == 1


def test_secret_never_in_outputs_or_console(films, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEGALIGN_PACS_AUTH", "basic someone:Sup3r-S3cret")
    with FakeDicomWeb(films[:1]) as srv:
        srv.faults["wado_status"] = 401
        assert _run(srv.url, tmp_path / "o") == 3
        assert any(a and a.startswith("Basic ") for _, _, a in srv.requests)
    text = "".join(capsys.readouterr())
    for p in Path(tmp_path / "o").rglob("*"):
        if p.is_file():
            text += p.read_bytes().decode("latin-1")
    assert "Sup3r-S3cret" not in text and "someone:" not in text


def test_tls_verified_unless_insecure(tmp_path):
    from legalign.pipeline.cli import build_parser

    assert _client("https://pacs.invalid/dicom-web").session.verify is True
    ca = tmp_path / "ca.pem"
    assert _client("https://pacs.invalid/dicom-web", ca_bundle=str(ca)).session.verify == str(ca)
    assert _client("https://pacs.invalid/dicom-web", verify_tls=False).session.verify is False
    args = build_parser().parse_args(["pacs", "https://pacs.invalid/dicom-web", "--out", "x"])
    assert args.insecure is False


def test_uids_from_the_server_are_checked_before_use():
    from legalign.pipeline.pacs.query import valid_uid

    assert valid_uid("1.2.840.10008.5.1.4.1.1.1")
    for bad in ("../../etc/passwd", "1.2/3", "", None, "1." + "2" * 70, "1..2"):
        assert not valid_uid(bad)


@pytest.mark.slow
def test_watch_processes_instances_as_they_arrive(films, tmp_path, capsys):
    import csv
    import threading

    with FakeDicomWeb(films[:1]) as srv:
        later = FakeDicomWeb(films[1:2])
        out = tmp_path / "w"
        result = {}

        def go():
            result["code"] = _run(srv.url, out, "--watch", "0.5", "--watch-passes", "3")

        t = threading.Thread(target=go)
        t.start()
        ledger = out / "pacs_ledger.jsonl"
        deadline = time.monotonic() + 600
        while not (ledger.exists() and ledger.read_text()) and t.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with srv.lock:  # a new study arrives while the watch runs
            srv.instances.update(later.instances)
        later.server.server_close()
        t.join(timeout=600)
        assert result["code"] == 0
        rows = list(csv.DictReader(open(out / "pacs.csv")))
        assert len(rows) == 2 and {r["store_status"] for r in rows} == {"stored"}
        text = capsys.readouterr().out
        assert "pass 3:" in text and "pass 2:" in text
