"""The gateway's request limits: ``covidct.bodylimit`` (the ASGI layer that caps heads and
bodies before any route reads them) with the gateway's byte limit per path.

Every request gets a byte limit from its path (a slice, a study, anything else); over it, a
declared length is 413 before the body is read, a streamed body is stopped with 413 at the
limit, and a body that stalls for ``body_idle_timeout_s`` is 408 (``covidct.bodylimit``).
Headers past ``MAX_HEADER_BYTES`` in all are 431 (a head that never ends is refused earlier,
while it streams in: ``gateway.protocol``).
"""

from __future__ import annotations

from functools import partial

from covidct.bodylimit import MAX_HEADER_BYTES as MAX_HEADER_BYTES
from covidct.bodylimit import OTHER_BODY_BYTES as OTHER_BODY_BYTES
from covidct.bodylimit import ASGIApp as ASGIApp
from covidct.bodylimit import BodyLimit as _BodyLimit
from covidct.bodylimit import Message as Message
from covidct.bodylimit import Receive as Receive
from covidct.bodylimit import Scope as Scope
from covidct.bodylimit import Send as Send
from covidct.bodylimit import body_to_drop as body_to_drop
from covidct.bodylimit import send_problem as send_problem
from gateway.settings import GatewaySettings

#: Room for multipart boundaries and part headers around the file itself.
MULTIPART_SLACK = 64 * 1024
SLICE_PATHS = ("/v1/predict", "/predict")
STUDY_PATHS = ("/v1/predict/study",)


def body_limit(settings: GatewaySettings, path: str) -> int:
    """The most bytes a request body to ``path`` may have."""
    if path in SLICE_PATHS:
        return settings.max_upload_bytes + MULTIPART_SLACK
    if path in STUDY_PATHS:
        return settings.max_study_bytes + MULTIPART_SLACK
    return OTHER_BODY_BYTES


class BodyLimit(_BodyLimit):
    """``covidct.bodylimit.BodyLimit`` with the gateway's limits per path and its stall
    timeout."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        super().__init__(app, partial(body_limit, settings), settings.body_idle_timeout_s)
