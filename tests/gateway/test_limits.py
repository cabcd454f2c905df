"""The ASGI body cap: declared lengths refused before a byte is read, streamed bodies stopped at
the cap, stalled bodies timed out, oversized heads refused."""

from __future__ import annotations

import json

import anyio
import pytest

from gateway.errors import PayloadTooLarge, RequestTimeout
from gateway.limits import MULTIPART_SLACK, OTHER_BODY_BYTES, BodyLimit, body_limit
from gateway.settings import GatewaySettings

SETTINGS = GatewaySettings(max_upload_bytes=1000, max_study_bytes=5000, body_idle_timeout_s=0.2)


class Downstream:
    """An app that reads the whole body, as the routes do."""

    def __init__(self) -> None:
        self.called = False
        self.received = 0

    async def __call__(self, scope, receive, send) -> None:
        self.called = True
        while True:
            message = await receive()
            self.received += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _run(path: str, headers: list[tuple[bytes, bytes]], parts: list[bytes], stall: bool = False):
    app = Downstream()
    sent: list[dict] = []

    async def receive():
        if parts:
            body = parts.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(parts) or stall}
        await anyio.sleep(10)  # a client that stopped sending
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "headers": headers, "state": {"request_id": "r1"}}

    async def main():
        await BodyLimit(app, SETTINGS)(scope, receive, send)

    anyio.run(main)
    return app, sent


def _status(sent: list[dict]) -> tuple[int, dict]:
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_limits_by_route() -> None:
    assert body_limit(SETTINGS, "/v1/predict") == 1000 + MULTIPART_SLACK
    assert body_limit(SETTINGS, "/v1/predict/study") == 5000 + MULTIPART_SLACK
    assert body_limit(SETTINGS, "/admin/v1/serving") == OTHER_BODY_BYTES


def test_a_declared_length_over_the_cap_is_413_before_the_app_runs() -> None:
    declared = str(body_limit(SETTINGS, "/v1/predict") + 1).encode()
    app, sent = _run("/v1/predict", [(b"content-length", declared)], [b"x"])
    status, problem = _status(sent)
    assert status == 413 and not app.called
    assert problem["request_id"] == "r1" and "limit" in problem["detail"]


@pytest.mark.parametrize("values", [[b"-1"], [b"12ab"], [b"10", b"11"]])
def test_a_bad_declared_length_is_400(values: list[bytes]) -> None:
    app, sent = _run("/v1/predict", [(b"content-length", v) for v in values], [b"x"])
    assert _status(sent)[0] == 400 and not app.called


def test_a_streamed_body_stops_at_the_cap() -> None:
    cap = body_limit(SETTINGS, "/v1/predict")
    parts = [b"x" * 20_000] * 10  # no Content-Length: chunked
    with pytest.raises(PayloadTooLarge):
        _run("/v1/predict", [], parts)
    app, sent = _run("/v1/predict", [], [b"x" * (cap // 2), b"x" * (cap // 2)])
    assert app.received == cap // 2 * 2 and sent[0]["status"] == 200


def test_a_stalled_body_times_out() -> None:
    with pytest.raises(RequestTimeout):  # else: a 10 s wait, then no error
        _run("/v1/predict", [(b"content-length", b"100")], [b"x" * 10], stall=True)


def test_oversized_headers_are_431() -> None:
    app, sent = _run("/healthz", [(b"x-padding", b"a" * 40_000)], [])
    assert _status(sent)[0] == 431 and not app.called
