"""Scale-out on one machine with the real binaries: `covidct serve --triton-replicas 3
--workers 2` (three tritonservers, two gateway processes on one port sharing a serving record).

1. Two redeploys started at once under load: one deploys across the 3 Tritons and both gateway
   processes (0 failed requests; after the first answer from the new version, only the new
   version answers: no process left behind), the other refuses at once naming the holder;
   then a rollback under load, likewise. Nothing half-written.
2. kill -9 of one Triton under load: 0 failed requests (ejection + retry on another replica),
   throughput recovers, and both gateway processes readmit the restarted replica within 10 s
   of it being ready.

The figures are printed (run with -s) and quoted in RELIABILITY.md and BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from covidct.modelconfig import parse_config
from export.repository import versions
from gateway.fleet import HEARTBEAT_S
from rollout.control import TritonFleet
from tests.integration.test_faults import Load as Unpaced
from tests.integration.test_faults import _cmdline, _triton_ready, _tritons
from tests.integration.test_shutdown import Serve, start_serve
from tests.loadclient import Load, assert_one_clean_switch, p99
from tests.waiting import http_status, poll

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]

ADMIN = "scaleout-test-key"
REPLICAS, WORKERS = 3, 2
#: Both processes switch within this of each other: the first applies the record as it writes
#: it, the other at its next read (every HEARTBEAT_S), and a request started just before that
#: read is still served wholly by the old version.
OVERLAP_S = 4 * HEARTBEAT_S


@pytest.fixture(scope="module")
def scaled(
    repository: Path, tmp_path_factory: pytest.TempPathFactory, cache_env: dict[str, str]
) -> Iterator[Serve]:
    # probes every 3 s: requests reach a killed replica before a probe ejects it, so the
    # passive ejection and the retry on another replica are what keep them from failing
    env = {**cache_env, "COVIDCT_TRITON_PROBE_S": "3", "COVIDCT_ADMIN_KEY": ADMIN}
    tmp = tmp_path_factory.mktemp("scaleout")
    serve = start_serve(
        repository, tmp, env, "--triton-replicas", str(REPLICAS), "--workers", str(WORKERS)
    )
    try:
        assert poll(lambda: http_status(f"{serve.url}/readyz") == 200, 240), "serve never ready"
        assert poll(lambda: len(_serving(serve)["gateways"]) == WORKERS, 30), _serving(serve)
        yield serve
    finally:
        serve.process.send_signal(signal.SIGTERM)
        try:
            serve.process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            serve.process.kill()


def _serving(serve: Serve) -> dict:
    try:
        r = httpx.get(f"{serve.url}/admin/v1/serving", headers={"x-admin-key": ADMIN}, timeout=10)
        return dict(r.json())
    except (httpx.HTTPError, ValueError):
        return {"gateways": []}


def _tritons_of(serve: Serve) -> str:
    return ",".join(f"127.0.0.1:{serve.grpc + 10 * i}" for i in range(REPLICAS))


def _covidct(serve: Serve, *args: str | Path) -> subprocess.Popen[str]:
    common = ["--repository", serve.models, "--gateway", serve.url, "--triton", _tritons_of(serve)]
    env = {**os.environ, "COVIDCT_ADMIN_KEY": ADMIN}
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *map(str, [*args, *common])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _assert_everywhere(serve: Serve, version: int) -> None:
    """Every Triton serves ``version`` only, every gateway process follows it, the config on
    disk is pinned to it, and no staging folder is left."""
    status = _serving(serve)
    assert status["version"] == str(version), status
    assert len(status["gateways"]) == WORKERS, status["gateways"]
    for gateway in status["gateways"]:
        assert gateway["version"] == str(version) and gateway["following_record"], gateway
    assert TritonFleet(_tritons_of(serve), "covidct").ready_anywhere() == [version]
    model_dir = serve.models / "covidct"
    config = parse_config((model_dir / "config.pbtxt").read_text())
    assert list(config.version_policy.specific.versions) == [version]
    assert not list(model_dir.glob(".tmp-*"))


def _log(serve: Serve) -> list[dict]:
    path = serve.models / "deployments.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_redeploy_and_rollback_across_replicas_and_workers_under_load(
    scaled: Serve, ci_run: Path
) -> None:
    old = int(_serving(scaled)["version"])
    new = max(versions(scaled.models / "covidct")) + 1
    logged = len(_log(scaled))
    redeploy = ("redeploy", "--from-run", ci_run, "--data", ci_run.parent / "data")
    with Load(scaled.url) as load:
        time.sleep(3)
        started = time.perf_counter()
        # two redeploys at once: the repository lock lets one through
        first = _covidct(scaled, *redeploy, "--watch-seconds", "3")
        second = _covidct(scaled, *redeploy, "--watch-seconds", "3")
        outs = [p.communicate(timeout=600) for p in (first, second)]
        finished = time.perf_counter()
        time.sleep(3)
    codes = sorted(p.returncode for p in (first, second))
    assert codes == [0, 1], outs
    loser = " ".join(outs[[first.returncode, second.returncode].index(1)][1].split())
    assert "is being changed by covidct redeploy (pid" in loser, loser[-2000:]
    records = sorted(load.records)
    overlap = assert_one_clean_switch(records, finished, str(old), str(new), OVERLAP_S)
    _assert_everywhere(scaled, new)
    entries = _log(scaled)[logged:]
    assert [e["outcome"] for e in entries] == ["deployed"], entries  # the refused one logs nothing
    smoke = entries[0]["smoke"]
    assert len(smoke["replicas"]) == REPLICAS and smoke["top1_agreement"] == 1.0
    redeploy_s = finished - started

    with Load(scaled.url) as load:
        time.sleep(3)
        started = time.perf_counter()
        back = _covidct(scaled, "rollback", "--watch-seconds", "3")
        _, err = back.communicate(timeout=300)
        finished = time.perf_counter()
        time.sleep(3)
    assert back.returncode == 0, err[-3000:]
    rollback_records = sorted(load.records)
    back_overlap = assert_one_clean_switch(
        rollback_records, finished, str(new), str(old), OVERLAP_S
    )
    _assert_everywhere(scaled, old)
    print(
        f"\nredeploy across {REPLICAS} Tritons and {WORKERS} gateway processes under load: "
        f"{len(records)} requests, 0 failed, p99 {p99(records):.0f} ms, both versions answered "
        f"for {overlap * 1000:.0f} ms, wall {redeploy_s:.1f} s (steps {entries[0]['timings']}); "
        f"rollback: {len(rollback_records)} requests, 0 failed, p99 {p99(rollback_records):.0f} "
        f"ms, overlap {back_overlap * 1000:.0f} ms, wall {finished - started:.1f} s"
    )


def test_one_of_three_tritons_killed_under_load_fails_no_request(scaled: Serve) -> None:
    """kill -9 one tritonserver mid-load; each gateway process ejects it, retries its in-flight
    inferences on the others (0 failed), and readmits the replica the supervisor restarts
    within 10 s of it being ready."""
    url = scaled.url
    https = [scaled.http + 10 * i for i in range(REPLICAS)]
    png = Path(__file__).parents[1] / "fixtures" / "covidxct-real" / "images"
    body = (png / "COVIDCTMD-P001-IM0038.png").read_bytes()

    def states() -> list[str]:
        try:
            return [r["state"] for r in httpx.get(f"{url}/v1/models", timeout=5).json()["replicas"]]
        except (httpx.HTTPError, KeyError, ValueError):
            return []

    def all_ready() -> bool:
        # a fresh connection each time lands on either gateway process: 6 in a row ready
        return all(states() == ["ready"] * REPLICAS for _ in range(6))

    assert poll(all_ready, 30), states()
    tritons = _tritons(scaled.models)
    assert len(tritons) == REPLICAS
    victim = tritons[1]
    victim_http = next(p for p in https if f"--http-port={p}".encode() in _cmdline(victim))
    with Unpaced(lambda: httpx.post(f"{url}/v1/predict", content=body, timeout=30), 4) as load:
        time.sleep(4)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        assert poll(lambda: not _triton_ready(victim_http), 5)
        assert poll(lambda: _triton_ready(victim_http), 60), "the supervisor did not restart it"
        back = time.monotonic()
        readmitted = poll(all_ready, 10)
        admitted_after = time.monotonic() - back
        time.sleep(4)
        ended = time.monotonic()
    answers = load.answers
    outcomes = Counter(str(a.outcome) for a in answers)
    assert set(outcomes) == {"200"}, outcomes
    assert readmitted, f"replica not readmitted 10 s after it was ready: {states()}"
    before = [a for a in answers if a.finished < killed]
    after = [a for a in answers if a.started > back + admitted_after]
    rate_before = len(before) / 4
    rate_after = len(after) / max(ended - back - admitted_after, 1e-3)
    assert rate_after >= 0.5 * rate_before, (rate_before, rate_after)
    metrics = httpx.get(f"{url}/metrics").text  # one gateway process's
    retries = re.search(r"^covidct_triton_retries_total (\S+)", metrics, re.M)
    print(
        f"\n1 of {REPLICAS} Tritons killed under load ({WORKERS} gateway processes): "
        f"{len(answers)} requests, 0 failed; {rate_before:.1f} req/s before, {rate_after:.1f} "
        f"after readmission; restarted in {back - killed:.1f} s, readmitted "
        f"{admitted_after:.1f} s later; {float(retries.group(1)) if retries else 0:.0f} retried "
        "on another replica by the process that answered /metrics"
    )
