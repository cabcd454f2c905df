"""DICOMweb out and pull mode against the real Orthanc with its DICOMweb plugin (Debian's
``orthanc-dicomweb``): results STOWed from the outbox, CT series found with QIDO-RS and
retrieved with WADO-RS into the spool; and an archive that answers malformed DICOM JSON, or
does not answer in time (a small local HTTP server playing it)."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from dicomnode.audit import AuditLog
from dicomnode.dicomweb import DicomWebClient, DicomWebError, stow_outcomes
from dicomnode.intake import Intake
from dicomnode.outbox import DELIVERED, PENDING, Outbox
from dicomnode.pull import Puller
from dicomnode.spool import Spool
from dicomnode.status import NodeMetrics
from dicomnode.storescu import REFUSED, STORED, TRANSIENT, TRANSIENT_STATUS
from tests.dicomnode.orthanc import Orthanc
from tests.dicomnode.series_data import fixture_series

pytestmark = pytest.mark.integration


def dated_series(dest: Path, slices: int) -> list[Path]:
    """The fixture series' files (dated FIXTURE_DATE, 20261201: pull mode searches by date)."""
    return sorted(fixture_series(dest, slices).glob("*.dcm"))


def _intake(tmp: Path) -> Intake:
    spool = Spool(
        tmp / "spool", max_instance_bytes=1 << 26, max_series_instances=100, max_spool_bytes=1 << 30
    )
    return Intake(spool, AuditLog(tmp / "audit.jsonl", "salt"), NodeMetrics())


def test_the_outbox_stows_results_into_the_archive_and_settles_each_item(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    files = dated_series(tmp_path / "s", 3)
    with Outbox(tmp_path / "outbox", None, stow_url=orthanc.dicomweb_url) as box:
        items = [box.put(f, group="g") for f in files]
        assert all(i.destination == orthanc.dicomweb_url for i in items)
        assert box.wait_idle(30)
        assert {box.get(i.id).state for i in items} == {DELIVERED}  # type: ignore[union-attr]
    for f in files:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert len(orthanc.instances_by_sop_uid(uid)) == 1


def test_beside_a_dimse_destination_each_object_is_two_items(tmp_path: Path) -> None:
    from dicomnode.settings import parse_destination

    [file] = dated_series(tmp_path / "s", 1)
    box = Outbox(
        tmp_path / "outbox",
        parse_destination("PACS@127.0.0.1:1"),
        stow_url="http://127.0.0.1:1/dicom-web",
    )
    box.put(file)
    assert sorted(i.destination for i in box.items()) == [
        "PACS@127.0.0.1:1",
        "http://127.0.0.1:1/dicom-web",
    ]
    assert box.depth == 2 and {i.state for i in box.items()} == {PENDING}


def test_pull_retrieves_a_series_once_it_is_stable_and_only_once(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    files = dated_series(tmp_path / "s", 5)
    for f in files[:3]:
        orthanc.upload(f.read_bytes())
    intake = _intake(tmp_path)
    state = tmp_path / "spool" / "pull.json"
    client = DicomWebClient(orthanc.dicomweb_url, timeout_s=10)
    puller = Puller(client, intake, state, "20261130", 1 << 26)
    assert puller.poll_once() == 0  # seen once: not yet known to be stable
    assert len(puller.seen) == 1
    for f in files[3:]:
        orthanc.upload(f.read_bytes())  # it grew meanwhile
    assert puller.poll_once() == 0
    assert puller.poll_once() == 1  # the same count twice: retrieved
    [record] = intake.spool.records()
    assert record.instance_count == 5 and record.calling_aes == ["WADO-RS"]
    assert puller.poll_once() == 0
    # a restart keeps the watermark and what was retrieved
    again = Puller(DicomWebClient(orthanc.dicomweb_url), intake, state, "20000101", 1 << 26)
    assert again.watermark == "20261201"
    assert again.poll_once() == 0 and again.poll_once() == 0
    assert json.loads(state.read_text())["watermark"] == "20261201"
    assert (state.stat().st_mode & 0o777) == 0o600


class Archive(http.server.BaseHTTPRequestHandler):
    """A DICOMweb server that answers what the test tells it to."""

    body = b"[]"
    delay_s = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay_s)
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def archive(body: bytes, delay_s: float = 0.0) -> Iterator[str]:
    handler = type("Handler", (Archive,), {"body": body, "delay_s": delay_s})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


GOOD = {
    "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
    "0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
    "00080021": {"vr": "DA", "Value": ["20261201"]},
    "00201209": {"vr": "IS", "Value": [3]},
}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>not json</html>", "not JSON"),
        (b'{"0020000E": {"vr": "UI"}}', "not a JSON array of objects"),
        (b"[1, 2]", "not a JSON array of objects"),
    ],
)
def test_a_malformed_answer_fails_the_poll_with_the_reason_and_changes_nothing(
    tmp_path: Path, body: bytes, message: str
) -> None:
    intake = _intake(tmp_path)
    with archive(body) as url:
        puller = Puller(
            DicomWebClient(url, timeout_s=5), intake, tmp_path / "p.json", None, 1 << 20
        )
        with pytest.raises(DicomWebError, match=message):
            puller.poll_once()
    assert puller.seen == {} and not (tmp_path / "p.json").exists()


def test_results_without_valid_uids_are_skipped_and_the_others_kept(tmp_path: Path) -> None:
    intake = _intake(tmp_path)
    bad_uid = {**GOOD, "0020000E": {"vr": "UI", "Value": ["not a uid"]}}
    bad_count = {
        **GOOD,
        "0020000E": {"vr": "UI", "Value": ["1.2.3.5"]},
        "00201209": {"vr": "IS", "Value": ["x"]},
    }
    with archive(json.dumps([bad_uid, GOOD, bad_count]).encode()) as url:
        puller = Puller(
            DicomWebClient(url, timeout_s=5), intake, tmp_path / "p.json", "20261201", 1 << 20
        )
        assert puller.poll_once() == 0
    assert list(puller.seen) == ["1.2.3.4"]
    errors = [e["error"] for e in intake.metrics.last_errors()]
    assert any("SeriesInstanceUID" in e for e in errors)
    assert any("NumberOfSeriesRelatedInstances" in e for e in errors)


def test_an_archive_that_does_not_answer_in_time_is_an_error_not_a_hang(tmp_path: Path) -> None:
    with archive(b"[]", delay_s=3.0) as url:
        puller = Puller(
            DicomWebClient(url, timeout_s=0.5),
            _intake(tmp_path),
            tmp_path / "p.json",
            None,
            1 << 20,
        )
        started = time.monotonic()
        with pytest.raises(DicomWebError, match="Timeout"):
            puller.poll_once()
        assert time.monotonic() - started < 2.5


def _answer(stored: list[str], failed: dict[str, int]) -> bytes:
    def item(uid: str, reason: int | None = None) -> dict:
        d = {"00081150": {"vr": "UI", "Value": ["1.2"]}, "00081155": {"vr": "UI", "Value": [uid]}}
        if reason is not None:
            d["00081197"] = {"vr": "US", "Value": [reason]}
        return d

    return json.dumps(
        {
            "00081199": {"vr": "SQ", "Value": [item(u) for u in stored]},
            "00081198": {"vr": "SQ", "Value": [item(u, r) for u, r in failed.items()]},
        }
    ).encode()


@pytest.mark.parametrize(
    ("status", "body", "kinds"),
    [
        (200, b"", [STORED, STORED, STORED]),
        (202, _answer(["a", "c"], {"b": 0xA700}), [STORED, TRANSIENT_STATUS, STORED]),
        (
            409,
            _answer([], {"a": 0xC000, "b": 0x0110, "c": 0x0122}),
            [REFUSED, TRANSIENT_STATUS, REFUSED],
        ),
        (409, b"garbage", [REFUSED, REFUSED, REFUSED]),
        (503, b"", [TRANSIENT] * 3),
        (401, b"", [TRANSIENT] * 3),
        (413, b"", [REFUSED] * 3),
    ],
)
def test_stow_answers_settle_each_instance(status: int, body: bytes, kinds: list[str]) -> None:
    outcomes = stow_outcomes(status, body, ["a", "b", "c"], "http://pacs/dicom-web/studies")
    assert [o.kind for o in outcomes] == kinds


def test_a_pulled_instance_is_checked_like_a_stowed_one(tmp_path: Path, orthanc: Orthanc) -> None:
    """An SC in a CT series of the archive is refused (0x0122), the CT kept."""
    files = dated_series(tmp_path / "s", 2)
    ds = pydicom.dcmread(files[1])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    orthanc.upload(files[0].read_bytes())
    orthanc.upload(out.getvalue())
    intake = _intake(tmp_path)
    puller = Puller(
        DicomWebClient(orthanc.dicomweb_url), intake, tmp_path / "p.json", "20261201", 1 << 26
    )
    assert puller.poll_once() == 0 and puller.poll_once() == 1
    assert intake.spool.records()[0].instance_count == 1
    assert intake.metrics.instances_refused.labels("0x0122")._value.get() == 1


def test_a_waiting_series_deleted_from_the_archive_is_forgotten(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    import httpx

    files = dated_series(tmp_path / "s", 2)
    orthanc.upload(files[0].read_bytes())
    puller = Puller(
        DicomWebClient(orthanc.dicomweb_url),
        _intake(tmp_path),
        tmp_path / "p.json",
        "20261201",
        1 << 26,
    )
    assert puller.poll_once() == 0 and len(puller.seen) == 1
    for study in orthanc.get("/studies"):
        httpx.delete(f"{orthanc.url}/studies/{study}", timeout=30).raise_for_status()
    assert puller.poll_once() == 0 and puller.seen == {}
    assert json.loads((tmp_path / "p.json").read_text())["series"] == {}
