"""The FastAPI application: lifespan-held Triton client, one error handler, metrics, API key.

``create_app(settings, backend_factory)`` builds an app from the routers in ``gateway.routes``
(which reach its state through ``gateway.deps``); tests pass their own settings and, for error
handling, a fake backend. The gateway never imports TensorFlow (a test enforces it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from covidct.preprocessing import NATIVE
from gateway.deps import GatewayState, Metrics, request_id
from gateway.envelope import Envelope
from gateway.errors import BadRequest, GatewayError, HTTPProblem, problem_body
from gateway.limits import BodyLimit
from gateway.replicas import ReplicaCollector, ReplicaSet
from gateway.routes import admin, health, page, predict, study
from gateway.schemas import ANY_ROUTE
from gateway.settings import GatewaySettings, get_settings
from gateway.triton import Backend

log = logging.getLogger(__name__)


def problem(error: GatewayError, request: Request) -> JSONResponse:
    """``error`` as an RFC 9457 problem answer carrying the request's id."""
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
    """The gateway: its lifespan (backend, state), middleware, error handlers and routes.

    Args:
        settings: the gateway's settings (default: from the environment, ``get_settings``).
        backend_factory: builds the Triton backend at start-up (default: ``ReplicaSet``);
            tests pass a fake one.
    """
    settings = settings or get_settings()
    metrics = Metrics()
    app = FastAPI(
        title="covidct gateway",
        version="1",
        lifespan=_lifespan(settings, backend_factory or ReplicaSet, metrics),
        description="COVID-19 chest CT slice classification. Not a medical device.",
        responses=ANY_ROUTE,
    )
    _add_middleware(app, settings, metrics)
    _add_error_handlers(app)
    for router in (predict.router, study.router, page.router, health.router, admin.router):
        app.include_router(router)
    return app


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def _lifespan(
    settings: GatewaySettings, factory: Callable[[GatewaySettings], Backend], metrics: Metrics
) -> Lifespan:
    """Start-up and shut-down: the backend and the state every route reads, the replicas'
    metrics, the shared serving record's follower; the model spec read once if Triton is up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = factory(settings)
        state = GatewayState(
            settings, backend, metrics, anyio.CapacityLimiter(settings.preprocess_workers)
        )
        app.state.gw = state
        if not NATIVE:
            log.warning("covidct._native is not built: preprocessing runs its slower Python code")
        collector = ReplicaCollector(backend) if isinstance(backend, ReplicaSet) else None
        if collector is not None:
            metrics.registry.register(collector)
        follower = None
        if state.shared is not None:
            await state.shared.start()
            follower = asyncio.get_running_loop().create_task(state.shared.run())
        await _announce_model(state)
        yield
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        if collector is not None:
            metrics.registry.unregister(collector)
        await backend.close()

    return lifespan


async def _announce_model(state: GatewayState) -> None:
    """Log the model served at start (and write the first shared serving record)."""
    try:
        version = await state.serving.current()
        spec = await state.serving.spec(version)
        log.info("serving model %s version %s (S=%d)", spec.name, version, spec.image_size)
        if state.shared is not None:
            await state.shared.follow()  # writes the first record if there is none
    except GatewayError as e:  # Triton may come up after the gateway: retried per request
        log.warning("model spec not available yet: %s", e)


def _add_middleware(app: FastAPI, settings: GatewaySettings, metrics: Metrics) -> None:
    """The envelope, the body cap and, when origins are configured, CORS."""
    # The envelope (request id, API key, saturation, metrics, log) wraps the body cap: 401
    # comes before 413. Both are plain ASGI: no per-request task, no body copy.
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(
        Envelope, settings=settings, metrics=metrics, state=lambda: getattr(app.state, "gw", None)
    )
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answered as a problem body: the gateway's own, the framework's, a client
    gone mid-body, and request validation."""

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return problem(exc, request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("framework error %d: %s", exc.status_code, exc.detail)
        else:
            log.info("framework answer %d: %s", exc.status_code, exc.detail)
        return problem(HTTPProblem(exc.status_code, dict(exc.headers or {})), request)

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
