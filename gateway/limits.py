"""Request heads and bodies capped in the ASGI layer, before any route reads a byte of them.

Every request gets a byte limit from its path (a slice, a study, anything else). A declared
``Content-Length`` over the limit is answered 413 before the body is read (a client sending
``Expect: 100-continue`` never sends it); one that is not a single non-negative integer is 400.
A body without a length (chunked) or longer than it said is counted while it streams and
stopped with 413 at the limit. A client that stalls mid-body for ``body_idle_timeout_s`` gets
408, so a slow sender cannot hold an admission slot for ever. Headers past
``MAX_HEADER_BYTES`` in all are 431 (a head that never ends is refused earlier, while it
streams in: ``gateway.protocol``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

import anyio

from gateway.errors import (
    BadRequest,
    GatewayError,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestTimeout,
    problem_body,
)
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Room for multipart boundaries and part headers around the file itself.
MULTIPART_SLACK = 64 * 1024
#: Anything that is not an upload (admin JSON, probes): small.
OTHER_BODY_BYTES = 1024 * 1024
#: Every header name and value together; browsers and DICOMweb clients send a few kB.
MAX_HEADER_BYTES = 32 * 1024
SLICE_PATHS = ("/v1/predict", "/predict")
STUDY_PATHS = ("/v1/predict/study",)


def body_limit(settings: GatewaySettings, path: str) -> int:
    """The most bytes a request body to ``path`` may have."""
    if path in SLICE_PATHS:
        return settings.max_upload_bytes + MULTIPART_SLACK
    if path in STUDY_PATHS:
        return settings.max_study_bytes + MULTIPART_SLACK
    return OTHER_BODY_BYTES


class BodyLimit:
    """ASGI middleware: the body cap and the stall timeout described in the module docstring.

    Args:
        app: the application it wraps.
        settings: the gateway's settings (its limits per path and stall timeout); or, for
            another application (the DICOM node's HTTP port), ``limit_for`` and
            ``idle_timeout_s``.
        limit_for: the byte limit of a request body to a path.
        idle_timeout_s: a body that stalls this long is answered 408.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: GatewaySettings | None = None,
        *,
        limit_for: Callable[[str], int] | None = None,
        idle_timeout_s: float = 15.0,
    ) -> None:
        self.app = app
        if settings is not None:
            self.limit_for: Callable[[str], int] = partial(body_limit, settings)
            self.idle_timeout_s = settings.body_idle_timeout_s
        elif limit_for is not None:
            self.limit_for, self.idle_timeout_s = limit_for, idle_timeout_s
        else:
            raise TypeError("BodyLimit needs settings or limit_for")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(k) + len(v) for k, v in scope["headers"])
        if header_bytes > MAX_HEADER_BYTES:
            error: GatewayError = HeadersTooLarge(
                f"{header_bytes} bytes of headers; the limit is {MAX_HEADER_BYTES}"
            )
            await _answer(scope, send, error)
            return
        limit = self.limit_for(scope["path"])
        declared = [v for k, v in scope["headers"] if k.lower() == b"content-length"]
        if declared:
            refused = _check_declared(declared, limit)
            if refused is not None:
                await _answer(scope, send, refused)
                return
        received = 0
        body_done = False
        idle = self.idle_timeout_s

        async def limited() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can come: no deadline
                return await receive()
            try:
                with anyio.fail_after(idle):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"no body bytes for {idle:g} s; send the body at once"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"the body passed the limit of {limit} bytes")
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)


def _check_declared(values: list[bytes], limit: int) -> GatewayError | None:
    if len(set(values)) != 1 or not values[0].strip().isdigit():
        return BadRequest("Content-Length must be one non-negative integer")
    size = int(values[0])
    if size > limit:
        return PayloadTooLarge(f"a body of {size} bytes; the limit is {limit}")
    return None


async def _answer(scope: Scope, send: Send, error: GatewayError) -> None:
    """Answer at once with problem details; the body is never read, the connection closes."""
    request_id = str(scope.get("state", {}).get("request_id", "-"))
    log.info("%s refused before reading the body: %s id=%s", scope["path"], error, request_id)
    await send_problem(send, error, request_id, close=True)


async def send_problem(
    send: Send, error: GatewayError, request_id: str, close: bool = False
) -> None:
    """``error`` as a problem-details answer, sent from the ASGI layer (no app involved)."""
    body = json.dumps(problem_body(error, request_id)).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
