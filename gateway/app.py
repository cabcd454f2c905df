"""The FastAPI application: lifespan-held Triton client, one error handler, metrics, API key.

``create_app(settings, backend_factory)`` builds an app; tests pass their own settings and,
for error handling, a fake backend. The gateway never imports TensorFlow (a test enforces it).
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.errors import BadRequest, GatewayError, NotReady, Saturated, Unauthorized
from gateway.serving import ServingVersions
from gateway.settings import GatewaySettings, get_settings
from gateway.triton import Backend, TritonBackend

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")
ADMIN_PREFIX = "/admin/"  # protected by its own key (X-Admin-Key), not the API key
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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
    in_flight: int = 0

    def __post_init__(self) -> None:
        self.serving = ServingVersions(self.backend, self.settings.model_version)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Admit a prediction, or answer 503 with Retry-After at once when saturated."""
        if self.in_flight >= self.settings.max_in_flight:
            self.metrics.rejections.inc()
            raise Saturated(
                f"{self.in_flight} predictions in flight (limit {self.settings.max_in_flight})",
                self.settings.retry_after_s,
            )
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


def problem(error: GatewayError, request: Request) -> JSONResponse:
    body = {
        "type": f"https://covidct.example/problems/{type(error).__name__}",
        "title": error.title,
        "status": error.status,
        "detail": str(error),
        "request_id": request_id(request),
    }
    return JSONResponse(
        body, status_code=error.status, headers=error.headers, media_type="application/problem+json"
    )


def create_app(
    settings: GatewaySettings | None = None,
    backend_factory: Callable[[GatewaySettings], Backend] | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    factory = backend_factory or TritonBackend
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = factory(settings)
        state = GatewayState(
            settings, backend, metrics, anyio.CapacityLimiter(settings.preprocess_workers)
        )
        app.state.gw = state
        try:
            version = await state.serving.current()
            spec = await state.serving.spec(version)
            log.info("serving model %s version %s (S=%d)", spec.name, version, spec.image_size)
        except GatewayError as e:  # Triton may come up after the gateway: retried per request
            log.warning("model spec not available yet: %s", e)
        yield
        await backend.close()

    app = FastAPI(
        title="covidct gateway",
        version="1",
        lifespan=lifespan,
        description="COVID-19 chest CT slice classification. Not a medical device.",
    )

    @app.middleware("http")
    async def envelope(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        given = request.headers.get("x-request-id", "")
        request.state.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        started = time.perf_counter()
        path = request.url.path
        if (
            settings.api_key is not None
            and path not in OPEN_PATHS
            and not path.startswith(ADMIN_PREFIX)
        ):
            supplied = request.headers.get("x-api-key", "").encode()
            expected = settings.api_key.get_secret_value().encode()
            if not hmac.compare_digest(supplied, expected):
                response: Response = problem(Unauthorized("send the key in X-API-Key"), request)
                return _finish(request, response, started)
        response = await call_next(request)
        return _finish(request, response, started)

    def _finish(request: Request, response: Response, started: float) -> Response:
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - started
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(elapsed)
        response.headers["X-Request-ID"] = request_id(request)
        # Never the body, file names or DICOM tags: only what and how long.
        log.info(
            "%s %s %d %.1f ms id=%s",
            request.method,
            path,
            response.status_code,
            elapsed * 1000,
            request_id(request),
        )
        return response

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return problem(exc, request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return problem(BadRequest(f"{where}: {first.get('msg', 'invalid request')}"), request)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )

    from gateway.admin import router as admin_router
    from gateway.routes import router

    app.include_router(router)
    app.include_router(admin_router)
    return app


def state_of(request: Request) -> GatewayState:
    state = getattr(request.app.state, "gw", None)
    if state is None:
        raise NotReady("the gateway is starting")
    return state
