"""The node's C-STORE SCP with the real DCMTK echoscu and storescu (and the real Orthanc for
the route a PACS uses); pynetdicom's SCU only where storescu cannot send what the test needs
(malformed UIDs, two series interleaved, an abort half-way)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from bench.pacs import FIXTURE_SLICE
from dicomnode.node import Node
from dicomnode.records import SeriesState, series_key
from dicomnode.series import ENHANCED_CT_IMAGE_STORAGE
from dicomnode.spool import JOURNAL
from tests.dicomnode.orthanc import Orthanc
from tests.dicomnode.scanner import SCANNER, echoscu, node_settings, running_node, storescu
from tests.dicomnode.series_data import ct_series, fixture_series

pytestmark = pytest.mark.integration


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Nodes that receive only (nothing completes during a test), stopped at the end."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def make(**overrides: Any) -> Node:
            overrides.setdefault("stable_s", 600.0)
            return stack.enter_context(running_node(node_settings(tmp_path, **overrides)))

        yield make


@pytest.fixture
def node(node_factory: Callable[..., Node]) -> Node:
    return node_factory()


def audit(node: Node) -> list[dict[str, Any]]:
    return [json.loads(line) for line in node.settings.audit_path.read_text().splitlines()]


def associate(node: Node, *contexts: str, transfer_syntax: str | None = None) -> Association:
    ae = AE(ae_title=SCANNER)
    for context in contexts:
        ae.add_requested_context(context, transfer_syntax)
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title=node.settings.ae_title)
    assert assoc.is_established
    return assoc


@pytest.fixture
def one_slice(tmp_path: Path) -> Path:
    """A folder with one CT file: the real JPEG-Lossless slice with valid UIDs."""
    return fixture_series(tmp_path / "one", slices=1)


def dataset(folder: Path) -> Dataset:
    return pydicom.dcmread(next(folder.glob("*.dcm")))


def test_echoscu_is_answered(node: Node) -> None:
    done = echoscu(node.receiver.port)
    assert done.returncode == 0, done.stderr


def test_storescu_sends_a_whole_series_into_the_spool(node: Node, tmp_path: Path) -> None:
    folder = ct_series(tmp_path)
    sources = {pydicom.dcmread(p).SOPInstanceUID: p for p in folder.glob("*.dcm")}
    done = storescu(node.receiver.port, folder)
    assert done.returncode == 0, done.stderr
    (record,) = node.spool.records()
    assert record.instance_count == len(sources) and record.calling_aes == [SCANNER]
    assert record.state is SeriesState.RECEIVING
    series_dir = node.spool.series_root / record.key
    assert not list(series_dir.glob(".tmp-*"))
    assert len((series_dir / JOURNAL).read_text().splitlines()) == len(sources)
    for info in node.spool.instances(record.key):
        stored = pydicom.dcmread(node.spool.path(record.key, info))
        source = pydicom.dcmread(sources[info.sop_uid])
        assert stored.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        assert stored.PixelData == source.PixelData and stored.PatientID == source.PatientID
        assert info.size == node.spool.path(record.key, info).stat().st_size
    assert node.metrics.instances_received._value.get() == len(sources)


def test_an_unknown_calling_ae_is_refused_and_logged(
    node_factory: Callable[..., Node], one_slice: Path
) -> None:
    node = node_factory(allowed_ae_titles=[SCANNER, "PACS"])
    assert echoscu(node.receiver.port).returncode == 0
    refused = echoscu(node.receiver.port, aet="INTRUDER")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr
    sent = storescu(node.receiver.port, one_slice, aet="INTRUDER")
    assert sent.returncode != 0 and node.spool.records() == []
    wrong_called = echoscu(node.receiver.port, aec="SOMEONE")
    assert wrong_called.returncode != 0
    events = [e for e in audit(node) if e["event"] == "association refused"]
    assert [e["calling_ae"] for e in events] == ["INTRUDER", "INTRUDER", SCANNER]
    assert "allow-list" in events[0]["reason"]


def test_an_mr_image_gets_no_presentation_context(
    node: Node, tmp_path: Path, one_slice: Path
) -> None:
    ds = dataset(one_slice)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.Modality = "MR"
    mr = tmp_path / "mr.dcm"
    ds.save_as(mr, enforce_file_format=True)
    sent = storescu(node.receiver.port, mr)
    assert sent.returncode != 0 and "presentation context" in sent.stderr.lower()
    assoc = associate(node, CTImageStorage, MRImageStorage)
    try:
        assert [c.abstract_syntax for c in assoc.rejected_contexts] == [MRImageStorage]
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert node.spool.records() == []


def test_enhanced_ct_and_the_usual_transfer_syntaxes_are_accepted(node: Node) -> None:
    syntaxes = ["1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.80"]
    syntaxes += ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2"]
    ae = AE(ae_title=SCANNER)
    for sop_class in (CTImageStorage, ENHANCED_CT_IMAGE_STORAGE):
        for syntax in syntaxes:
            ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title="COVIDCT")
    try:
        assert len(assoc.accepted_contexts) == 2 * len(syntaxes)
    finally:
        assoc.release()


def _no_sop_uid(ds: Dataset) -> None:
    ds.SOPInstanceUID = ""


def _uuid_study(ds: Dataset) -> None:
    ds.StudyInstanceUID = "1355759b-7653-424e-b0b5-1d131628d0e4"


def _no_series(ds: Dataset) -> None:
    del ds.SeriesInstanceUID


def _leading_zero(ds: Dataset) -> None:
    ds.SeriesInstanceUID = "1.2.03.4"


def _no_pixels(ds: Dataset) -> None:
    del ds.PixelData


@pytest.mark.parametrize(
    ("spoil", "status", "reason"),
    [
        (_no_sop_uid, 0xC000, "SOPInstanceUID missing or empty"),
        (_uuid_study, 0xC000, "StudyInstanceUID is not a valid DICOM UID"),
        (_no_series, 0xC000, "SeriesInstanceUID missing or empty"),
        (_leading_zero, 0xC000, "SeriesInstanceUID is not a valid DICOM UID"),
        (_no_pixels, 0xA900, "no Pixel Data"),
    ],
)
def test_an_instance_with_bad_uids_is_refused_with_a_reason(
    node: Node, one_slice: Path, spoil: Callable[[Dataset], None], status: int, reason: str
) -> None:
    ds = dataset(one_slice)
    spoil(ds)
    assoc = associate(node, CTImageStorage, transfer_syntax=ds.file_meta.TransferSyntaxUID)
    try:
        answer = assoc.send_c_store(ds)
        good = assoc.send_c_store(dataset(one_slice))  # the association goes on
    finally:
        assoc.release()
    assert (answer.Status, answer.ErrorComment) == (status, reason)
    assert good.Status == 0x0000
    assert [r.instance_count for r in node.spool.records()] == [1]
    (refusal,) = [e for e in audit(node) if e["event"] == "refused"]
    assert refusal["reason"] == reason and refusal["calling_ae"] == SCANNER
    assert any(reason in e["error"] for e in node.metrics.last_errors())


def test_the_real_normal002_file_is_refused(node: Node) -> None:
    """Its Study and Series UIDs are UUIDs and its SOP Instance UID is empty."""
    ds = pydicom.dcmread(FIXTURE_SLICE)
    assoc = associate(node, CTImageStorage, transfer_syntax=ds.file_meta.TransferSyntaxUID)
    try:
        answer = assoc.send_c_store(ds)
        ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
        second = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert answer.Status == 0xC000 and second.Status == 0xC000
    assert second.ErrorComment == "StudyInstanceUID is not a valid DICOM UID"
    assert node.spool.records() == []


def test_two_series_interleaved_in_one_association_land_in_two_records(
    node: Node, tmp_path: Path
) -> None:
    a = [pydicom.dcmread(p) for p in fixture_series(tmp_path / "a", 6, seed="a").glob("*")]
    b = [pydicom.dcmread(p) for p in fixture_series(tmp_path / "b", 4, seed="b").glob("*")]
    syntax = a[0].file_meta.TransferSyntaxUID
    assoc = associate(node, CTImageStorage, transfer_syntax=syntax)
    try:
        order = [x for pair in zip(a, b + [None] * 2, strict=True) for x in pair if x]
        assert {assoc.send_c_store(ds).Status for ds in order} == {0}
    finally:
        assoc.release()
    counts = {r.series_uid: r.instance_count for r in node.spool.records()}
    assert counts == {a[0].SeriesInstanceUID: 6, b[0].SeriesInstanceUID: 4}
    held = {i.sop_uid for i in node.spool.instances(series_key(b[0].SeriesInstanceUID))}
    assert held == {ds.SOPInstanceUID for ds in b}


def test_an_aborted_association_keeps_what_was_completely_received(
    node: Node, tmp_path: Path
) -> None:
    files = [pydicom.dcmread(p) for p in fixture_series(tmp_path / "s", 5).glob("*")]
    assoc = associate(node, CTImageStorage, transfer_syntax=files[0].file_meta.TransferSyntaxUID)
    for ds in files[:3]:
        assert assoc.send_c_store(ds).Status == 0
    assoc.abort()
    (record,) = node.spool.records()
    assert record.instance_count == 3
    assert {i.sop_uid for i in node.spool.instances(record.key)} == {
        ds.SOPInstanceUID for ds in files[:3]
    }


@pytest.mark.parametrize(
    ("caps", "stored", "words"),
    [
        ({"max_association_instances": 5}, 5, "association cap 5"),
        ({"max_series_instances": 4}, 4, "series already holds its cap of 4"),
        ({"max_spool_bytes": 3 * 240_000}, None, "spool full"),
        ({"max_instance_bytes": 1000}, 0, "over the cap of 1000"),
    ],
)
def test_caps_answer_out_of_resources(
    node_factory: Callable[..., Node],
    tmp_path: Path,
    caps: dict[str, int],
    stored: int | None,
    words: str,
) -> None:
    node = node_factory(**caps)
    folder = fixture_series(tmp_path / "s", 8)
    sent = storescu(node.receiver.port, folder, extra=["-nh"])  # go on after a refusal
    held = sum(r.instance_count for r in node.spool.records())
    if stored is None:  # as many as fit
        stored = held
        assert 0 < held < 8 and node.spool.used_bytes <= caps["max_spool_bytes"]
    assert held == stored, sent.stderr
    refusals = [e for e in audit(node) if e["event"] == "refused"]
    assert len(refusals) == 8 - stored and all(words in e["reason"] for e in refusals)
    assert node.metrics.instances_refused.labels("0xA700")._value.get() == 8 - stored
    if "max_association_instances" in caps:  # a new association has its own count
        storescu(node.receiver.port, fixture_series(tmp_path / "t", 8, seed="t"), extra=["-nh"])
        assert sorted(r.instance_count for r in node.spool.records()) == [5, 5]


@pytest.mark.slow
def test_orthanc_sends_a_series_on_to_the_node(
    node: Node, orthanc_factory: Callable[..., Orthanc], tmp_path: Path
) -> None:
    """The route a PACS uses: the series stored in Orthanc first, then sent on to the node."""
    pacs = orthanc_factory(node_aet=node.settings.ae_title, node_port=node.receiver.port)
    folder = fixture_series(tmp_path / "s", 6)
    ids = {pacs.upload(p.read_bytes()) for p in folder.glob("*.dcm")}
    series_id = pacs.get(f"/instances/{next(iter(ids))}")["ParentSeries"]
    pacs.store_to_node(series_id)
    (record,) = node.spool.records()
    assert record.instance_count == 6 and record.calling_aes == [pacs.aet]
