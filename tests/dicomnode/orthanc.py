"""The real Orthanc (Debian's ``orthanc`` package) as the PACS of the DICOM node's tests.

``Orthanc`` writes a JSON configuration for one instance: HTTP and DICOM on free 127.0.0.1
ports, storage and index in a temporary folder, AET ``PACS``, no remote access and no
authentication, a small ``StableAge``, the DICOMweb plugin, and the node registered as the
DICOM modality ``node`` (when its AE title and port are given). ``start()`` runs
``/usr/sbin/Orthanc CONFIG.json`` and waits for ``/system``; ``stop()`` and ``restart()`` keep
the storage, for fault tests. The query helpers read results back over the REST API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from serving.server import free_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
PACS_AET = "PACS"


class Orthanc:
    """One Orthanc process and its configuration under ``root``.

    Attributes:
        root: folder of the configuration, the storage and the log.
        http_port: REST API port on 127.0.0.1.
        dicom_port: DICOM port on 127.0.0.1 (AET ``PACS``).
        url: the REST API's base URL.
        dicomweb_url: the DICOMweb root (QIDO-RS, WADO-RS, STOW-RS).
    """

    def __init__(
        self,
        root: Path,
        node_aet: str | None = None,
        node_port: int | None = None,
        stable_age_s: int = 1,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.aet = PACS_AET
        self.process: subprocess.Popen[bytes] | None = None
        storage = root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": "PACS",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": PACS_AET,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "StableAge": stable_age_s,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomModalities": {},
            "ConcurrentJobs": 1,
        }
        if node_aet is not None and node_port is not None:
            config["DicomModalities"]["node"] = [node_aet, "127.0.0.1", node_port]
        config.update(extra or {})
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))
        self.log = root / "orthanc.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        """Run Orthanc and wait until ``/system`` answers."""
        if self.running:
            return self
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/system", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer /system in {timeout_s} s: {self.tail()}")

    def stop(self, kill: bool = False, timeout_s: float = 15.0) -> None:
        """SIGTERM (Orthanc takes about 3 s to stop), then SIGKILL past ``timeout_s``; or
        SIGKILL at once with ``kill`` (a crash: the SQLite index survives it). The storage
        stays."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def restart(self, kill: bool = False) -> Orthanc:
        """Stop (see ``stop``) and start again on the same ports and storage."""
        self.stop(kill)
        return self.start()

    def tail(self, lines: int = 20) -> str:
        """The end of Orthanc's log (for failure messages)."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    # -- the REST API ----------------------------------------------------------------------

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}{path}", timeout=30.0)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any) -> Any:
        r = httpx.post(f"{self.url}{path}", json=body, timeout=120.0)
        r.raise_for_status()
        return r.json()

    def find(self, level: str = "Instance", expand: bool = False, **query: str) -> list[Any]:
        """``/tools/find`` at ``level`` (Patient, Study, Series, Instance) with DICOM keyword
        matches, e.g. ``find("Series", StudyInstanceUID=uid, Modality="SR")``."""
        return list(self.post("/tools/find", {"Level": level, "Query": query, "Expand": expand}))

    def instances_by_sop_uid(self, sop_instance_uid: str) -> list[str]:
        """Orthanc ids of the instances with this SOP Instance UID (one, when stored)."""
        return [str(i) for i in self.find("Instance", SOPInstanceUID=sop_instance_uid)]

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of one instance."""
        r = httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30.0)
        r.raise_for_status()
        return r.content

    def instance_count(self) -> int:
        """Instances in the whole store (``/statistics``)."""
        return int(self.get("/statistics")["CountInstances"])

    def upload(self, data: bytes) -> str:
        """Store one DICOM file through the REST API (``POST /instances``); its Orthanc id."""
        r = httpx.post(f"{self.url}/instances", content=data, timeout=30.0)
        r.raise_for_status()
        return str(r.json()["ID"])

    def wait_for_instances(
        self, study_uid: str, count: int = 1, timeout_s: float = 60.0, **query: str
    ) -> list[str]:
        """Orthanc ids of the instances of ``study_uid`` (matching ``query``, e.g.
        ``Modality="SR"``) once there are at least ``count``; all there are at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [str(i) for i in self.find("Instance", StudyInstanceUID=study_uid, **query)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def store_to_node(self, resource_id: str, timeout_s: float = 120.0) -> Any:
        """Send a study, series or instance on to the node (C-STORE through ``node``)."""
        r = httpx.post(
            f"{self.url}/modalities/node/store",
            json={"Resources": [resource_id], "Synchronous": True},
            timeout=timeout_s,
        )
        r.raise_for_status()
        return r.json()


@contextmanager
def running_orthanc(
    root: Path, node_aet: str | None = None, node_port: int | None = None, **options: Any
) -> Iterator[Orthanc]:
    """A started ``Orthanc`` under ``root``, killed at the end (nothing is left to keep)."""
    os.makedirs(root, exist_ok=True)
    pacs = Orthanc(root, node_aet, node_port, **options)
    try:
        yield pacs.start()
    finally:
        pacs.stop(kill=True)
