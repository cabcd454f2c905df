"""Several gateway processes on one serving record (gateway/fleet.py), with fake Tritons.

Each "process" is a SharedServing with its own ServingVersions and identity, as uvicorn
workers or gateway pods have; they share only the folder, as real ones do.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway import fleet
from gateway.app import create_app
from gateway.errors import VersionConflict
from gateway.fleet import HEARTBEATS, RECORD, SharedServing
from gateway.settings import GatewaySettings
from gateway.versions import ServingVersions
from tests.gateway.test_admin import KEY, VersionedTriton


def _process(folder: Path, ident: str, loaded: set[str] | None = None) -> SharedServing:
    triton = VersionedTriton()
    if loaded is not None:
        triton.loaded = loaded
    return SharedServing(folder, ServingVersions(triton, ""), ident)


@asynccontextmanager
async def _running(*processes: SharedServing) -> AsyncIterator[None]:
    """Start every process and its follow loop, as the gateway's lifespan does."""
    for p in processes:
        await p.start()
        await p.serving.current()
    tasks = [asyncio.create_task(p.run()) for p in processes]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        await asyncio.sleep(0.05)
    return False


def test_a_switch_on_one_process_moves_every_process(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = _process(tmp_path, "a"), _process(tmp_path, "b")
        a.serving.version = b.serving.version = "3"
        async with _running(a, b):
            assert await _until(lambda: (tmp_path / RECORD).is_file())
            await a.publish("4")
            # publish returns only once b has applied the record
            assert a.serving.version == b.serving.version == "4"
            record = json.loads((tmp_path / RECORD).read_text())
            assert record["version"] == "4" and record["previous"] == "3"
            b.serving.in_flight["3"] = 2  # b still answers two requests on the old version
            b.serving.requests["4"], b.serving.errors["4"] = 5, 1
            a.serving.requests["4"] = 3
            await b.beat()
            status = a.status()
            assert status["version"] == "4" and status["previous_version"] == "3"
            assert status["in_flight"] == {"3": 2}
            assert status["since_switch"]["by_version"]["4"] == {"requests": 8, "errors": 1}
            assert status["since_switch"]["error_rate"] == pytest.approx(1 / 8)
            assert sorted(g["id"] for g in status["gateways"]) == ["a", "b"]
            assert all(g["following_record"] for g in status["gateways"])
        # a process that stops removes its heartbeat
        assert not list((tmp_path / HEARTBEATS).glob("*.json"))

    asyncio.run(scenario())


def test_a_process_that_cannot_follow_undoes_the_switch_everywhere(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = _process(tmp_path, "a")
        b = _process(tmp_path, "b", loaded={"3"})  # its Triton has not loaded version 4
        a.serving.version = b.serving.version = "3"
        async with _running(a, b):
            with pytest.raises(VersionConflict, match="gateway b refused: version 4 is not ready"):
                await a.publish("4")
            assert a.serving.version == "3"
            assert json.loads((tmp_path / RECORD).read_text())["version"] == "3"
            assert await _until(lambda: a.status()["gateways"][1]["following_record"])
            assert b.serving.version == "3"

    asyncio.run(scenario())


def test_a_silent_process_fails_the_switch_then_a_gone_one_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet, "PUBLISH_TIMEOUT_S", 0.5)

    def heartbeat(ident: str, age_s: float) -> Path:
        path = tmp_path / HEARTBEATS / f"{ident}.json"
        beat = {"id": ident, "time": time.time() - age_s, "applied": None, "in_flight": {"3": 4}}
        path.write_text(json.dumps(beat))
        return path

    async def scenario() -> None:
        a = _process(tmp_path, "a")
        a.serving.version = "3"
        async with _running(a):
            heartbeat("hung", 0.0)  # alive a moment ago, never applies anything
            with pytest.raises(VersionConflict, match="gateways hung did not switch"):
                await a.publish("4")
            assert a.serving.version == "3"
            heartbeat("hung", fleet.STALE_S + 1)  # now gone (killed): left out
            forgotten = heartbeat("long-gone", fleet.FORGET_S + 1)
            await a.publish("4")
            status = a.status()
            assert [g["id"] for g in status["gateways"]] == ["a"]
            assert status["in_flight"] == {}
            assert not forgotten.exists()

    asyncio.run(scenario())


def test_a_process_started_later_serves_the_record_not_the_newest_version(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = _process(tmp_path, "first", loaded={"3", "4"})
        async with _running(first):  # no record yet: the newest ready (4) becomes the record
            assert await _until(lambda: (tmp_path / RECORD).is_file())
            assert json.loads((tmp_path / RECORD).read_text())["version"] == "4"
            await first.publish("3")
            late = _process(tmp_path, "late", loaded={"3", "4"})  # as during a redeploy
            async with _running(late):
                assert late.serving.version == "3"
                assert await _until(lambda: len(first.status()["gateways"]) == 2)

    asyncio.run(scenario())


def test_the_admin_endpoint_switches_through_the_record(tmp_path: Path, png: bytes) -> None:
    settings = GatewaySettings(
        admin_key="admin-secret", serving_dir=str(tmp_path), model_version="3"
    )
    app = create_app(settings, backend_factory=lambda s: VersionedTriton())
    with TestClient(app) as c:
        assert c.post("/v1/predict", content=png).json()["model"]["version"] == "3"
        refused = c.post("/admin/v1/serving", json={"version": "5"}, headers=KEY)
        assert refused.status_code == 409 and "does not take the same input" in refused.text
        assert json.loads((tmp_path / RECORD).read_text())["version"] == "3"
        r = c.post("/admin/v1/serving", json={"version": "4"}, headers=KEY)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["version"] == "4" and len(body["gateways"]) == 1
        assert json.loads((tmp_path / RECORD).read_text())["version"] == "4"
        assert c.post("/v1/predict", content=png).json()["model"]["version"] == "4"
    # a restarted gateway serves the record's version, not COVIDCT_MODEL_VERSION
    with TestClient(create_app(settings, backend_factory=lambda s: VersionedTriton())) as c:
        assert c.post("/v1/predict", content=png).json()["model"]["version"] == "4"


@pytest.fixture(scope="module")
def png(fixtures: Path) -> bytes:
    return (fixtures / "covidxct-real" / "images" / "COVIDCTMD-P001-IM0038.png").read_bytes()
