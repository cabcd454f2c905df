"""The FastAPI application: lifespan-held Triton client, one error handler, metrics, API key.

``create_app(settings, backend_factory)`` builds an app from the routers in ``gateway.routes``
(which reach its state through ``gateway.deps``); tests pass their own settings and, for error
handling, a fake backend. The gateway never imports TensorFlow (a test enforces it).
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from gateway.deps import GatewayState, Metrics, request_id
from gateway.errors import BadRequest, GatewayError, Unauthorized, problem_body
from gateway.limits import BodyLimit
from gateway.routes import admin, health, page, predict, study
from gateway.settings import GatewaySettings, get_settings
from gateway.triton import Backend, TritonBackend

log = logging.getLogger(__name__)

#: Open without the API key: health probes, and the page (static HTML holding no data; every
#: call it makes sends the key the user typed into it).
OPEN_PATHS = ("/healthz", "/readyz", "/")
ADMIN_PREFIX = "/admin/"  # protected by its own key (X-Admin-Key), not the API key
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def problem(error: GatewayError, request: Request) -> JSONResponse:
    return JSONResponse(
        problem_body(error, request_id(request)),
        status_code=error.status,
        headers=error.headers,
        media_type="application/problem+json",
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

    # Inside the envelope below (added later, so outside it): 401 comes before 413.
    app.add_middleware(BodyLimit, settings=settings)

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

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # Nobody reads this answer; it keeps a closed connection out of the 5xx figures.
        error = BadRequest("the client closed the connection before the whole body arrived")
        return problem(error, request)

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

    for router in (predict.router, study.router, page.router, health.router, admin.router):
        app.include_router(router)
    return app
