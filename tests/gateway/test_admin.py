"""Admin endpoints and the served-version state, with a fake Triton."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from covidct.config import ModelSpec
from gateway.app import create_app
from gateway.errors import InferenceError, VersionConflict
from gateway.settings import GatewaySettings
from gateway.versions import ServingVersions
from tests.gateway.test_app import SPEC, FakeTriton

KEY = {"x-admin-key": "admin-secret"}


class VersionedTriton(FakeTriton):
    """Versions 3 and 4 ready; version 5 ready but takes 128x128 input."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.loaded = {"3", "4", "5"}

    async def model_spec(self, version: str) -> tuple[ModelSpec, str]:
        if version == "5":
            return dataclasses.replace(SPEC, image_size=128), version
        return SPEC, version

    async def ready(self, version: str) -> bool:
        return version in self.loaded

    async def versions(self) -> list[dict[str, str]]:
        return [{"name": "covidct", "version": v, "state": "READY"} for v in sorted(self.loaded)]


def _client(fake: FakeTriton | None = None, **settings) -> TestClient:
    fake = fake or VersionedTriton()
    return TestClient(create_app(GatewaySettings(**settings), backend_factory=lambda s: fake))


@pytest.fixture(scope="module")
def png(fixtures: Path) -> bytes:
    return (fixtures / "covidxct-real" / "images" / "COVIDCTMD-P001-IM0038.png").read_bytes()


def test_admin_is_disabled_without_a_key_and_needs_the_right_one() -> None:
    for disabled in ({}, {"admin_key": ""}):
        with _client(**disabled) as c:
            r = c.get("/admin/v1/serving", headers={"x-admin-key": ""})
            assert r.status_code == 403 and "COVIDCT_ADMIN_KEY" in r.json()["detail"]
    with _client(admin_key="admin-secret", api_key="api-secret") as c:
        assert c.get("/admin/v1/serving").status_code == 401
        wrong = c.get("/admin/v1/serving", headers={"x-admin-key": "api-secret"})
        assert wrong.status_code == 401
        assert wrong.headers["content-type"] == "application/problem+json"
        assert c.get("/admin/v1/serving", headers=KEY).status_code == 200  # no API key needed
        assert c.get("/v1/models", headers=KEY).status_code == 401  # the admin key is not one


def test_newest_ready_version_serves_first_then_the_switch_moves_traffic(png: bytes) -> None:
    with _client(admin_key="admin-secret") as c:
        status = c.get("/admin/v1/serving", headers=KEY).json()
        assert status["version"] == "5" and status["in_flight"] == {}
    with _client(admin_key="admin-secret", model_version="3") as c:
        first = c.post("/v1/predict", content=png).json()
        assert first["model"]["version"] == "3"
        r = c.post("/admin/v1/serving", json={"version": "4"}, headers=KEY)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "4" and r.json()["previous_version"] == "3"
        assert c.post("/v1/predict", content=png).json()["model"]["version"] == "4"
        assert c.get("/v1/models").json()["serving_version"] == "4"
        since = c.get("/admin/v1/serving", headers=KEY).json()["since_switch"]
        assert since["requests"] == 1 and since["errors"] == 0


@pytest.mark.parametrize(
    ("version", "status", "words"),
    [("7", 409, "not ready"), ("5", 409, "image_size"), ("x1", 400, "version"), ("", 400, "")],
)
def test_switch_refusals(version: str, status: int, words: str) -> None:
    with _client(admin_key="admin-secret", model_version="3") as c:
        r = c.post("/admin/v1/serving", json={"version": version}, headers=KEY)
        assert r.status_code == status, r.text
        assert words in r.json()["detail"]
        assert c.get("/admin/v1/serving", headers=KEY).json()["version"] == "3"  # unchanged


def test_a_request_is_served_wholly_by_the_version_it_started_with() -> None:
    async def scenario() -> None:
        serving = ServingVersions(VersionedTriton(), "3")
        async with serving.use() as (old, _):
            await serving.switch("4")  # while a request is in flight on 3
            assert old == "3" and serving.in_flight == {"3": 1}
            async with serving.use() as (new, _):
                assert new == "4" and serving.status()["in_flight"] == {"3": 1, "4": 1}
        assert serving.status()["in_flight"] == {}
        with pytest.raises(InferenceError):
            async with serving.use():
                raise InferenceError("Triton failed")
        since = serving.status()["since_switch"]
        assert since["by_version"]["4"] == {"requests": 2, "errors": 1}
        assert since["by_version"]["3"] == {"requests": 1, "errors": 0}
        with pytest.raises(VersionConflict):
            await serving.switch("5")

    asyncio.run(scenario())
