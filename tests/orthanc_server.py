"""A throw-away Orthanc for tests and benchmarks: loopback only, a free port, a temporary
JSON configuration and storage folder, the DICOMweb plugin from its Debian path.

Needs Debian's ``orthanc`` and ``orthanc-dicomweb`` packages (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

PLUGIN_PATHS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)


def find_orthanc() -> tuple[str | None, str | None]:
    """(Orthanc executable, DICOMweb plugin) or None for each that is missing."""
    exe = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None
    )
    plugin = next((p for p in PLUGIN_PATHS if os.path.exists(p)), None)
    return exe, plugin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OrthancServer:
    """``start()``, ``stop()``, ``restart()``; ``url`` is the DICOMweb root."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        users: dict[str, str] | None = None,
        **config: Any,
    ) -> None:
        exe, plugin = find_orthanc()
        if exe is None or plugin is None:
            raise FileNotFoundError("Orthanc or its DICOMweb plugin is not installed")
        self.exe = exe
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = {
            "Name": "legalign-test",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "storage"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": dict(users or {}),
            "HttpCompressionEnabled": False,
            "StorageCompression": False,
            "ConcurrentJobs": 1,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            **config,
        }
        self.config_path = self.dir / "orthanc.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "orthanc.log"
        self.auth = next(iter((users or {}).items()), None)  # for the helpers below

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/dicom-web"

    def start(self, timeout_s: float = 30.0) -> None:

        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [self.exe, str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; see {self.log_path}")
            try:
                r = requests.get(f"{self.url}/studies", timeout=1, auth=self.auth)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s:g} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # ---------------------------------------------------- Orthanc's own REST API
    def upload(self, path: str | os.PathLike[str]) -> dict[str, Any]:

        with open(path, "rb") as fh:
            r = requests.post(f"{self.base}/instances", data=fh.read(), timeout=60, auth=self.auth)
        r.raise_for_status()
        return r.json()

    def rest(self, path: str, **params: Any) -> Any:

        r = requests.get(f"{self.base}{path}", params=params, timeout=60, auth=self.auth)
        r.raise_for_status()
        return r.json()

    def clear(self) -> None:
        """Delete every study (a fresh archive for the next test)."""

        for sid in self.rest("/studies"):
            requests.delete(
                f"{self.base}/studies/{sid}", timeout=60, auth=self.auth
            ).raise_for_status()

    def download(self, orthanc_id: str) -> bytes:
        """The stored file of one instance (Orthanc's id)."""

        r = requests.get(f"{self.base}/instances/{orthanc_id}/file", timeout=60, auth=self.auth)
        r.raise_for_status()
        return r.content

    def new_instance_changes(self) -> int:
        """How many NewInstance events the archive has logged (each stored instance once;
        a second STOW of an instance already there is not a new one)."""
        n, since = 0, 0
        while True:
            page = self.rest("/changes", since=since, limit=1000)
            n += sum(1 for c in page["Changes"] if c["ChangeType"] == "NewInstance")
            if page["Done"]:
                return n
            since = page["Last"]
