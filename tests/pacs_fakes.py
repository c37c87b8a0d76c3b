"""A scripted DICOMweb server for fault tests (http.server on loopback, a free port).

It holds real DICOM files and answers QIDO-RS (studies, series, instances), WADO-RS
(multipart/related) and STOW-RS like an archive, unless ``faults`` says otherwise:

- ``qido_503``: answer the first N QIDO-RS requests 503, then normally;
- ``wado_status``: answer every WADO-RS request with this status;
- ``wado_sleep``: wait this long before answering WADO-RS (a timeout);
- ``stow_status``: answer every STOW-RS with this status, storing nothing;
- ``stow_drop``: answer STOW-RS 200 with an empty body and store nothing (the reported
  chunked-upload behaviour).

``requests`` lists (method, path, Authorization header) of every request.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pydicom


def _tag(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


class FakeDicomWeb:
    def __init__(self, files: list[str]) -> None:
        self.instances: dict[str, tuple[Any, bytes]] = {}
        for f in files:
            raw = open(f, "rb").read()
            ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
            self.instances[str(ds.SOPInstanceUID)] = (ds, raw)
        self.faults: dict[str, Any] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def __enter__(self) -> FakeDicomWeb:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ answers
    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _json(self, h: BaseHTTPRequestHandler, items: list[dict[str, Any]]) -> None:
        self._send(h, 200, json.dumps(items).encode(), "application/dicom+json")

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path.removeprefix("/dicom-web").strip("/").split("/")
        with self.lock:
            self.requests.append((method, parts.path, h.headers.get("Authorization")))
        body = b""
        if method == "POST":
            body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
            return self._stow(h, body)
        if path[-1] != "" and len(path) == 6:  # studies/S/series/E/instances/I
            return self._wado(h, path[5])
        if self.faults.get("qido_503", 0) > 0:
            self.faults["qido_503"] -= 1
            return self._send(h, 503, b"busy", "text/plain")
        with self.lock:
            items = list(self.instances.values())
        if path == ["studies"]:
            if int(q.get("offset", 0)) > 0:
                return self._json(h, [])
            studies = dict.fromkeys(str(ds.StudyInstanceUID) for ds, _ in items)
            return self._json(h, [{"0020000D": _tag("UI", s)} for s in studies])
        if len(path) == 3 and path[2] == "series":
            series = {}
            for ds, _ in items:
                if str(ds.StudyInstanceUID) == path[1]:
                    series[str(ds.SeriesInstanceUID)] = {
                        "0020000E": _tag("UI", str(ds.SeriesInstanceUID)),
                        "00080060": _tag("CS", str(ds.Modality)),
                    }
            return self._json(h, list(series.values()))
        if len(path) == 5 and path[4] == "instances":
            want = q.get("SOPInstanceUID")
            out = [
                {
                    "00080018": _tag("UI", str(ds.SOPInstanceUID)),
                    "00080016": _tag("UI", str(ds.SOPClassUID)),
                }
                for ds, _ in items
                if str(ds.SeriesInstanceUID) == path[3]
                and (want is None or str(ds.SOPInstanceUID) == want)
            ]
            return self._json(h, out)
        return self._send(h, 404, b"", "text/plain")

    def _wado(self, h: BaseHTTPRequestHandler, sop: str) -> None:
        if self.faults.get("wado_sleep"):
            time.sleep(self.faults["wado_sleep"])
        if self.faults.get("wado_status"):
            return self._send(h, self.faults["wado_status"], b"no", "text/plain")
        entry = self.instances.get(sop)
        if entry is None:
            return self._send(h, 404, b"", "text/plain")
        b = uuid.uuid4().hex
        body = (
            f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + entry[1]
            + f"\r\n--{b}--\r\n".encode()
        )
        self._send(h, 200, body, f'multipart/related; type="application/dicom"; boundary={b}')

    def _stow(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        if self.faults.get("stow_status"):
            return self._send(h, self.faults["stow_status"], b"refused", "text/plain")
        if self.faults.get("stow_drop"):
            return self._send(h, 200, b"", "application/dicom+json")
        ctype = h.headers.get("Content-Type", "")
        boundary = ctype.split("boundary=")[1].strip('"').encode()
        for part in body.split(b"--" + boundary)[1:]:
            if part.startswith(b"--"):
                break
            raw = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
            ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
            with self.lock:
                self.instances[str(ds.SOPInstanceUID)] = (ds, raw)
        self._send(h, 200, b"{}", "application/dicom+json")
