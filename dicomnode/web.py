"""The node's HTTP port (``HTTP_PORT``): ``/status``, ``/metrics``, DICOMweb STOW-RS in, and
the study viewer (``/studies``).

A FastAPI application served by uvicorn in a thread of the node's process (``WebServer``).
Bodies pass the limits layer the gateway uses too (``covidct.bodylimit``: a declared length
over the cap is 413 before a byte is read, a streamed body is counted and stopped at the cap, a
stalled one is 408); errors are problem details, as the gateway's (``covidct.problems``).
STOW-RS and the viewer's data need the node's API key (``COVIDCT_PACS_API_KEY``) in
``X-API-Key`` or as ``Authorization: Bearer``; the viewer's page itself holds no data (its
script asks for the key and sends it with each request), and ``/status`` and ``/metrics``
carry no patient data and stay open, like the gateway's probes.
"""

from __future__ import annotations

import hmac
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydicom.uid import UID
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from covidct.bodylimit import OTHER_BODY_BYTES, BodyLimit
from covidct.problems import BadRequest, HttpError, HTTPProblem, NotFound, problem_body
from dicomnode.intake import Intake
from dicomnode.multipart import MultipartError, Part, RelatedParser, UnsupportedMedia
from dicomnode.multipart import parse_content_type as parse_related_type
from dicomnode.settings import NodeSettings
from dicomnode.status import NodeMetrics
from dicomnode.stow import StowIntake
from dicomnode.viewer import SR_FILE, ViewStore

logger = logging.getLogger(__name__)


class Unauthorized(HttpError):
    status, title = 401, "Missing or wrong API key"


class UnsupportedMediaTypeError(HttpError):
    status, title = 415, "Unsupported media type"


STOW_PREFIX = "/dicomweb/studies"
DICOM_JSON = "application/dicom+json"
PAGE = Path(__file__).parent / "static" / "studies.html"


def body_limit(settings: NodeSettings, path: str) -> int:
    """The most bytes a request body to ``path`` may have: a STOW-RS request up to
    ``max_stow_bytes``, anything else 1 MiB."""
    return settings.max_stow_bytes if path.startswith(STOW_PREFIX) else OTHER_BODY_BYTES


def check_key(settings: NodeSettings, request: Request) -> None:
    """Pass when no key is set, or the request carries it.

    Raises:
        Unauthorized: a key is set and the request's is missing or wrong.
    """
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    given = request.headers.get("x-api-key", "")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = given or token.strip()
    if not hmac.compare_digest(given.encode(), expected):
        raise Unauthorized(
            "send the node's API key in X-API-Key or as Authorization: Bearer",
            {"WWW-Authenticate": "Bearer"},
        )


def create_app(
    settings: NodeSettings,
    status: Callable[[], dict[str, Any]],
    metrics: NodeMetrics,
    intake: Intake,
    views: ViewStore | None = None,
) -> FastAPI:
    """The node's HTTP application (``views``: the study viewer's data; None: an empty
    viewer)."""
    views = views or ViewStore(settings.spool_dir, settings.view_keep_hours)
    app = FastAPI(title="covidct DICOM node", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        BodyLimit,
        limit_for=lambda path: body_limit(settings, path),
        idle_timeout_s=settings.body_idle_timeout_s,
    )

    @app.exception_handler(HttpError)
    async def _problem(request: Request, error: HttpError) -> Response:
        rid = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex[:16]
        logger.info("%s %s: %d %s", request.method, request.url.path, error.status, error)
        return JSONResponse(
            problem_body(error, rid),
            status_code=error.status,
            headers=error.headers,
            media_type="application/problem+json",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _framework(request: Request, error: StarletteHTTPException) -> Response:
        return await _problem(request, HTTPProblem(error.status_code, dict(error.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> Response:
        return await _problem(request, BadRequest(f"malformed path or query: {error.errors()[:1]}"))

    @app.get("/status")
    def _status() -> Response:
        return JSONResponse(status())

    @app.get("/metrics")
    def _metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(STOW_PREFIX)
    async def _stow_any(request: Request) -> Response:
        return await stow(settings, intake, request, None)

    @app.post(STOW_PREFIX + "/{study}")
    async def _stow_study(request: Request, study: str) -> Response:
        if not UID(study).is_valid:
            raise BadRequest("the Study Instance UID in the path is not a valid UID")
        return await stow(settings, intake, request, study)

    add_viewer(app, settings, views)
    return app


def add_viewer(app: FastAPI, settings: NodeSettings, views: ViewStore) -> None:
    """``/studies``: the page (list and one series), and the data its script fetches."""

    def found(path: Path | None, what: str) -> Path:
        if path is None:
            raise NotFound(f"no {what} kept for the viewer (unknown, or older than its hours)")
        return path

    @app.get("/studies/api/series")
    def _series_list(request: Request) -> Response:
        check_key(settings, request)
        return JSONResponse(views.summaries())

    @app.get("/studies/api/series/{key}")
    def _series(request: Request, key: str) -> Response:
        check_key(settings, request)
        summary = views.summary(key)
        if summary is None:
            raise NotFound("no such series kept for the viewer (unknown, or older than its hours)")
        return JSONResponse(summary)

    @app.get("/studies/api/series/{key}/{kind}/{index}.png")
    def _image(request: Request, key: str, kind: str, index: int) -> Response:
        check_key(settings, request)
        if kind not in ("slice", "heatmap"):
            raise NotFound(f"no image kind {kind[:20]!r}; slice or heatmap")
        path = found(views.file(key, f"{kind}-{index:04d}.png"), f"{kind} {index}")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/studies/api/series/{key}/sr.dcm")
    def _sr(request: Request, key: str) -> Response:
        check_key(settings, request)
        path = found(views.file(key, SR_FILE), "SR")
        return FileResponse(
            path,
            media_type="application/dicom",
            filename="covidct-report.dcm",
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/studies")
    @app.get("/studies/{key}")
    def _page() -> Response:
        return HTMLResponse(PAGE.read_text(), headers={"Cache-Control": "no-store"})


async def stow(
    settings: NodeSettings, intake: Intake, request: Request, study: str | None
) -> Response:
    """One STOW-RS request: every part through the intake as it arrives; the DICOM JSON
    Store Instances Response (200, 202 or 409).

    Raises:
        Unauthorized: no or a wrong API key.
        UnsupportedMediaTypeError: not ``multipart/related`` of ``application/dicom``.
        BadRequest: no boundary, or a malformed body (the instances before the fault are
            kept, and the detail says how many).
    """
    check_key(settings, request)
    try:
        content_type = parse_related_type(request.headers.get("content-type"))
    except UnsupportedMedia as e:
        raise UnsupportedMediaTypeError(str(e)) from e
    except MultipartError as e:
        raise BadRequest(str(e)) from e
    if content_type.type not in ("", "application/dicom"):
        raise UnsupportedMediaTypeError(
            f'type="{content_type.type}": only application/dicom parts are taken'
        )
    ended: list[Part] = []
    parser = RelatedParser(content_type.boundary, ended.append, settings.max_instance_bytes)
    started = time.perf_counter()
    with StowIntake(intake, study) as receiver:  # its series stay receiving until the end
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                while ended:
                    await run_in_threadpool(receiver.part, ended.pop(0))
            parser.close()
        except MultipartError as e:
            kept = len(receiver.response.stored)
            raise BadRequest(f"{e}; {kept} instance(s) before the fault were stored") from e
        except ClientDisconnect:  # nobody to answer; what was stored stays
            kept = len(receiver.response.stored)
            logger.warning("STOW-RS: the client went away after %d stored instance(s)", kept)
            return Response(status_code=400)
    answer = receiver.response
    logger.info(
        "STOW-RS: %d stored, %d failed in %.2f s",
        len(answer.stored),
        len(answer.failed),
        time.perf_counter() - started,
    )
    response = JSONResponse(answer.json(), status_code=answer.status, media_type=DICOM_JSON)
    for warning in answer.warnings():
        response.headers.append("Warning", warning)
    return response


class WebServer:
    """uvicorn serving ``app`` on ``host:port`` in a thread of its own.

    Args:
        host: the address to listen on.
        port: the port (0: any free one; ``port`` then says which).
        app: the ASGI application.
    """

    def __init__(self, host: str, port: int, app: Any) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            loop="asyncio",
            http="h11",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="pacs-http",
            daemon=True,
        )

    def start(self, timeout_s: float = 10.0) -> None:
        """Serve from now on (returns once the server listens)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started and time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError("the node's HTTP server stopped while starting")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop serving (requests in progress get up to 5 s) and close the socket."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
