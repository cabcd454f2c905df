"""`covidct bench overload` as a test: the gateway (one uvicorn worker, default settings, a real
tritonserver with the identity model) sent ten times its measured capacity for 30 s."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.overload import run_overload_bench
from gateway.settings import DECODE_BYTES, KEPT_SLICE_BYTES, GatewaySettings, MiB

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]


def test_ten_times_the_capacity_gets_200_or_a_fast_503_and_memory_stays_in_budget(
    tmp_path: Path,
) -> None:
    f = run_overload_bench(tmp_path, seconds=30, factor=10, big_mib=8, big_seconds=10)
    over, large = f["overload"], f["large"]
    assert f["capacity"]["statuses"] == {"200": f["capacity"]["sent"]}, f["capacity"]
    assert f["offered_vs_capacity"] >= 5, f  # the generator really sent several times more
    for phase in (over, large):
        assert set(phase["statuses"]) <= {"200", "503"}, phase["statuses"]
        assert phase["rejected_without_retry_after"] == 0
        assert phase["statuses"].get("200", 0) > 0, "nothing admitted under overload"
    assert over["statuses"].get("503", 0) > over["statuses"].get("200", 0)
    # A fast 503. The flood is ten times the measured capacity, which the compiled
    # preprocessing kernels doubled (to 240-350 uploads/s): the Python load generator now sends
    # 2,400-3,300 requests/s on the same two cores. 503 p50 / p99: 5 / 86 ms alone, 15 / 113 ms
    # with a busy loop on the second core (as in the suite); at about 1,400 requests/s before
    # the kernels, 3-14 ms p99 alone and 58-85 in suites (the old bound here was 100). A 503
    # stuck behind an admitted request's work would take hundreds of ms (admitted p50 160-390).
    assert over["rejected_p50_ms"] < 50, over
    assert over["rejected_p99_ms"] < 250, over
    assert over["rejected_p50_ms"] < over["ok_p50_ms"] / 10, over
    assert f["rss_peak_overload_mib"] < f["rss_budget_mib"], f
    assert f["rss_peak_large_mib"] < f["rss_budget_mib"], f
    # The budget's terms with the bodies actually sent (8 MiB, not the 64 MiB cap): what an
    # admitted request may hold, times the in-flight limit, plus the decoding threads.
    settings = GatewaySettings()
    per_request = 2 * large["upload_bytes"] + KEPT_SLICE_BYTES
    bound = settings.max_in_flight * per_request + settings.preprocess_workers * DECODE_BYTES
    assert f["rss_peak_large_mib"] - f["rss_base_mib"] < bound / MiB, (f, bound / MiB)
    assert f["healthy_after"]
