"""The gateway as served (uvicorn + BoundedHttpTools): an endless request head is refused with
431 after a bounded number of bytes, and normal requests on the same server still work."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from gateway.protocol import MAX_HEAD_BYTES
from gateway.settings import GatewaySettings
from tests.gateway.test_app import FakeTriton
from tests.integration.conftest import running_gateway


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with running_gateway(GatewaySettings(), lambda s: FakeTriton()) as url:
        yield int(url.rsplit(":", 1)[1])


def test_an_endless_header_is_refused_after_a_bounded_number_of_bytes(port: int) -> None:
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        try:
            while sent < 64 * MAX_HEAD_BYTES:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # the server closed the connection: what we want
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert sent < 64 * MAX_HEAD_BYTES, "the server kept reading an endless header"
    if answer:  # the 431 can be lost to the reset when we were still sending
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


def test_normal_requests_still_work(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
