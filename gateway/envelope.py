"""The outermost layer of every request, as plain ASGI (no per-request task or body copy):
request id, API key, the saturation fast path, metrics and the one log line.

Saturation is answered here, before routing and before a byte of the body is read: when the
predictions in flight have reached the limit, a prediction request gets 503 with Retry-After
at the cost of a few dictionary lookups, so a flood of clients cannot slow the answers of the
requests already admitted. (The routes check again when they take their slots.) The 503
closes the connection without reading what the client still sends (a client in the middle of a
large body may see a reset instead; it retries either way): reading and dropping the bodies of
shed requests, as a 401 does (``covidct.bodylimit``), cost the admitted requests 6x their median
latency under ten times the capacity (``covidct bench overload``, side by side).
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable

from gateway.deps import GatewayState, Metrics
from gateway.errors import GatewayError, Saturated, Unauthorized
from gateway.limits import (
    SLICE_PATHS,
    STUDY_PATHS,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    body_to_drop,
    send_problem,
)
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

#: Open without the API key: health probes, and the page (static HTML holding no data; every
#: call it makes sends the key the user typed into it).
OPEN_PATHS = ("/healthz", "/readyz", "/")
ADMIN_PREFIX = "/admin/"  # protected by its own key (X-Admin-Key), not the API key
PREDICT_PATHS = (*SLICE_PATHS, *STUDY_PATHS)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Envelope:
    """ASGI middleware wrapping the whole app (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: GatewaySettings,
        metrics: Metrics,
        state: Callable[[], GatewayState | None],
    ) -> None:
        self.app, self.settings, self.metrics, self.state = app, settings, metrics, state
        key = settings.api_key
        self.api_key = key.get_secret_value().encode() if key is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])  # lower-case names, as ASGI servers give them
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        path = scope["path"]
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        refusal = self._refusal(path, headers)
        try:
            if refusal is not None:
                # a 401's body is dropped before the close, so the client sees why; a 503's
                # is not: reading the bodies of shed requests slowed the admitted ones 6x
                drain = body_to_drop(scope, receive) if refusal.status != 503 else None
                await send_problem(send_with_id, refusal, rid, drain=drain)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None)
            label = route or (
                path if refusal is not None and path in PREDICT_PATHS else "unmatched"
            )
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(elapsed)
            # Never the body, file names or DICOM tags: only what and how long.
            log.info("%s %s %d %.1f ms id=%s", scope["method"], label, status, elapsed * 1000, rid)

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> GatewayError | None:
        """401 without the API key; 503 at once when predictions are saturated."""
        if (
            self.api_key is not None
            and path not in OPEN_PATHS
            and not path.startswith(ADMIN_PREFIX)
        ) and not hmac.compare_digest(headers.get(b"x-api-key", b""), self.api_key):
            return Unauthorized("send the key in X-API-Key")
        state = self.state()
        if path in PREDICT_PATHS and state is not None:
            limit = self.settings.max_in_flight
            if state.in_flight >= limit:
                state.shed()
                return Saturated(
                    f"{state.in_flight} predictions in flight (limit {limit})",
                    self.settings.retry_after_s,
                )
        return None
