"""The study viewer's data (``dicomnode.viewer``, ``/studies/api`` on the node's HTTP port):
a processed series' view written as processing writes it, then served only with the key;
no patient data unless the setting allows it; nothing outside a view can be asked for."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from dicomnode.outboxdisk import encode
from dicomnode.records import series_key
from dicomnode.report import build_sr
from dicomnode.viewer import ViewStore, save_view
from tests.dicomnode.results_data import in_series_order, made_up_verdict
from tests.dicomnode.scanner import node_settings, running_node
from tests.dicomnode.series_data import fixture_series

KEY = "viewer-key"


def make_view(spool: Path, slices: int = 20, patient_data: bool = False) -> tuple[str, Path]:
    """A view of a fixture series with a made-up verdict, written into ``spool``; its key."""
    files = sorted(fixture_series(spool.parent / "series", slices).glob("*.dcm"))
    headers = in_series_order([pydicom.dcmread(f, stop_before_pixels=True) for f in files])
    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    ordered = [by_uid[str(h.SOPInstanceUID)] for h in headers]
    verdict = made_up_verdict(headers)
    sr = build_sr(headers, verdict)
    folder = save_view(
        spool, str(headers[0].SeriesInstanceUID), ordered, headers, verdict, sr, encode(sr),
        patient_data,
    )  # fmt: skip
    return folder.name, folder


def test_a_view_holds_previews_heatmaps_the_sr_and_no_patient_data(tmp_path: Path) -> None:
    key, folder = make_view(tmp_path / "spool")
    summary = json.loads((folder / "summary.json").read_text())
    assert len(summary["slices"]) == 20 and summary["patient"] is None
    source = next((tmp_path / "series").glob("*.dcm"))
    uid = str(pydicom.dcmread(source, stop_before_pixels=True).SeriesInstanceUID)
    assert key == series_key(uid)
    assert sum(s["heatmap"] for s in summary["slices"]) == 3
    assert all(s["preview"] for s in summary["slices"])
    assert "PatientName" not in (folder / "summary.json").read_text()
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o600}
    assert folder.stat().st_mode & 0o777 == 0o700
    with_patient = json.loads(
        (make_view(tmp_path / "b", patient_data=True)[1] / "summary.json").read_text()
    )
    assert set(with_patient["patient"]) == {"name", "id", "study_date"}


def test_the_viewer_api_asks_for_the_key_and_serves_one_series(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, api_key=KEY)
    key, _ = make_view(settings.spool_dir)
    with running_node(settings, http=True) as node:
        assert node.http_server is not None
        base = f"http://127.0.0.1:{node.http_server.port}"
        page = httpx.get(f"{base}/studies/{key}", timeout=10)
        assert page.status_code == 200 and "NOT FOR DIAGNOSTIC USE" in page.text
        assert httpx.get(f"{base}/studies/api/series", timeout=10).status_code == 401
        h = {"X-API-Key": KEY}
        [listed] = httpx.get(f"{base}/studies/api/series", headers=h, timeout=10).json()
        assert listed["key"] == key and listed["slice_count"] == 20 and "slices" not in listed
        one = httpx.get(f"{base}/studies/api/series/{key}", headers=h, timeout=10).json()
        heat = one["suspicious"][0]
        r = httpx.get(f"{base}/studies/api/series/{key}/heatmap/{heat}.png", headers=h, timeout=10)
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
        r = httpx.get(f"{base}/studies/api/series/{key}/slice/0.png", headers=h, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        sr = httpx.get(f"{base}/studies/api/series/{key}/sr.dcm", headers=h, timeout=10)
        assert sr.status_code == 200 and sr.content[128:132] == b"DICM"
        for path in (
            f"/studies/api/series/{'0' * 32}",
            f"/studies/api/series/{key}/heatmap/999.png",
            f"/studies/api/series/{key}/other/0.png",
            "/studies/api/series/..%2F..%2Fsalt",
        ):
            r = httpx.get(base + path, headers=h, timeout=10)
            assert r.status_code == 404, path
            assert r.headers["content-type"] == "application/problem+json"


def test_views_older_than_their_hours_are_swept(tmp_path: Path) -> None:
    key, folder = make_view(tmp_path / "spool")
    summary = json.loads((folder / "summary.json").read_text())
    store = ViewStore(tmp_path / "spool", keep_hours=1)
    assert store.sweep() == 0 and store.summary(key) is not None
    summary["made_at"] = time.time() - 7200
    (folder / "summary.json").write_text(json.dumps(summary))
    assert store.sweep() == 1 and store.summary(key) is None and not folder.exists()


@pytest.mark.parametrize("name", ["../salt", ".hidden", "a/b"])
def test_a_view_file_outside_the_view_cannot_be_named(tmp_path: Path, name: str) -> None:
    key, _ = make_view(tmp_path / "spool")
    assert ViewStore(tmp_path / "spool", 1).file(key, name) is None
    assert ViewStore(tmp_path / "spool", 1).file("../" + key[3:], "summary.json") is None
