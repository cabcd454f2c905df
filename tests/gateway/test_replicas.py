"""The gateway's balancing over Triton replicas (gateway/replicas.py) with fake replicas:
least outstanding, ejection and one retry on another replica, readmission by the probe."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from covidct.addresses import parse_targets
from covidct.config import ModelSpec
from gateway.errors import InferenceError, InferenceTimeout, NotReady
from gateway.replicas import ReplicaCollector, ReplicaSet
from gateway.settings import GatewaySettings
from gateway.triton import Inference

SPEC = ModelSpec(image_size=32)
IMAGES = np.zeros((1, 32, 32, 1), np.uint8)


class FakeReplica:
    """One Triton: answers with its own address in place of the version; ``mode`` makes it
    unavailable, slow or failing the model."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.address = settings.triton_url
        self.mode, self.calls, self.up = "ok", 0, True
        self.gate: asyncio.Event | None = None

    async def infer(self, images: np.ndarray, spec: ModelSpec, version: str) -> Inference:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.mode == "unavailable":
            raise NotReady("Triton is not available")
        if self.mode == "slow":
            await asyncio.sleep(5)
        if self.mode == "model-error":
            raise InferenceError("Triton could not run the model")
        return Inference(np.ones((1, 3)) / 3, np.zeros((1, 2, 2, 3)), self.address)

    async def ready(self, version: str) -> bool:
        return self.up

    async def model_spec(self, version: str) -> tuple[ModelSpec, str]:
        if not self.up:
            raise NotReady("down")
        return SPEC, version

    async def versions(self) -> list[dict[str, Any]]:
        return [{"name": "covidct", "version": "1", "state": "READY"}]

    async def close(self) -> None:
        self.closed = True


def replica_set(n: int = 3, **settings: Any) -> tuple[ReplicaSet, dict[str, FakeReplica]]:
    made: dict[str, FakeReplica] = {}

    def client(s: GatewaySettings) -> FakeReplica:
        made[s.triton_url] = FakeReplica(s)
        return made[s.triton_url]

    url = ",".join(f"10.0.0.{i}:8001" for i in range(1, n + 1))
    options = {"triton_url": url, "triton_probe_s": 3600.0, **settings}
    return ReplicaSet(GatewaySettings(**options), client), made


def served_by(rs: ReplicaSet) -> str:
    return asyncio.run(rs.infer(IMAGES, SPEC, "1")).model_version


@pytest.mark.parametrize(
    ("url", "addresses", "dns"),
    [
        ("127.0.0.1:8001", ["127.0.0.1:8001"], None),
        ("a:1, b:2,a:1", ["a:1", "b:2", "a:1"], None),
        ("dns:triton-headless.ns.svc:8001", [], ("triton-headless.ns.svc", 8001)),
        ("dns:///triton:8001", [], ("triton", 8001)),
    ],
)
def test_targets(url: str, addresses: list[str], dns: tuple[str, int] | None) -> None:
    assert parse_targets(url) == (addresses, dns)


@pytest.mark.parametrize("url", ["dns:triton", "dns::8001", " , "])
def test_bad_targets_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="Triton address"):
        parse_targets(url)


def test_concurrent_requests_spread_by_fewest_outstanding() -> None:
    rs, fakes = replica_set(3)

    async def run() -> list[str]:
        gate = asyncio.Event()
        for fake in fakes.values():
            fake.gate = gate
        tasks = [asyncio.create_task(rs.infer(IMAGES, SPEC, "1")) for _ in range(6)]
        await asyncio.sleep(0.05)
        assert [s["outstanding"] for s in rs.status()] == [2, 2, 2]
        gate.set()
        return [r.model_version for r in await asyncio.gather(*tasks)]

    answers = asyncio.run(run())
    assert sorted(answers) == sorted(list(fakes) * 2)


def test_an_unavailable_replica_is_ejected_and_the_request_retried_elsewhere() -> None:
    rs, fakes = replica_set(3)
    dead = fakes["10.0.0.1:8001"]
    dead.mode, dead.up = "unavailable", False
    answers = [served_by(rs) for _ in range(9)]
    assert dead.address not in answers and len(answers) == 9
    assert dead.calls == 1 and rs.retries == 1  # tried once, then never again
    state = {s["address"]: s for s in rs.status()}[dead.address]
    assert state["state"] == "ejected" and "not available" in state["last_error"]
    # the probe readmits it once it is ready again
    dead.mode, dead.up = "ok", True
    assert asyncio.run(rs.ready("1"))
    assert all(s["state"] == "ready" for s in rs.status())
    assert dead.address in {served_by(rs) for _ in range(6)}


def test_a_request_is_retried_once_only() -> None:
    rs, fakes = replica_set(3)
    for fake in fakes.values():
        fake.mode = "unavailable"
    with pytest.raises(NotReady):
        served_by(rs)
    assert sum(f.calls for f in fakes.values()) == 2 and rs.retries == 1


def test_model_errors_are_not_retried() -> None:
    rs, fakes = replica_set(2)
    for fake in fakes.values():
        fake.mode = "model-error"
    with pytest.raises(InferenceError, match="could not run the model"):
        served_by(rs)
    assert sum(f.calls for f in fakes.values()) == 1
    assert all(s["state"] == "ready" for s in rs.status())


def test_a_slow_replica_uses_up_the_deadline_and_is_not_retried_past_it() -> None:
    rs, fakes = replica_set(2, request_timeout_s=0.2)
    for fake in fakes.values():
        fake.mode = "slow"
    with pytest.raises(InferenceTimeout, match=r"within 0\.2 s"):
        served_by(rs)
    assert sum(f.calls for f in fakes.values()) == 1


def test_one_replica_not_ready_is_still_tried() -> None:
    """With every replica ejected the gateway tries them anyway: one Triton that restarted
    answers at once, without waiting for a probe."""
    rs, fakes = replica_set(1)
    (fake,) = fakes.values()
    fake.mode = "unavailable"
    with pytest.raises(NotReady):
        served_by(rs)
    fake.mode = "ok"
    assert served_by(rs) == fake.address


def test_readiness_spec_and_metrics_over_replicas() -> None:
    rs, fakes = replica_set(2)
    fakes["10.0.0.1:8001"].up = False
    assert asyncio.run(rs.ready("1"))  # one replica is enough
    assert asyncio.run(rs.model_spec("1")) == (SPEC, "1")
    fakes["10.0.0.2:8001"].up = False
    assert not asyncio.run(rs.ready("1"))
    samples = {
        (s.name, s.labels.get("replica", "")): s.value
        for family in ReplicaCollector(rs).collect()
        for s in family.samples
    }
    assert samples[("covidct_triton_replica_ready", "10.0.0.1:8001")] == 0.0
    assert samples[("covidct_triton_replica_ejections_total", "10.0.0.2:8001")] == 1.0


def test_dns_names_resolve_to_every_address() -> None:
    made: list[str] = []

    def client(s: GatewaySettings) -> FakeReplica:
        made.append(s.triton_url)
        return FakeReplica(s)

    rs = ReplicaSet(GatewaySettings(triton_url="dns:localhost:8001"), client)
    assert len(rs) == 0
    asyncio.run(rs._resolve())
    assert "127.0.0.1:8001" in made and len(rs) >= 1
