"""What every router needs from a request: the gateway's state, metrics and request id.

The app factory puts a ``GatewayState`` on ``app.state.gw`` in its lifespan; routers reach it
through ``state_of(request)`` and never import the app.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.errors import NotReady, Saturated
from gateway.fleet import SharedServing
from gateway.settings import GatewaySettings
from gateway.triton import Backend
from gateway.versions import ServingVersions


class Metrics:
    """Prometheus metrics in a registry of the app's own (several apps may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "covidct_requests_total", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "covidct_request_seconds", "HTTP request latency", ["route"], registry=self.registry
        )
        self.preprocess = Histogram(
            "covidct_preprocess_seconds", "Decode, crop and resize", registry=self.registry
        )
        self.inference = Histogram(
            "covidct_inference_seconds", "Triton round trip", registry=self.registry
        )
        self.in_flight = Gauge(
            "covidct_in_flight", "Predictions in progress", registry=self.registry
        )
        self.rejections = Counter(
            "covidct_rejections_total", "Answered 503 at once (saturated)", registry=self.registry
        )


@dataclass
class GatewayState:
    settings: GatewaySettings
    backend: Backend
    metrics: Metrics
    limiter: anyio.CapacityLimiter
    serving: ServingVersions = field(init=False)
    shared: SharedServing | None = None  # with COVIDCT_SERVING_DIR: every process switches
    in_flight: int = 0
    studies: int = 0
    shed_at: float = -1e9  # time.monotonic() of the last 503 for saturation

    def __post_init__(self) -> None:
        self.serving = ServingVersions(self.backend, self.settings.model_version)
        if self.settings.serving_dir:
            self.shared = SharedServing(Path(self.settings.serving_dir), self.serving)

    def shed(self) -> None:
        """Count a 503 for saturation (and remember when: see ``shedding``)."""
        self.metrics.rejections.inc()
        self.shed_at = time.monotonic()

    def shedding(self, within_s: float = 1.0) -> bool:
        """Whether the gateway answered a 503 for saturation in the last ``within_s``."""
        return time.monotonic() - self.shed_at < within_s

    @asynccontextmanager
    async def slot(self, units: int = 1) -> AsyncIterator[None]:
        """Admit ``units`` concurrent predictions, or answer 503 with Retry-After at once when
        they would pass the in-flight limit."""
        if units and self.in_flight + units > self.settings.max_in_flight:
            self.shed()
            raise Saturated(
                f"{self.in_flight} predictions in flight (limit {self.settings.max_in_flight})",
                self.settings.retry_after_s,
            )
        self.in_flight += units
        self.metrics.in_flight.inc(units)
        try:
            yield
        finally:
            self.in_flight -= units
            self.metrics.in_flight.dec(units)

    @asynccontextmanager
    async def study_slot(self) -> AsyncIterator[None]:
        """Admit one study (its upload is spooled to disk: this bounds the spool), or 503."""
        limit = self.settings.max_studies_in_flight
        if self.studies >= limit:
            self.shed()
            raise Saturated(
                f"{self.studies} studies in flight (limit {limit})", self.settings.retry_after_s
            )
        self.studies += 1
        try:
            yield
        finally:
            self.studies -= 1


def state_of(request: Request) -> GatewayState:
    state = getattr(request.app.state, "gw", None)
    if state is None:
        raise NotReady("the gateway is starting")
    return state


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))
