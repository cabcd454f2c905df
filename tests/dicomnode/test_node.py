"""The node's run loop with the real storescu: completion after STABLE_S, selection, the
worker and its retries, restart recovery on the same spool, purging, and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from dicomnode.node import Node, Outcome
from dicomnode.records import SeriesRecord, SeriesState
from serving.server import free_port
from tests.dicomnode.scanner import (
    Recorder,
    echoscu,
    node_settings,
    running_node,
    storescu,
)
from tests.dicomnode.series_data import ct_series, fixture_series
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def events(node: Node) -> list[str]:
    lines = node.settings.audit_path.read_text().splitlines()
    return [json.loads(line)["event"] for line in lines]


def the_record(node: Node, state: SeriesState) -> SeriesRecord:
    """The node's one series, once it is in ``state``."""
    found: list[SeriesRecord] = wait_for(
        lambda: [r for r in node.spool.records() if r.state is state]
    )
    assert len(found) == 1, found
    return found[0]


def test_a_series_completes_after_stable_s_and_is_processed_once_in_order(
    tmp_path: Path,
) -> None:
    folder = ct_series(tmp_path)
    process = Recorder()
    with running_node(node_settings(tmp_path), process) as node:
        done = storescu(node.receiver.port, folder)
        assert done.returncode == 0, done.stderr
        sent = time.monotonic()
        assert node.spool.records()[0].state is SeriesState.RECEIVING
        record = the_record(node, SeriesState.DONE)
        assert time.monotonic() - sent >= node.settings.stable_s - 0.1
        time.sleep(0.3)
    (series,) = process.calls
    assert len(series.instances) == len(list(folder.glob("*.dcm")))
    z = [
        float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
        for p in series.paths
    ]
    assert z == sorted(z) and len(set(z)) == len(z)  # along the slice normal
    assert all(p.is_file() for p in series.paths)
    assert record.outcome["verdict"] == "COVID-19" and record.attempts == 1
    assert events(node) == ["complete", "processed"]
    assert node.metrics.end_to_end._sum.get() >= node.settings.stable_s


def test_a_series_that_does_not_qualify_is_skipped_with_its_reason(tmp_path: Path) -> None:
    process = Recorder()
    with running_node(node_settings(tmp_path, min_slices=50), process) as node:
        storescu(node.receiver.port, fixture_series(tmp_path / "s", 6))
        record = the_record(node, SeriesState.SKIPPED)
        time.sleep(0.3)
    assert record.reason == "6 slices, fewer than 50" and process.calls == []
    assert events(node) == ["skipped"]
    assert node.status()["series"][0]["reason"] == "6 slices, fewer than 50"


def test_a_failing_process_is_retried_then_marked_failed(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, process_attempts=2, min_slices=1)
    process = Recorder(fail=5)
    with running_node(settings, process) as node:
        storescu(node.receiver.port, fixture_series(tmp_path / "s", 3))
        record = the_record(node, SeriesState.FAILED)
    assert len(process.calls) == 2 and record.attempts == 2
    assert record.reason == "RuntimeError: attempt 2 fails on purpose"
    assert events(node) == ["complete", "failed"]
    assert node.status()["counts"] == {"failed": 1}


def test_a_retry_that_succeeds_ends_done(tmp_path: Path) -> None:
    process = Recorder(fail=1)
    with running_node(node_settings(tmp_path, min_slices=1), process) as node:
        storescu(node.receiver.port, fixture_series(tmp_path / "s", 2))
        record = the_record(node, SeriesState.DONE)
    assert len(process.calls) == 2 and record.attempts == 2 and record.reason is None


def test_a_restarted_node_completes_what_it_was_receiving(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, min_slices=1)
    first = Node(settings, Recorder())
    first.receiver.start()  # receives, but is stopped before the series is stable
    storescu(first.receiver.port, fixture_series(tmp_path / "s", 4))
    first.receiver.stop(1)
    process = Recorder()
    started = time.monotonic()
    with running_node(settings, process) as node:
        record = the_record(node, SeriesState.DONE)
        assert time.monotonic() - started >= settings.stable_s - 0.1  # STABLE_S again
    assert len(process.calls) == 1 and record.instance_count == 4


def test_a_series_left_processing_is_processed_again_exactly_once(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, min_slices=1)
    first = Node(settings, Recorder())
    first.receiver.start()
    storescu(first.receiver.port, fixture_series(tmp_path / "s", 3))
    first.receiver.stop(1)
    (key,) = [r.key for r in first.spool.records()]
    first.spool.update(key, state=SeriesState.COMPLETE)
    first.spool.update(key, state=SeriesState.PROCESSING)  # killed while processing
    process = Recorder()
    with running_node(settings, process) as node:
        the_record(node, SeriesState.DONE)
        time.sleep(settings.stable_s + 0.5)
    assert len(process.calls) == 1


def test_sources_are_deleted_once_delivered_and_a_resend_is_processed_again(
    tmp_path: Path,
) -> None:
    process = Recorder(outcome=Outcome(verdict="Normal", delivery="delivered"))
    folder = fixture_series(tmp_path / "s", 3)
    with running_node(node_settings(tmp_path, min_slices=1), process) as node:
        storescu(node.receiver.port, folder)
        record = the_record(node, SeriesState.DONE)
        assert node.sweep() == 1
        assert node.spool.used_bytes == 0 and not list(
            (node.spool.series_root / record.key).glob("*.dcm")
        )
        assert node.spool.record(record.key).purged_at is not None
        storescu(node.receiver.port, folder)  # the same series again
        wait_for(lambda: len(process.calls) == 2)
        wait_for(lambda: node.spool.record(record.key).state is SeriesState.DONE)
    assert process.calls[0].series_uid == process.calls[1].series_uid
    assert len(process.calls[1].instances) == 3
    assert events(node) == ["complete", "processed", "purged", "complete", "processed"]


def test_delivery_reported_later_starts_the_keep_hours_clock(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, min_slices=1, keep_hours=1.0)
    with running_node(settings, Recorder()) as node:
        storescu(node.receiver.port, fixture_series(tmp_path / "s", 2))
        record = the_record(node, SeriesState.DONE)
        assert node.sweep() == 0  # queued, not delivered
        node.delivered(record.series_uid, "delivered", ["1.2.3"])
        assert node.sweep() == 0  # kept for an hour
        node.spool.update(record.key, delivered_at=time.time() - 3601)
        assert node.sweep() == 1
    assert events(node)[-2:] == ["delivery", "purged"]


@pytest.mark.parametrize("busy", ["port", "http_port"])
def test_a_port_in_use_exits_2_naming_the_port_and_its_setting(tmp_path: Path, busy: str) -> None:
    """``python -m dicomnode`` (the image's entry point) with its DICOM or HTTP port held by
    another process: exit 2 with the port and its setting named, not a traceback."""
    import socket

    ports = {"port": free_port(), "http_port": free_port()}
    holder = socket.socket()
    holder.bind(("127.0.0.1", ports[busy]))
    holder.listen()
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
        "COVIDCT_PACS_HOST": "127.0.0.1",
        "COVIDCT_PACS_PORT": str(ports["port"]),
        "COVIDCT_PACS_HTTP_PORT": str(ports["http_port"]),
        "COVIDCT_PACS_SPOOL_DIR": str(tmp_path / "spool"),
    }
    with holder:
        done = subprocess.run(
            [sys.executable, "-m", "dicomnode"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    setting = {"port": "COVIDCT_PACS_PORT", "http_port": "COVIDCT_PACS_HTTP_PORT"}[busy]
    assert done.returncode == 2, done.stderr
    assert f"127.0.0.1:{ports[busy]}: in use (set {setting})" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_node_whose_http_port_is_taken_stops_listening_for_dicom(tmp_path: Path) -> None:
    import socket

    from dicomnode.errors import DicomNodeError

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        node = Node(node_settings(tmp_path, port=free_port(), http_port=taken), Recorder())
        with pytest.raises(DicomNodeError, match=f":{taken}: in use"):
            node.start()
    assert echoscu(node.settings.port).returncode != 0  # the receiver was stopped


@pytest.mark.slow
def test_sigterm_lets_the_association_in_progress_finish_and_keeps_the_spool(
    tmp_path: Path,
) -> None:
    folder = ct_series(tmp_path, slices=60)
    total = len(list(folder.glob("*.dcm")))
    port, http_port = free_port(), free_port()
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
        "COVIDCT_PACS_PORT": str(port),
        "COVIDCT_PACS_HTTP_PORT": str(http_port),
        "COVIDCT_PACS_SPOOL_DIR": str(tmp_path / "spool"),
        "COVIDCT_PACS_STABLE_S": "600",
    }
    command = [sys.executable, "-m", "cli", "pacs", "serve"]
    node = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: echoscu(port).returncode == 0, timeout=30, every=0.2)
        scanner = ["storescu", "-xs", "-aet", "SCANNER", "-aec", "COVIDCT", "+sd", "+r"]
        sender = subprocess.Popen(
            [*scanner, "127.0.0.1", str(port), str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        spooled = tmp_path / "spool" / "series"
        at_signal = wait_for(lambda: len(list(spooled.glob("*/*.dcm"))), every=0.01)
        node.send_signal(signal.SIGTERM)  # mid-series
        _, sent_err = sender.communicate(timeout=120)
        assert sender.returncode == 0, sent_err  # the association in progress finished
        assert echoscu(port).returncode != 0  # no new association
        _, log = node.communicate(timeout=60)
    finally:
        node.kill()
    assert node.returncode == 0, log
    assert "stopping" in log
    from dicomnode.settings import NodeSettings

    settings = NodeSettings(_env_file=None, spool_dir=tmp_path / "spool")  # type: ignore[call-arg]
    restarted = Node(settings, Recorder())
    (record,) = restarted.spool.records()
    assert at_signal < total and record.instance_count == total


def test_deliveries_the_outbox_reports_are_noted_at_the_sweep(tmp_path: Path) -> None:
    states: dict[str, str] = {}
    settings = node_settings(tmp_path, min_slices=1)
    with running_node(settings, Recorder(), delivery_state=states.get) as node:
        storescu(node.receiver.port, fixture_series(tmp_path / "s", 2))
        record = the_record(node, SeriesState.DONE)
        states[record.series_uid] = "pending"
        assert node.sweep() == 0 and node.status()["series"][0]["delivery"] == "pending"
        states[record.series_uid] = "delivered"
        assert node.sweep() == 1
        assert node.spool.record(record.key).delivered_at is not None
    assert events(node)[-3:] == ["delivery", "delivery", "purged"]
