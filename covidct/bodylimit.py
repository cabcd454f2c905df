"""Request heads and bodies capped in the ASGI layer, before any route reads a byte of them
(the gateway's and the DICOM node's HTTP port).

Every request gets a byte limit from its path (``limit_for``). A declared ``Content-Length``
over the limit is answered 413 before the body is read (a client sending ``Expect:
100-continue`` never sends it); one that is not a single non-negative integer is 400. A body
without a length (chunked) or longer than it said is counted while it streams and stopped with
413 at the limit. A client that stalls mid-body for ``idle_timeout_s`` gets 408, so a slow
sender cannot hold a slot for ever. Headers past ``MAX_HEADER_BYTES`` in all are 431.

Before a 413 closes the connection, what the client is still sending is read and dropped, up to
``DRAIN_BYTES`` and ``DRAIN_S`` (not when it waits for ``100 Continue``): a socket closed with
unread bytes is reset (TCP RST), and a reset client loses the answer that says why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from covidct.problems import (
    BadRequest,
    HeadersTooLarge,
    HttpError,
    PayloadTooLarge,
    RequestTimeout,
    problem_body,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Anything that is not an upload (admin JSON, probes): small.
OTHER_BODY_BYTES = 1024 * 1024
#: Every header name and value together; browsers and DICOMweb clients send a few kB.
MAX_HEADER_BYTES = 32 * 1024
#: The most of a refused body read and dropped before the 413 closes the connection.
DRAIN_BYTES = 64 * 1024 * 1024
#: The longest that takes.
DRAIN_S = 5.0


class BodyLimit:
    """ASGI middleware: the body cap and the stall timeout described in the module docstring.

    Args:
        app: the application it wraps.
        limit_for: the byte limit of a request body to a path.
        idle_timeout_s: a body that stalls this long is answered 408.
    """

    def __init__(
        self, app: ASGIApp, limit_for: Callable[[str], int], idle_timeout_s: float
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(k) + len(v) for k, v in scope["headers"])
        if header_bytes > MAX_HEADER_BYTES:
            error: HttpError = HeadersTooLarge(
                f"{header_bytes} bytes of headers; the limit is {MAX_HEADER_BYTES}"
            )
            await _answer(scope, send, error)
            return
        limit = self.limit_for(scope["path"])
        declared = [v for k, v in scope["headers"] if k.lower() == b"content-length"]
        if declared:
            refused = _check_declared(declared, limit)
            if refused is not None:
                drain = body_to_drop(scope, receive) if refused.status == 413 else None
                await _answer(scope, send, refused, drain)
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
                    if message.get("more_body", False):
                        await _drain(receive)
                    raise PayloadTooLarge(f"the body passed the limit of {limit} bytes")
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)


def _check_declared(values: list[bytes], limit: int) -> HttpError | None:
    if len(set(values)) != 1 or not values[0].strip().isdigit():
        return BadRequest("Content-Length must be one non-negative integer")
    size = int(values[0])
    if size > limit:
        return PayloadTooLarge(f"a body of {size} bytes; the limit is {limit}")
    return None


async def _answer(scope: Scope, send: Send, error: HttpError, drain: Receive | None = None) -> None:
    """Answer at once with problem details; the connection closes. The body is never read,
    except to drop it after the answer (``drain``: see the module docstring)."""
    request_id = str(scope.get("state", {}).get("request_id", "-"))
    log.info("%s refused before reading the body: %s id=%s", scope["path"], error, request_id)
    await send_problem(send, error, request_id, close=True, drain=drain)


def body_to_drop(scope: Scope, receive: Receive) -> Receive | None:
    """``receive`` when a request refused unread still has a body coming (a length over 0, or
    chunked), for ``send_problem`` to drop before closing; None when there is none, or when
    the client waits for ``100 Continue`` (it sends nothing unless asked)."""
    headers = {k.lower(): v for k, v in scope["headers"]}
    if b"expect" in headers:
        return None
    length = headers.get(b"content-length", b"0").strip()
    has_body = (length.isdigit() and int(length) > 0) or b"transfer-encoding" in headers
    return receive if has_body else None


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a request body, up to ``DRAIN_BYTES`` and ``DRAIN_S``."""
    dropped = 0
    with anyio.move_on_after(DRAIN_S):
        while dropped <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


async def send_problem(
    send: Send,
    error: HttpError,
    request_id: str,
    close: bool = False,
    drain: Receive | None = None,
) -> None:
    """``error`` as a problem-details answer, sent from the ASGI layer (no app involved);
    with ``drain``, the request body's rest is dropped before the answer ends (``_drain``)."""
    body = json.dumps(problem_body(error, request_id)).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": drain is not None})
    if drain is not None:
        await _drain(drain)
        await send({"type": "http.response.body", "body": b""})
