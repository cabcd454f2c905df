"""How the gateway is served: uvicorn with httptools (C parser) and uvloop, the head bounded.

httptools makes a rejected request cheap (under overload the gateway answers 503 in about
3 ms at the 50th percentile instead of 25 ms with the pure-Python h11; RELIABILITY.md), but
it buffers a request head of any size: one client sending a 200 MB header grew the process
by 200 MB. ``BoundedHttpTools`` counts the bytes of a head still incomplete and answers 431
and closes past ``MAX_HEAD_BYTES``, so a head costs at most that plus one read.

Every way the gateway is started uses ``UVICORN_OPTIONS``: ``covidct serve``, the benches
(``--http gateway.protocol:BoundedHttpTools``) and the tests.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import HeadersTooLarge, problem_body
from gateway.limits import MAX_HEADER_BYTES

log = logging.getLogger(__name__)

#: A head (request line and headers) still incomplete past this is refused: the ASGI layer
#: refuses complete heads past MAX_HEADER_BYTES, so this only catches the endless ones.
MAX_HEAD_BYTES = 2 * MAX_HEADER_BYTES


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head size bounded (see the module docstring)."""

    _in_head = False
    _head_bytes = 0

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes = True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and self.transport is not None and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()

    def _refuse_head(self) -> None:
        error = HeadersTooLarge(f"the request head passed {MAX_HEAD_BYTES} bytes")
        log.info("request head refused: %s", error)
        body = json.dumps(problem_body(error, "-")).encode()
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            "content-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()
        self._in_head = False


#: Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` wherever the gateway is served.
UVICORN_OPTIONS: dict[str, Any] = {"http": BoundedHttpTools, "loop": "uvloop"}
#: Seconds the gateway gives requests in flight to finish when asked to stop.
GRACE_S = 30
#: The same for the ``uvicorn`` command line.
UVICORN_ARGS = ["--http", "gateway.protocol:BoundedHttpTools", "--loop", "uvloop"]
