"""The DICOM node under faults, with real parts only: ``covidct pacs serve`` as a process
(killed with SIGKILL mid-series and mid-processing), the real gateway and tritonserver with the
CI-trained model, DCMTK's storescu as the scanner, and Debian's Orthanc as the PACS (stopped
while results are due). A 24-slice series made from the fixture slice keeps them fast.

What must hold: a restarted node files exactly one result per series, with the UIDs that
``dicomnode.uids`` derives from the series and the model version; results wait in the outbox
while the PACS is down and arrive once it is back; a series that never completes is recorded
skipped with its reason and gets no result; a slice that does not decode is named in the SR's
"Slices not used" and the verdict comes from the others.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import highdicom as hd
import httpx
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_fragments

from dicomnode.pipeline import build_node, open_outbox
from dicomnode.uids import ResultUids
from gateway.settings import GatewaySettings
from serving.server import free_port
from tests.dicomnode.orthanc import Orthanc, running_orthanc
from tests.dicomnode.scanner import SALT, echoscu, node_settings, storescu
from tests.dicomnode.series_data import fixture_series
from tests.dicomnode.test_report import _texts
from tests.integration.conftest import running_gateway
from tests.integration.test_dicomnode import _probabilities, _study_answer
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]

REPO = Path(__file__).resolve().parents[2]
TOP_K = 3


class NodeProcess:
    """``python -m cli pacs serve`` with ``COVIDCT_PACS_*`` settings, on one spool; started,
    killed and started again on the same ports and folders."""

    def __init__(self, tmp: Path, gateway: str, destination: str, **env: object) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.spool = tmp / "spool"
        self.log = tmp / "node.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "COVIDCT_PACS_PORT": str(self.port),
            "COVIDCT_PACS_HTTP_PORT": str(self.http_port),
            "COVIDCT_PACS_SPOOL_DIR": str(self.spool),
            "COVIDCT_PACS_GATEWAY_URL": gateway,
            "COVIDCT_PACS_DESTINATION": destination,
            "COVIDCT_PACS_AUDIT_SALT": SALT,
            "COVIDCT_PACS_TOP_K": str(TOP_K),
            "COVIDCT_PACS_SEND_RETRY_INITIAL_S": "0.5",
            "COVIDCT_PACS_SEND_RETRY_MAX_S": "1",
            **{f"COVIDCT_PACS_{k}": str(v) for k, v in env.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli", "pacs", "serve"],
                env=self.env,
                cwd=self.spool.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: echoscu(self.port).returncode == 0, timeout=60, every=0.2)
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, nothing is finished."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def status(self) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.http_port}/status", timeout=10)
        r.raise_for_status()
        return cast(dict[str, Any], r.json())

    def records(self) -> list[dict[str, Any]]:
        """The series records as the spool holds them on disk."""
        found = []
        for path in self.spool.glob("series/*/record.json"):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # being replaced right now
                continue
        return found

    def held(self) -> int:
        return len(list(self.spool.glob("series/*/*.dcm")))

    def events(self) -> list[dict[str, Any]]:
        audit = self.spool / "audit.jsonl"
        return [json.loads(line) for line in audit.read_text().splitlines()]


@contextmanager
def node_process(tmp: Path, gateway: str, pacs: Orthanc, **env: object) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp, gateway, f"PACS@127.0.0.1:{pacs.dicom_port}", **env)
    try:
        yield node
    finally:
        node.stop()


def header(files: list[Path]) -> pydicom.Dataset:
    return pydicom.dcmread(files[0], stop_before_pixels=True)


def model_version(repository: Path) -> str:
    """The one version the session's export holds (the gateway answers with it)."""
    (version,) = {p.name for p in repository.glob("*/*") if p.is_dir() and p.name.isdigit()}
    return version


def results(pacs: Orthanc, study_uid: str) -> tuple[set[str], set[str]]:
    """SOP Instance UIDs of the SR and of the Secondary Captures, once all are there."""

    def uids(modality: str) -> set[str]:
        found = pacs.find("Instance", expand=True, StudyInstanceUID=study_uid, Modality=modality)
        return {str(i["MainDicomTags"]["SOPInstanceUID"]) for i in found}

    def both() -> tuple[set[str], set[str]] | None:
        srs, scs = uids("SR"), uids("OT")
        return (srs, scs) if srs and len(scs) >= TOP_K else None

    return cast(tuple[set[str], set[str]], wait_for(both, timeout=300, every=0.5))


def expected(series_uid: str, version: str) -> tuple[set[str], set[str]]:
    uids = ResultUids(series_uid, version)
    return {uids.sr_instance}, {uids.sc_instance(i) for i in range(1, TOP_K + 1)}


def test_a_node_killed_mid_series_and_mid_processing_files_exactly_one_result(
    server, repository: Path, tmp_path: Path
) -> None:
    folder = fixture_series(tmp_path / "series", 24)
    files = sorted(folder.glob("*.dcm"))
    first = header(files)
    with (
        running_gateway(GatewaySettings(triton_url=server.grpc_address)) as gateway,
        running_orthanc(tmp_path / "pacs") as pacs,
        node_process(tmp_path, gateway, pacs, STABLE_S=3) as node,
    ):
        node.start()
        scanner = ["storescu", "-xs", "-aet", "SCANNER", "-aec", "COVIDCT", "+sd", "+r"]
        sender = subprocess.Popen(
            [*scanner, "127.0.0.1", str(node.port), str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: node.held() >= 4, every=0.005)
        node.kill()  # mid-association
        sender.wait(timeout=60)
        held = node.held()
        assert 4 <= held < len(files), f"not killed mid-series: {held}"

        node.start()  # the same spool: the series is still receiving
        again = storescu(node.port, folder)
        assert again.returncode == 0, again.stderr
        wait_for(lambda: [r for r in node.records() if r["state"] == "processing"], 60, 0.01)
        node.kill()  # mid-processing: inference, SR, SC or the outbox half-way

        node.start()  # queued again on recovery
        srs, scs = results(pacs, str(first.StudyInstanceUID))
        wait_for(lambda: node.status()["outbox_depth"] == 0, timeout=60, every=0.5)
        time.sleep(2)  # a duplicate would be on its way by now
        srs, scs = results(pacs, str(first.StudyInstanceUID))
        assert (srs, scs) == expected(str(first.SeriesInstanceUID), model_version(repository))
        assert pacs.instance_count() == 1 + TOP_K
        (record,) = node.records()
        assert record["state"] == "done" and record["instance_count"] == len(files)
        events = [e["event"] for e in node.events()]
        assert events.count("complete") == 1 and events.count("processed") == 1, events


def test_results_wait_in_the_outbox_while_the_pacs_is_down_and_arrive_once(
    server, repository: Path, tmp_path: Path
) -> None:
    folder = fixture_series(tmp_path / "series", 24)
    first = header(sorted(folder.glob("*.dcm")))
    with (
        running_gateway(GatewaySettings(triton_url=server.grpc_address)) as gateway,
        running_orthanc(tmp_path / "pacs") as pacs,
        node_process(tmp_path, gateway, pacs, STABLE_S=1) as node,
    ):
        node.start()
        pacs.stop()  # the storage stays
        sent = storescu(node.port, folder)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: node.status()["outbox_depth"] == 1 + TOP_K, timeout=120, every=0.5)
        time.sleep(3)  # several tries (0.5 s, then 1 s apart), all refused
        assert node.status()["outbox_depth"] == 1 + TOP_K
        items = [json.loads(p.read_text()) for p in (node.spool / "outbox").glob("*.json")]
        assert len(items) == 1 + TOP_K and all(i["attempts"] >= 2 for i in items), items
        assert all(i["state"] == "pending" and i["last_error"] for i in items), items

        pacs.start()  # the same ports and storage
        srs, scs = results(pacs, str(first.StudyInstanceUID))
        wait_for(lambda: node.status()["outbox_depth"] == 0, timeout=60, every=0.5)
        assert (srs, scs) == expected(str(first.SeriesInstanceUID), model_version(repository))
        assert pacs.instance_count() == 1 + TOP_K
        news = pacs.get("/changes?limit=1000")["Changes"]
        assert sum(c["ChangeType"] == "NewInstance" for c in news) == 1 + TOP_K
        wait_for(lambda: node.status()["series"][0]["delivery"] == "delivered", 30, 0.5)
        items = [json.loads(p.read_text()) for p in (node.spool / "outbox").glob("*.json")]
        assert all(i["state"] == "delivered" for i in items), items


def test_a_series_that_never_completes_is_skipped_with_its_reason_and_gets_no_result(
    server, tmp_path: Path
) -> None:
    endless = sorted(fixture_series(tmp_path / "endless", 24, seed="endless").glob("*.dcm"))
    cut = sorted(fixture_series(tmp_path / "cut", 24, seed="cut").glob("*.dcm"))[:12]
    with (
        running_gateway(GatewaySettings(triton_url=server.grpc_address)) as gateway,
        running_orthanc(tmp_path / "pacs") as pacs,
    ):
        settings = node_settings(
            tmp_path,
            gateway_url=gateway,
            destination=f"PACS@127.0.0.1:{pacs.dicom_port}",
            stable_s=1.5,
            max_series_s=4.0,
        )
        outbox = open_outbox(settings).start()
        node = build_node(settings, outbox)
        node.start(http=False)
        try:
            for f in cut:  # a sender that stops mid-way: complete after STABLE_S, too short
                assert storescu(node.receiver.port, f).returncode == 0
            endless_uid = str(header(endless).SeriesInstanceUID)
            started = time.monotonic()
            skipped: list[Any] = []
            # A sender that never stops: one instance every 0.5 s, the series again and again.
            # Stopped only once the series is seen skipped between two sends, so none is in
            # flight (one stored after the skip reopens the series: a new window).
            while not skipped and time.monotonic() - started < 30:
                f = endless[int((time.monotonic() - started) * 2) % len(endless)]
                assert storescu(node.receiver.port, f).returncode == 0
                time.sleep(0.5)
                skipped = [
                    r for r in node.spool.records()
                    if r.series_uid == endless_uid and r.state.value == "skipped"
                ]  # fmt: skip
            assert skipped, "still receiving after 30 s"
            reason = "still receiving after 4 s (MAX_SERIES_S)"
            assert skipped[0].reason == reason
            time.sleep(settings.stable_s + 2)  # nothing more arrives: nothing more happens
            states = {r.series_uid: (r.state.value, r.reason) for r in node.spool.records()}
            assert states == {
                endless_uid: ("skipped", reason),
                str(header(cut).SeriesInstanceUID): ("skipped", "12 slices, fewer than 20"),
            }
            assert pacs.instance_count() == 0 and outbox.depth == 0
            events = [json.loads(line) for line in settings.audit_path.read_text().splitlines()]
            skips = [e for e in events if e["event"] == "skipped"]
            assert {e["reason"] for e in skips} == {reason, "12 slices, fewer than 20"}
            first_skip = min(
                dt.datetime.fromisoformat(e["time"]).timestamp()
                for e in skips
                if e["reason"] == reason
            )
            waited = first_skip - skipped[0].first_received
            assert 4.0 <= waited < 6.0, waited
            assert not [e for e in events if e["event"] in ("complete", "processed")]
        finally:
            node.stop(drain_s=5)
            outbox.stop()


def corrupt(path: Path) -> None:
    """Keep the header, the JPEG Lossless markers and the fragment's length; zero the
    entropy-coded data: a file every DICOM tool reads whose pixels do not decode."""
    ds = pydicom.dcmread(path)
    fragment = list(generate_fragments(ds.PixelData))[-1]
    ds.PixelData = encapsulate([fragment[:20] + bytes(len(fragment) - 20)])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())


def test_a_slice_that_does_not_decode_is_named_in_the_sr_and_left_out_of_the_verdict(
    server, tmp_path: Path
) -> None:
    folder = fixture_series(tmp_path / "series", 24)
    files = sorted(folder.glob("*.dcm"))
    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    bad = files[5]
    bad_uid = str(pydicom.dcmread(bad, stop_before_pixels=True).SOPInstanceUID)
    corrupt(bad)
    first = header(files)
    with (
        running_gateway(GatewaySettings(triton_url=server.grpc_address)) as gateway,
        running_orthanc(tmp_path / "pacs") as pacs,
    ):
        settings = node_settings(
            tmp_path, gateway_url=gateway, destination=f"PACS@127.0.0.1:{pacs.dicom_port}"
        )
        outbox = open_outbox(settings).start()
        node = build_node(settings, outbox)
        node.start(http=False)
        try:
            sent = storescu(node.receiver.port, folder)
            assert sent.returncode == 0, sent.stderr
            srs, _ = results(pacs, str(first.StudyInstanceUID))
            sr_file = tmp_path / "sr.dcm"
            sr_file.write_bytes(pacs.instance_file(pacs.instances_by_sop_uid(next(iter(srs)))[0]))
            sr = cast(hd.sr.Comprehensive3DSR, hd.sr.srread(sr_file))
            not_used = _texts(sr).get("Slices not used", "")
            assert bad_uid in not_used, not_used
            report = cast(hd.sr.MeasurementReport, sr.content)
            groups = list(report.get_image_measurement_groups())
            order = [
                str(g.source_images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                for g in groups[1:]
            ]
            assert sorted(order) == sorted(set(by_uid) - {bad_uid}), "the others, each once"
            answer = _study_answer(gateway, [by_uid[u] for u in order])
            assert _probabilities(groups[0]) == pytest.approx(
                answer["summary"]["probabilities"], abs=1e-6
            )
        finally:
            node.stop(drain_s=5)
            outbox.stop()
