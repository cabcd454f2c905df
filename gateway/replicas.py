"""The gateway over several Triton replicas: client-side balancing with failover.

``COVIDCT_TRITON_URL`` names one address, a comma-separated list, or ``dns:NAME:PORT``: every
address NAME resolves to (a Kubernetes headless Service), re-resolved at each probe. gRPC keeps
one HTTP/2 connection per address, so balancing behind one virtual IP would pin a gateway to
one pod; here each replica has its own client and the gateway chooses per request:

- **least outstanding requests** among the ready replicas (ties: round robin);
- **passive ejection**: a replica answering UNAVAILABLE/not ready or timing out is taken out
  at once; an **active probe** (server and model ready, every ``triton_probe_s``) readmits it,
  and ejects replicas that stopped answering while idle;
- **one retry**: an inference that failed on one replica before any answer is sent once to
  another (an inference is idempotent), within what is left of the request's deadline;
- when no replica is ready, all are tried anyway (one replica behaves as a plain client).

Model errors (Triton ran the model and failed) are not retried: another replica would fail
the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from covidct.addresses import addresses_of, parse_targets
from covidct.config import ModelSpec
from gateway.errors import InferenceTimeout, NotReady
from gateway.settings import GatewaySettings
from gateway.triton import Backend, Inference, TritonBackend

log = logging.getLogger(__name__)


@dataclass
class Replica:
    address: str
    backend: Backend
    ready: bool = True  # optimistic until a call or a probe says otherwise
    outstanding: int = 0
    ejections: int = 0
    last_error: str = ""


class ReplicaSet:
    """A ``Backend`` over every Triton replica (see the module docstring)."""

    def __init__(
        self,
        settings: GatewaySettings,
        client: Callable[[GatewaySettings], Backend] = TritonBackend,
    ) -> None:
        self._settings, self._client = settings, client
        addresses, self._dns = parse_targets(settings.triton_url)
        self._replicas: dict[str, Replica] = {}
        self._set_addresses(addresses)
        self._order = itertools.count()
        self._version = ""  # the version probes check (the last one asked for)
        self._probe: asyncio.Task[None] | None = None
        self.retries = 0

    # --- membership and health -------------------------------------------------------------

    def _set_addresses(self, addresses: Iterable[str]) -> list[Backend]:
        """Add new addresses, drop vanished ones; returns the clients to close."""
        wanted = list(dict.fromkeys(addresses))
        gone = [self._replicas.pop(a).backend for a in list(self._replicas) if a not in wanted]
        for address in wanted:
            if address not in self._replicas:
                backend = self._client(self._settings.model_copy(update={"triton_url": address}))
                self._replicas[address] = Replica(address, backend)
                log.info("Triton replica %s added", address)
        return gone

    async def _resolve(self) -> None:
        if self._dns is None:
            return
        host, port = self._dns
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as e:
            log.warning("cannot resolve %s (keeping %d replicas): %s", host, len(self), e)
            return
        found = addresses_of(infos, port)
        if found:
            for backend in self._set_addresses(found):
                await backend.close()

    def _eject(self, replica: Replica, error: Exception) -> None:
        if replica.ready:
            replica.ejections += 1
            log.warning("Triton replica %s ejected: %s", replica.address, error)
        replica.ready, replica.last_error = False, str(error)

    def _admit(self, replica: Replica, ready: bool) -> None:
        if ready and not replica.ready:
            log.info("Triton replica %s readmitted", replica.address)
        if not ready and replica.ready:
            self._eject(replica, NotReady("readiness probe failed"))
        replica.ready = ready

    async def _check(self, version: str) -> list[bool]:
        replicas = list(self._replicas.values())
        results = await asyncio.gather(*(r.backend.ready(version) for r in replicas))
        for replica, ready in zip(replicas, results, strict=True):
            self._admit(replica, ready)
        return list(results)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.triton_probe_s)
            try:
                await self._resolve()
                await self._check(self._version)
            except Exception as e:  # a probe never stops probing
                log.warning("replica probe failed: %s", e)

    async def _start(self, version: str | None = None) -> None:
        """Remember the version to probe; start probing; resolve a DNS name the first time."""
        if version is not None:
            self._version = version
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._probe_loop())
        if not self._replicas:
            await self._resolve()

    def _candidates(self, tried: list[Replica]) -> Iterator[Replica]:
        """Replicas to try next: ready ones by fewest outstanding requests (round robin among
        equals); when none is ready, every replica not tried yet."""
        rest = [r for r in self._replicas.values() if r not in tried]
        pool = [r for r in rest if r.ready] or rest
        turn = next(self._order)
        n = max(len(pool), 1)
        ranked = sorted(enumerate(pool), key=lambda ir: (ir[1].outstanding, (ir[0] - turn) % n))
        return (r for _, r in ranked)

    # --- Backend ---------------------------------------------------------------------------

    async def infer(self, images: np.ndarray, spec: ModelSpec, version: str) -> Inference:
        await self._start(version)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.request_timeout_s
        tried: list[Replica] = []
        while True:
            replica = next(self._candidates(tried), None)
            if replica is None:
                raise NotReady(f"no Triton replica of {len(self)} is available")
            replica.outstanding += 1
            try:
                left = deadline - loop.time()
                return await asyncio.wait_for(
                    replica.backend.infer(images, spec, version), timeout=max(left, 0.001)
                )
            except (NotReady, InferenceTimeout, TimeoutError) as e:
                error: Exception = e
                if isinstance(e, TimeoutError):  # the deadline passed on this replica
                    error = InferenceTimeout(
                        f"no answer from Triton within {self._settings.request_timeout_s:g} s"
                    )
                self._eject(replica, error)
                tried.append(replica)
                retry = len(tried) < 2 and deadline - loop.time() > 0.05
                if not retry or next(self._candidates(tried), None) is None:
                    if error is e:
                        raise
                    raise error from e
                self.retries += 1
                log.info("retrying on another replica after %s: %s", replica.address, error)
            finally:
                replica.outstanding -= 1

    async def ready(self, version: str) -> bool:
        await self._start(version)
        return any(await self._check(version))

    async def _first(self, call: Callable[[Backend], Any]) -> Any:
        error: Exception = NotReady(f"no Triton replica of {len(self)} is available")
        for replica in list(self._candidates([])):
            try:
                return await call(replica.backend)
            except NotReady as e:
                self._eject(replica, e)
                error = e
        raise error

    async def model_spec(self, version: str) -> tuple[ModelSpec, str]:
        await self._start()
        result: tuple[ModelSpec, str] = await self._first(lambda b: b.model_spec(version))
        return result

    async def versions(self) -> list[dict[str, Any]]:
        await self._start()
        result: list[dict[str, Any]] = await self._first(lambda b: b.versions())
        return result

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        for replica in self._replicas.values():
            await replica.backend.close()

    # --- what /v1/models and /metrics show -------------------------------------------------

    def __len__(self) -> int:
        return len(self._replicas)

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "address": r.address,
                "state": "ready" if r.ready else "ejected",
                "outstanding": r.outstanding,
                "ejections": r.ejections,
                **({"last_error": r.last_error} if not r.ready else {}),
            }
            for r in self._replicas.values()
        ]


class ReplicaCollector:
    """Prometheus view of a ReplicaSet, read at scrape time."""

    def __init__(self, replicas: ReplicaSet) -> None:
        self.replicas = replicas

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "covidct_triton_replica_ready", "1 while the replica serves", labels=["replica"]
        )
        outstanding = GaugeMetricFamily(
            "covidct_triton_replica_outstanding", "Requests in flight", labels=["replica"]
        )
        ejections = CounterMetricFamily(
            "covidct_triton_replica_ejections", "Times taken out of rotation", labels=["replica"]
        )
        for r in self.replicas.status():
            ready.add_metric([r["address"]], 1.0 if r["state"] == "ready" else 0.0)
            outstanding.add_metric([r["address"]], r["outstanding"])
            ejections.add_metric([r["address"]], r["ejections"])
        retries = CounterMetricFamily(
            "covidct_triton_retries", "Inferences retried on another replica"
        )
        retries.add_metric([], self.replicas.retries)
        yield from (ready, outstanding, ejections, retries)
