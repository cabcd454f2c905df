"""The DICOM node end to end, with real parts only: DCMTK's storescu as the scanner, the node
wired as ``covidct pacs serve`` wires it (``dicomnode.pipeline``), the real gateway and
tritonserver with the CI-trained model, and Debian's Orthanc as the PACS the results go to.

A whole CT series (the real P001 beside the checkout, else one made from the fixture slice)
goes in; a TID 1500 SR and heatmap Secondary Captures must come back into the same study in
Orthanc, valid for dciodvfy, readable by highdicom, with the gateway's study probabilities for
the series and every slice; the series sent again the way a PACS routes it (stored in Orthanc,
then sent on by Orthanc to the node) files the same objects, not new ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import highdicom as hd
import httpx
import pydicom
import pytest

from dicomnode.pipeline import build_node, open_outbox
from dicomnode.report import PROBABILITIES
from gateway.settings import GatewaySettings
from serving.server import free_port
from tests.dicomnode.orthanc import Orthanc, running_orthanc
from tests.dicomnode.results_data import dciodvfy_errors
from tests.dicomnode.scanner import NODE_AET, node_settings, storescu
from tests.dicomnode.series_data import ct_series, fixture_series
from tests.integration.conftest import running_gateway
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]


def _probabilities(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, float]:
    names = {code.value: name for name, code in PROBABILITIES.items()}
    return {names[m.name.value]: float(m.value) for m in group.get_measurements()}


def _study_answer(gateway: str, files: list[Path]) -> dict[str, Any]:
    """``/v1/predict/study`` on the same files, each part named by its index."""
    parts = [("files", (f"{i:05d}.dcm", f.read_bytes())) for i, f in enumerate(files)]
    r = httpx.post(f"{gateway}/v1/predict/study", files=parts, timeout=600)
    assert r.status_code == 200, r.text
    return cast(dict[str, Any], r.json())


def _results(pacs: Orthanc, study_uid: str, captures: int) -> tuple[list[str], list[str]]:
    """Orthanc ids of the SR and the Secondary Captures in the study, once all are there."""

    def both() -> tuple[list[str], list[str]] | None:
        srs = pacs.wait_for_instances(study_uid, 1, 0, Modality="SR")
        scs = pacs.wait_for_instances(study_uid, captures, 0, Modality="OT")
        return (srs, scs) if srs and len(scs) >= captures else None

    return cast(tuple[list[str], list[str]], wait_for(both, timeout=900, every=1.0))


def test_a_series_from_the_scanner_comes_back_as_an_sr_and_heatmaps_in_its_study(
    server, tmp_path: Path
) -> None:
    series = ct_series(tmp_path)
    files = sorted(series.glob("*.dcm"))
    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    node_port = free_port()  # Orthanc knows the node as its modality "node"
    with (
        running_gateway(GatewaySettings(triton_url=server.grpc_address)) as gateway,
        running_orthanc(tmp_path / "pacs", NODE_AET, node_port) as pacs,
    ):
        settings = node_settings(
            tmp_path,
            port=node_port,
            gateway_url=gateway,
            destination=f"PACS@127.0.0.1:{pacs.dicom_port}",
        )
        outbox = open_outbox(settings).start()
        node = build_node(settings, outbox)
        node.start(http=False)
        try:
            sent = storescu(node.receiver.port, series)
            assert sent.returncode == 0, sent.stderr
            srs, scs = _results(pacs, study_uid, settings.top_k)
            assert len(srs) == 1 and len(scs) == settings.top_k
            sr_file, sc_file = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
            sr_file.write_bytes(pacs.instance_file(srs[0]))
            sc_file.write_bytes(pacs.instance_file(scs[0]))
            assert dciodvfy_errors(sr_file) == []
            assert dciodvfy_errors(sc_file) == []

            sr = cast(hd.sr.Comprehensive3DSR, hd.sr.srread(sr_file))
            assert str(sr.StudyInstanceUID) == study_uid
            assert "NOT FOR DIAGNOSTIC USE" in str(sr.SeriesDescription)
            groups = list(cast(hd.sr.MeasurementReport, sr.content).get_image_measurement_groups())
            slices = groups[1:]  # the series group first, then one per slice in series order
            order = [
                str(g.source_images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                for g in slices
            ]
            assert sorted(order) == sorted(by_uid), "every slice referenced, once"
            answer = _study_answer(gateway, [by_uid[u] for u in order])
            assert _probabilities(groups[0]) == pytest.approx(
                answer["summary"]["probabilities"], abs=1e-6
            )
            for group, result in zip(slices, answer["slices"], strict=True):
                expected = result["prediction"]["probabilities"]
                assert _probabilities(group) == pytest.approx(expected, abs=1e-6)

            # The route a PACS takes: the series stored in Orthanc, then sent on by Orthanc to
            # the node. A second processing files the same objects (deterministic UIDs).
            stored = storescu(pacs.dicom_port, series, aec=pacs.aet)
            assert stored.returncode == 0, stored.stderr
            series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
            [source] = pacs.find("Series", SeriesInstanceUID=series_uid)
            before = pacs.instance_count()
            assert before == len(files) + 1 + settings.top_k
            pacs.store_to_node(str(source))
            wait_for(
                lambda: (
                    node.spool.records()
                    and all(r.state.value in ("done", "delivered") for r in node.spool.records())
                    and outbox.depth == 0
                ),
                timeout=900,
                every=1.0,
            )
            assert len(pacs.wait_for_instances(study_uid, 2, 3, Modality="SR")) == 1
            assert pacs.instance_count() == before
            events = [json.loads(line) for line in settings.audit_path.read_text().splitlines()]
            processed = [tuple(e["result_uids"]) for e in events if e["event"] == "processed"]
            assert len(processed) == 2, "processed twice"
            assert len(set(processed)) == 1 and len(processed[0]) == 1 + settings.top_k, processed
        finally:
            node.stop(drain_s=5)
            outbox.stop()


def _sr_content(pacs: Orthanc, study_uid: str, path: Path) -> pydicom.Dataset:
    """The study's one SR, read back from Orthanc, then deleted there (the next path files it
    again under the same UIDs)."""
    [sr_id] = wait_for(lambda: pacs.wait_for_instances(study_uid, 1, 0, Modality="SR"), 900, 1.0)
    path.write_bytes(pacs.instance_file(sr_id))
    for orthanc_id in pacs.find("Instance", StudyInstanceUID=study_uid, Modality="SR"):
        httpx.delete(f"{pacs.url}/instances/{orthanc_id}", timeout=30).raise_for_status()
    return pydicom.dcmread(path)


#: What differs between two filings of the same result: when it was made.
WHEN = {
    "ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
    "SeriesDate", "SeriesTime", "ContributionDateTime",
}  # fmt: skip


def _timeless(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of ``ds`` without the WHEN elements, at any depth."""
    copy = pydicom.Dataset(ds)  # shallow: rebuilt below where it nests
    for element in list(copy):
        if element.keyword in WHEN:
            del copy[element.tag]
        elif element.VR == "SQ":
            copy[element.tag] = pydicom.DataElement(
                element.tag, "SQ", [_timeless(item) for item in element.value]
            )
    return copy


def test_c_store_stow_rs_and_pull_file_the_same_sr_for_the_same_series(
    server, tmp_path: Path
) -> None:
    """One series three ways, each into a node of its own: C-STORE in and out; STOW-RS in and
    STOW-RS out; stored in the archive, pulled with QIDO-RS/WADO-RS and STOWed back. The SR
    must be the same object with the same content (only its creation time differs). The
    series is the fixture series (20 copies of a real slice, real header): the real P001 went
    the three ways too (3 min here), too long for the suite's budget; the compose test and
    ``covidct bench pacs`` send P001."""
    folder = fixture_series(tmp_path / "series", 20)
    files = sorted(folder.glob("*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid = str(first.StudyInstanceUID)
    srs: dict[str, pydicom.Dataset] = {}
    with (
        running_gateway(GatewaySettings(triton_url=server.grpc_address)) as gateway,
        running_orthanc(tmp_path / "pacs") as pacs,
    ):
        common = {"gateway_url": gateway, "top_k": 1}
        ways = {
            "c-store": {"destination": f"PACS@127.0.0.1:{pacs.dicom_port}"},
            "stow-rs": {"dicomweb_destination": pacs.dicomweb_url, "api_key": "node-key"},
            "pull": {
                "dicomweb_destination": pacs.dicomweb_url,
                "pull_url": pacs.dicomweb_url,
                "pull_interval_s": 0.5,
                "pull_since": str(first.SeriesDate),
            },
        }
        for way, options in ways.items():
            settings = node_settings(tmp_path / way, **common, **options)
            outbox = open_outbox(settings).start()
            node = build_node(settings, outbox)
            if way == "pull":
                for f in files:
                    pacs.upload(f.read_bytes())
            node.start(http=way == "stow-rs")
            try:
                if way == "c-store":
                    assert storescu(node.receiver.port, folder).returncode == 0
                elif way == "stow-rs":
                    from dicomnode.multipart import encode_related

                    assert node.http_server is not None
                    content_type, body = encode_related(f.read_bytes() for f in files)
                    r = httpx.post(
                        f"http://127.0.0.1:{node.http_server.port}/dicomweb/studies/{study_uid}",
                        content=body,
                        headers={"Content-Type": content_type, "X-API-Key": "node-key"},
                        timeout=120,
                    )
                    assert r.status_code == 200, r.text
                srs[way] = _sr_content(pacs, study_uid, tmp_path / f"{way}.dcm")
                # the study viewer's copy of the series, written after the results were queued
                [view] = wait_for(node.views.summaries, 60)
                assert view["sr"]["sop_instance_uid"] == str(srs[way].SOPInstanceUID)
                assert view["slice_count"] == len(files) and view["patient"] is None
            finally:
                node.stop(drain_s=5)
                outbox.stop()
    first = _timeless(srs["c-store"])
    for way, filed in srs.items():
        sr = _timeless(filed)
        assert sr.SOPInstanceUID == first.SOPInstanceUID, way
        assert sr.SeriesInstanceUID == first.SeriesInstanceUID, way
        differ = [e.keyword for e in first if e.tag not in sr or sr[e.tag] != e]
        assert differ == [], f"{way}: {differ}"
        assert sorted(e.keyword for e in sr) == sorted(e.keyword for e in first), way
