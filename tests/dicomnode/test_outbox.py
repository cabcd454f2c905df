"""The durable outbox against the real Orthanc: delivered and found back by SOP Instance UID,
kept with backoff while Orthanc is down and stored exactly once when it returns, resumed by a
new outbox on the same folder, refusals recorded; DIMSE statuses from a pynetdicom SCP."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from dicomnode.outbox import DELIVERED, PENDING, REFUSED, Item, Outbox, OutboxError
from dicomnode.settings import Destination
from dicomnode.storescu import REFUSED as REFUSED_NOW
from dicomnode.storescu import STORED, TRANSIENT, TRANSIENT_STATUS, classify
from serving.server import free_port
from tests.dicomnode.orthanc import Orthanc
from tests.dicomnode.series_data import fixture_series
from tests.waiting import poll

PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.8.498.1.999"  # no PACS knows it


def sc_object(sop_class: str = SecondaryCaptureImageStorage, study: str | None = None) -> Dataset:
    """A small Secondary Capture (8x8 grey), as the node's results are written."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "OUTBOX-1", "Outbox^Test", "OT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.arange(64, dtype=np.uint8).tobytes()
    return ds


def outbox_for(folder: Path, port: int, aet: str = "PACS", **options: Any) -> Outbox:
    options = {"initial_s": 0.2, "max_s": 0.8, "timeout_s": 5.0, **options}
    return Outbox(folder, Destination(aet, "127.0.0.1", port), "COVIDCT", **options)


def test_results_are_delivered_and_found_back_by_their_sop_instance_uid(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    study = generate_uid()
    objects = [sc_object(study=study), sc_object(study=study)]
    ct = next(fixture_series(tmp_path / "ct", slices=1).glob("*.dcm"))  # JPEG Lossless
    changes: list[Item] = []
    box = outbox_for(tmp_path / "outbox", orthanc.dicom_port, on_change=changes.append)
    items = [box.put(ds, group="series-a") for ds in objects] + [box.put(ct, group="series-a")]
    assert box.depth == 3 and box.group_state("series-a") == PENDING
    assert all((tmp_path / "outbox" / f"{i.id}.dcm").exists() for i in items)
    with box:
        assert box.wait_idle(20)
    for item, expected in zip(items, [*objects, pydicom.dcmread(ct)], strict=True):
        found = orthanc.instances_by_sop_uid(expected.SOPInstanceUID)
        assert len(found) == 1
        stored = pydicom.dcmread(BytesIO(orthanc.instance_file(found[0])))
        assert stored.SOPInstanceUID == expected.SOPInstanceUID
        assert stored.StudyInstanceUID == expected.StudyInstanceUID
        record = box.get(item.id)
        assert record is not None and record.state == DELIVERED and record.attempts == 1
        assert record.status == 0 and record.delivered_at is not None
        assert not (tmp_path / "outbox" / f"{item.id}.dcm").exists()  # delivered: payload gone
    assert box.counts() == {PENDING: 0, DELIVERED: 3, REFUSED: 0}
    assert box.group_state("series-a") == DELIVERED and box.group_state("other") is None
    assert [c.state for c in changes] == [PENDING] * 3 + [DELIVERED] * 3
    assert len(orthanc.find("Series", StudyInstanceUID=study)) == 2
    # The same object again (a reprocessing): sent again, still one instance in Orthanc.
    again = box.put(objects[0])
    assert again.id == items[0].id and box.depth == 1
    with box:
        assert box.wait_idle(20)
    assert orthanc.instance_count() == 3
    assert box.forget(older_than_s=0) == 3 and box.items() == []


def test_while_orthanc_is_down_the_result_waits_with_backoff_then_is_stored_once(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    orthanc.stop(kill=True)
    tries: list[tuple[float, Item]] = []
    box = outbox_for(
        tmp_path / "outbox", orthanc.dicom_port,
        on_change=lambda item: tries.append((time.time(), item)),
    )  # fmt: skip
    ds = sc_object()
    item = box.put(ds)
    with box:
        assert poll(lambda: len(tries) >= 5, 10), tries  # the put and four failed tries
        assert box.depth == 1
        failed = tries[1:]
        for n, (at, record) in enumerate(failed, start=1):
            assert record.state == PENDING and record.attempts == n
            assert "no connection" in (record.last_error or "")
            # 0.2 s, doubled each try, capped at 0.8 s.
            assert record.next_attempt - at == pytest.approx(min(0.8, 0.2 * 2 ** (n - 1)), abs=0.05)
        for (before, _), (after, _) in itertools.pairwise(failed):
            assert after - before >= 0.19  # no try before its time
        orthanc.start()
        assert box.wait_idle(15)
    final = box.get(item.id)
    assert final is not None and final.state == DELIVERED and final.attempts >= 5
    assert len(orthanc.instances_by_sop_uid(ds.SOPInstanceUID)) == 1
    assert orthanc.instance_count() == 1


def test_an_outbox_reopened_after_a_crash_delivers_what_was_pending(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    folder = tmp_path / "outbox"
    first = outbox_for(folder, orthanc.dicom_port)
    objects = [sc_object(), sc_object()]
    for ds in objects:
        first.put(ds)
    del first  # a crash: the sender never ran
    # What a crash inside put can leave: a payload without its record, a temporary file;
    # and a record that cannot be read.
    (folder / "0123456789abcdef0123456789abcdef.dcm").write_bytes(b"half")
    (folder / ".tmp-x.json").write_text("{")
    (folder / "broken.json").write_text("{not json")
    second = outbox_for(folder, orthanc.dicom_port)
    assert second.depth == 2
    assert not (folder / "0123456789abcdef0123456789abcdef.dcm").exists()
    assert not (folder / ".tmp-x.json").exists()
    assert (folder / "broken.unreadable").exists()
    with second:
        assert second.wait_idle(20)
    for ds in objects:
        assert len(orthanc.instances_by_sop_uid(ds.SOPInstanceUID)) == 1
    assert orthanc.instance_count() == 2
    assert outbox_for(folder, orthanc.dicom_port).counts()[DELIVERED] == 2  # kept on disk


def test_a_sop_class_orthanc_refuses_is_recorded_and_not_retried(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    box = outbox_for(tmp_path / "outbox", orthanc.dicom_port)
    item = box.put(sc_object(sop_class=PRIVATE_SOP_CLASS))
    with box:
        assert box.wait_idle(10)
        time.sleep(0.6)  # past a few backoff periods: no second try
    record = box.get(item.id)
    assert record is not None and record.state == REFUSED and record.attempts == 1
    assert "does not accept SOP class" in (record.last_error or "")
    assert not (tmp_path / "outbox" / f"{item.id}.dcm").exists()
    assert orthanc.instance_count() == 0


def test_a_rejected_association_is_retried(orthanc_factory, tmp_path: Path) -> None:
    pacs = orthanc_factory(extra={"DicomCheckCalledAet": True})
    box = outbox_for(tmp_path / "outbox", pacs.dicom_port, aet="NOT-PACS")
    item = box.put(sc_object())
    box.deliver_due()
    record = box.get(item.id)
    assert record is not None and record.state == PENDING and record.attempts == 1
    assert "association rejected by NOT-PACS@127.0.0.1" in (record.last_error or "")


@pytest.fixture
def scripted_scp() -> Iterator[tuple[int, dict[str, list[int]], list[str]]]:
    """A pynetdicom storage SCP answering each SOP Instance UID with the statuses scripted for
    it, in order (then success); yields (port, script, the UIDs stored)."""
    script: dict[str, list[int]] = {}
    stored: list[str] = []
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)  # type: ignore[union-attr]
        with lock:
            status = script.get(uid, []).pop(0) if script.get(uid) else 0x0000
            if status == 0x0000:
                stored.append(uid)
        return status

    ae = AE(ae_title="SCRIPTED")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    try:
        yield port, script, stored
    finally:
        server.shutdown()


def test_dimse_failure_statuses_transient_retried_permanent_recorded(
    scripted_scp, tmp_path: Path
) -> None:
    port, script, stored = scripted_scp
    box = outbox_for(tmp_path / "outbox", port, aet="SCRIPTED", initial_s=0.05, max_refusals=3)
    busy, broken, failing = sc_object(), sc_object(), sc_object()
    script[busy.SOPInstanceUID] = [0xA700, 0xA701]  # out of resources twice, then stored
    script[broken.SOPInstanceUID] = [0xC000]  # cannot understand: permanent
    script[failing.SOPInstanceUID] = [0x0110] * 10  # processing failure, every time
    items = [box.put(ds) for ds in (busy, broken, failing)]
    with box:
        assert box.wait_idle(10)
    busy_r, broken_r, failing_r = (box.get(i.id) for i in items)
    assert busy_r is not None and busy_r.state == DELIVERED and busy_r.attempts == 3
    assert broken_r is not None and broken_r.state == REFUSED and broken_r.attempts == 1
    assert broken_r.status == 0xC000 and "0xC000" in (broken_r.last_error or "")
    assert failing_r is not None and failing_r.state == REFUSED and failing_r.refusals == 3
    assert stored == [busy.SOPInstanceUID]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (0x0000, STORED),
        (0xB000, STORED),
        (0xB007, STORED),
        (0xA700, TRANSIENT_STATUS),
        (0xA7FF, TRANSIENT_STATUS),
        (0x0110, TRANSIENT_STATUS),
        (0x0213, TRANSIENT_STATUS),
        (0xA900, REFUSED_NOW),
        (0xC123, REFUSED_NOW),
        (0x0122, REFUSED_NOW),
        (0x0124, REFUSED_NOW),
        (0xFF00, TRANSIENT),
    ],
)
def test_statuses_are_classified(status: int, kind: str) -> None:
    assert classify(status).kind == kind


def test_put_refuses_what_it_cannot_send(tmp_path: Path) -> None:
    box = outbox_for(tmp_path / "outbox", free_port())
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    no_uid = sc_object()
    del no_uid.SOPInstanceUID
    for bad in (junk, no_uid, tmp_path / "missing.dcm"):
        with pytest.raises(OutboxError):
            box.put(bad)
    assert box.items() == [] and list((tmp_path / "outbox").iterdir()) == []


def test_the_orthanc_harness_finds_results_and_routes_a_study_on_to_the_node(
    orthanc_factory, scripted_scp, tmp_path: Path
) -> None:
    """What the node's tests lean on: Orthanc with the node registered as its modality,
    queried over REST and DICOMweb, sending a stored study on (here to a pynetdicom SCP)."""
    port, _, stored = scripted_scp
    pacs = orthanc_factory(node_aet="SCRIPTED", node_port=port)
    study = generate_uid()
    objects = [sc_object(study=study), sc_object(study=study)]
    box = outbox_for(tmp_path / "outbox", pacs.dicom_port)
    box.put(objects[0])
    box.deliver_due()
    pacs.upload(_encode(objects[1]))  # the REST route in
    assert len(pacs.wait_for_instances(study, count=2, timeout_s=10, Modality="OT")) == 2
    assert pacs.wait_for_instances(study, count=1, timeout_s=0, Modality="SR") == []
    qido = httpx.get(f"{pacs.dicomweb_url}/studies/{study}/series", timeout=10).json()
    assert len(qido) == 2
    [study_id] = pacs.find("Study", StudyInstanceUID=study)
    pacs.store_to_node(study_id)
    assert sorted(stored) == sorted(ds.SOPInstanceUID for ds in objects)


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_without_a_destination_results_are_kept_then_sent_where_one_is_set(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    folder = tmp_path / "outbox"
    held = Outbox(folder, None, "COVIDCT", initial_s=0.2)
    ds = sc_object()
    item = held.put(ds)
    with held:
        time.sleep(0.3)
        assert held.depth == 1 and held.deliver_due() == 0
    assert held.get(item.id).attempts == 0  # type: ignore[union-attr]
    with outbox_for(folder, orthanc.dicom_port) as box:
        assert box.wait_idle(10)
    assert len(orthanc.instances_by_sop_uid(ds.SOPInstanceUID)) == 1


def test_a_payload_damaged_on_disk_is_refused_not_retried(tmp_path: Path) -> None:
    box = outbox_for(tmp_path / "outbox", free_port())
    item = box.put(sc_object())
    (tmp_path / "outbox" / f"{item.id}.dcm").write_bytes(b"\0" * 10)
    assert box.deliver_due() == 0
    record = box.get(item.id)
    assert record is not None and record.state == REFUSED
    assert "unreadable" in (record.last_error or "")
