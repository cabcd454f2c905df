"""Operations and privacy: /status and /metrics over HTTP, ``covidct pacs status``, the audit
log, and no patient data or clear UID in any log line or status answer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pydicom
import pytest
from typer.testing import CliRunner

from cli.main import app
from dicomnode.audit import AuditLog, hash_uid, resolve_salt
from dicomnode.records import SeriesState
from tests.dicomnode.scanner import (
    SALT,
    Recorder,
    echoscu,
    node_settings,
    running_node,
    storescu,
)
from tests.dicomnode.series_data import ct_series, fixture_series
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def secrets_of(folder: Path) -> set[str]:
    """What must never appear in a log: names, ids, birth dates and every UID, in the clear."""
    found: set[str] = set()
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            if str(ds.get(keyword, "")).strip():
                found.add(str(ds.get(keyword)))
        found |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    return found


def test_hash_uid_is_keyed_stable_and_short(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert hash_uid(uid, "a") == hash_uid(uid, "a") != hash_uid(uid, "b")
    assert len(hash_uid(uid, "a")) == 16 and uid not in hash_uid(uid, "a")
    salt = resolve_salt(tmp_path, None)
    assert resolve_salt(tmp_path, None) == salt and len(salt) == 64  # kept across restarts
    assert (tmp_path / "salt").stat().st_mode & 0o077 == 0
    assert resolve_salt(tmp_path, "configured") == "configured"


def test_the_audit_log_hashes_uids(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", SALT)
    log.write("processed", calling_ae="SCANNER", study_uid="1.2.3", series_uid="1.2.4",
              instances=3, verdict="Normal", model_version="2", result_uids=["1.9.1"],
              delivery="queued")  # fmt: skip
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert entry["study"] == hash_uid("1.2.3", SALT) and entry["series"] == hash_uid("1.2.4", SALT)
    assert set(entry) == {"time", "event", "calling_ae", "study", "series", "instances",
                          "verdict", "model_version", "result_uids", "delivery"}  # fmt: skip
    assert "1.2.3" not in line and "1.2.4" not in line


def test_status_metrics_and_the_audit_log_carry_no_patient_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = ct_series(tmp_path)
    secret = secrets_of(folder)
    caplog.set_level(logging.DEBUG)
    depth = [2]
    settings = node_settings(tmp_path, allowed_ae_titles=["SCANNER"])
    with running_node(settings, Recorder(), http=True, outbox_depth=lambda: depth[0]) as node:
        assert node.http_server is not None
        base = f"http://127.0.0.1:{node.http_server.port}"
        assert storescu(node.receiver.port, folder).returncode == 0
        echoscu(node.receiver.port, aet="INTRUDER")
        wait_for(lambda: node.status()["counts"].get("done"))
        status = httpx.get(f"{base}/status").json()

        def counted() -> str | None:  # done in the spool a moment before the metrics say so
            text = httpx.get(f"{base}/metrics").text
            return text if "covidct_pacs_end_to_end_seconds_count 1.0" in text else None

        metrics = wait_for(counted)
        assert httpx.get(f"{base}/other").status_code == 404
    assert status["counts"] == {"done": 1} and status["outbox_depth"] == 2
    assert status["dicom_port"] == node.receiver.port and status["ae_title"] == "COVIDCT"
    (series,) = status["series"]
    assert series["state"] == "done" and series["verdict"] == "COVID-19"
    received = len(list(folder.glob("*.dcm")))
    assert series["instances"] == received and len(secret) >= received + 2
    assert any("INTRUDER" in e["error"] for e in status["last_errors"])
    assert f"covidct_pacs_instances_received_total {received}.0" in metrics
    assert "covidct_pacs_series_completed_total 1.0" in metrics
    assert "covidct_pacs_series_done_total 1.0" in metrics
    assert "covidct_pacs_series_skipped_total 0.0" in metrics
    assert "covidct_pacs_outbox_depth 2.0" in metrics
    assert "covidct_pacs_end_to_end_seconds_count 1.0" in metrics
    assert 'covidct_pacs_associations_total{result="refused"} 1.0' in metrics
    logs = "\n".join(r.getMessage() for r in caplog.records)
    audit = settings.audit_path.read_text()
    assert "complete" in logs and "refused" in logs  # the log was captured
    for text in (json.dumps(status), audit, logs):
        leaked = [s for s in secret if s in text]
        assert not leaked, leaked


def test_pacs_status_prints_the_status(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, min_slices=50)
    with running_node(settings, Recorder(), http=True) as node:
        storescu(node.receiver.port, fixture_series(tmp_path / "s", 3))
        wait_for(lambda: node.status()["counts"].get(SeriesState.SKIPPED.value))
        assert node.http_server is not None
        url = f"http://127.0.0.1:{node.http_server.port}/status"
        result = CliRunner().invoke(app, ["pacs", "status", "--url", url])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["counts"] == {"skipped": 1} and "fewer than 50" in body["series"][0]["reason"]
    down = CliRunner().invoke(app, ["pacs", "status", "--url", url, "--timeout", "1"])
    assert down.exit_code == 2
