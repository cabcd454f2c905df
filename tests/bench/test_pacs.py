"""The pure parts of ``covidct bench pacs``: the series it picks, the storescu call, the
end-to-end breakdown, the summary and its section."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from bench.pacs import find_series, fixture_series, storescu_command
from bench.pacsreport import breakdown, pacs_section, summarise
from bench.sweep import BenchError


def test_a_fixture_series_is_one_series_of_distinct_positions(tmp_path: Path) -> None:
    files = sorted(fixture_series(tmp_path / "s", 5).glob("*.dcm"))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert len(headers) == 5
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert len({h.SOPInstanceUID for h in headers}) == 5
    assert sorted(float(h.ImagePositionPatient[2]) for h in headers) == [-58, -56, -54, -52, -50]


def test_the_fixture_series_is_used_and_named_when_asked(tmp_path: Path) -> None:
    folder, what = find_series(tmp_path, "fixture", 3)
    assert len(list(folder.glob("*.dcm"))) == 3 and what == "3 copies of the fixture slice"


def test_asking_for_the_real_series_without_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bench.pacs.real_data_dir", lambda: tmp_path)
    with pytest.raises(BenchError, match="no real series"):
        find_series(tmp_path, "real")
    assert find_series(tmp_path, "auto", 2)[1] == "2 copies of the fixture slice"


def test_storescu_proposes_jpeg_lossless_and_sends_the_folder(tmp_path: Path) -> None:
    cmd = storescu_command(tmp_path, 4242, "PACS")
    assert cmd[:2] == ["storescu", "-xs"] and cmd[-3:] == ["127.0.0.1", "4242", str(tmp_path)]
    assert "+sd" in cmd and "+r" in cmd and cmd[cmd.index("-aec") + 1] == "PACS"


def test_the_breakdown_leaves_the_stable_wait_out_and_its_parts_add_up() -> None:
    record = {"last_received": 100.0, "completed_at": 102.5, "finished_at": 110.0}
    timings = {"infer_s": 6.0, "build_s": 0.8, "queue_s": 0.1}
    parts = breakdown(record, timings, sr_stored=110.4, stable_s=2.0)
    assert parts["end_to_end_s"] == pytest.approx(8.4)
    assert parts["send_s"] == pytest.approx(0.4)
    assert parts["select_s"] == pytest.approx(0.5 + 0.6)  # watcher past the wait + the rest
    summed = sum(v for k, v in parts.items() if k != "end_to_end_s")
    assert summed == pytest.approx(parts["end_to_end_s"])


def test_the_summary_takes_medians_of_paired_rounds_and_the_section_shows_them() -> None:
    receive = [
        {"node": 1.0, "orthanc": 2.0},
        {"node": 2.0, "orthanc": 2.0},
        {"node": 1.0, "orthanc": 4.0},
    ]
    parts = {"select_s": 0.1, "infer_s": 1.0, "build_s": 0.2, "queue_s": 0.0, "send_s": 0.1}
    e2e = [{"end_to_end_s": t, **parts} for t in (2.0, 3.0, 4.0)]
    result = summarise(receive, e2e, [2.0, 2.0, 2.0], 100, "the real P001 (100 slices)", 2.0)
    rec = result["receive"]
    assert rec["node_per_s"]["median"] == 100.0  # 100, 50, 100 instances/s
    assert rec["ratio"]["values"] == [2.0, 1.0, 4.0] and rec["ratio"]["median"] == 2.0
    assert result["end_to_end"]["ratio"]["median"] == 1.5
    section = pacs_section(result)
    assert "| node / Orthanc | 2.00 (range 1.00 to 4.00)x (target >= 0.8x) |" in section
    assert "| node / gateway | 1.50 (range 1.00 to 2.00)x (target <= 1.3x) |" in section
    assert "the real P001" in section


def test_stow_rs_is_set_beside_c_store_round_by_round_and_the_pull_latency_reported() -> None:
    receive = [
        {"node": 1.0, "orthanc": 2.0, "stow": 0.5},
        {"node": 2.0, "orthanc": 2.0, "stow": 4.0},
        {"node": 1.0, "orthanc": 4.0, "stow": 1.0},
    ]
    parts = {"select_s": 0.1, "infer_s": 1.0, "build_s": 0.2, "queue_s": 0.0, "send_s": 0.1}
    e2e = [{"end_to_end_s": 2.0, **parts}]
    result = summarise(receive, e2e, [2.0], 100, "fixture", 2.0, pull=[5.0, 7.0, 6.0])
    rec = result["receive"]
    assert rec["stow_per_s"]["values"] == [200.0, 25.0, 100.0]
    assert rec["stow_over_c_store"]["values"] == [2.0, 0.5, 1.0]  # per round, not of medians
    assert result["pull"]["latency_s"]["median"] == 6.0
    section = pacs_section(result)
    assert "| STOW-RS / C-STORE into the node | 1.00 (range 0.50 to 2.00)x |" in section
    assert "6.00 (range 5.00 to 7.00) s" in section
    without = pacs_section(summarise(receive[:1], e2e, [2.0], 100, "fixture", 2.0))
    assert "Pull mode" not in without


def test_the_viewer_s_copy_is_reported_beside_the_parts_not_in_their_sum() -> None:
    record = {"last_received": 100.0, "completed_at": 102.5, "finished_at": 113.0}
    timings = {"infer_s": 6.0, "build_s": 0.8, "queue_s": 0.1, "view_s": 3.0}
    parts = breakdown(record, timings, sr_stored=110.4, stable_s=2.0)  # stored while viewing
    assert parts["view_s"] == 3.0 and parts["send_s"] == pytest.approx(0.4)
    summed = sum(v for k, v in parts.items() if k not in ("end_to_end_s", "view_s"))
    assert summed == pytest.approx(parts["end_to_end_s"]) == pytest.approx(8.4)
