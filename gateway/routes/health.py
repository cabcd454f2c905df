"""Liveness, readiness, the served model and its ModelSpec, and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.deps import state_of
from gateway.errors import GatewayError, NotReady
from gateway.replicas import ReplicaSet
from gateway.schemas import Readiness, problems

log = logging.getLogger(__name__)
router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Triton or the model is not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Triton and the model are ready (and the ModelSpec was read)."""
    gw = state_of(request)
    try:
        version = await gw.serving.current()
        ready = await gw.backend.ready(version)
        if ready:
            await gw.serving.spec(version)
    except Exception:  # not ready is the answer, whatever the reason
        ready = False
    return JSONResponse(
        {"status": "ready" if ready else "not ready"}, status_code=200 if ready else 503
    )


@router.get("/v1/models", responses=problems(401, 503))
async def models(request: Request) -> dict[str, Any]:
    """The served model, its versions and its ModelSpec."""
    gw = state_of(request)
    try:
        version = await gw.serving.current()
        spec = await gw.serving.spec(version)
    except GatewayError as e:  # our own words
        raise NotReady(f"model spec not available: {e}") from e
    except Exception as e:
        log.warning("model spec not available: %s: %s", type(e).__name__, e)
        raise NotReady("model spec not available") from e
    replicas = gw.backend.status() if isinstance(gw.backend, ReplicaSet) else []
    return {
        "name": spec.name,
        "serving_version": version,
        "versions": await gw.backend.versions(),
        "replicas": replicas,
        "model_spec": spec.to_dict(),
        "intended_use": spec.intended_use(),
    }


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(
        generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
