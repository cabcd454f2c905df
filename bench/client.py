"""The minimal HTTP/1.1 load client of the gateway benchmarks (``bench gateway``,
``capacity``, ``replicas``, ``overload``): real uploads, pre-encoded multipart requests,
kept-alive connections.

Minimal on purpose: the load generator shares the cores with the gateway, so it must cost
far less per request than the server it measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.corpus import real_data_dir, real_pngs
from bench.sweep import BenchError, Row
from covidct.addresses import LOCALHOST


@dataclass(frozen=True)
class Upload:
    name: str
    body: bytes
    content_type: str


def real_uploads(limit: int = 16, dicom_every: int = 4) -> list[Upload]:
    """Real slices to send: PNGs, with an uncompressed DICOM every ``dicom_every``-th."""
    root = real_data_dir()
    pngs = [Upload(p.name, p.read_bytes(), "image/png") for p in real_pngs(root)[:limit]]
    dicoms = [
        Upload(p.name, p.read_bytes(), "application/dicom")
        for p in sorted((root / "dicom").glob("*_uncompressed.dcm"))
    ]
    if not pngs:
        raise BenchError(f"no real PNG slices under {root}")
    out = []
    for i, png in enumerate(pngs):
        out.append(png)
        if dicoms and dicom_every and i % dicom_every == dicom_every - 1:
            out.append(dicoms[(i // dicom_every) % len(dicoms)])
    return out


@dataclass
class LevelResult:
    row: Row
    failures: int
    statuses: dict[int, int]


def multipart_request(host: str, path: str, up: Upload, headers: dict[str, str]) -> bytes:
    """One complete HTTP/1.1 POST of ``up`` as multipart field ``file``, encoded once."""
    boundary = "covidct-bench-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{up.name}"\r\n'
            f"Content-Type: {up.content_type}\r\n\r\n"
        ).encode()
        + up.body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Answer:
    """What one exchange on a kept-alive connection got back."""

    status: int
    retry_after: bool  # a Retry-After header was sent
    close: bool  # the server will close the connection
    body: bytes = b""


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> Answer:
    """Send one request on a kept-alive connection and read the whole answer."""
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    length, close, retry_after = 0, False, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        name = name.lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            close = "close" in value.lower()
        elif name == "retry-after":
            retry_after = True
    body = await reader.readexactly(length)
    return Answer(int(status_line.split()[1]), retry_after, close, body)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """The status of one exchange; a server closing the connection counts as a failure."""
    answer = await exchange(reader, writer, request)
    if answer.close:
        raise ConnectionResetError("server closed the connection")
    return answer.status


async def _level(
    url: str,
    uploads: Sequence[Upload],
    concurrency: int,
    requests: int,
    seconds: float,
    path: str = "/v1/predict",
    headers: dict[str, str] | None = None,
) -> LevelResult:
    """``concurrency`` kept-alive connections, each sending pre-encoded requests in turn.

    A minimal HTTP/1.1 client on purpose: the load generator shares the cores with the
    gateway, so it must cost far less per request than the server it measures.
    """
    parsed = urlsplit(url)
    host, port = parsed.hostname or LOCALHOST, parsed.port or 80
    encoded = [multipart_request(f"{host}:{port}", path, u, headers or {}) for u in uploads]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while issued < requests and time.perf_counter() < deadline:
                request = encoded[issued % len(encoded)]
                issued += 1
                start = time.perf_counter()
                try:
                    status = await _exchange(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    status = 0
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                latencies.append(time.perf_counter() - start)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    try:
        reader, writer = await asyncio.open_connection(host, port)
        await _exchange(reader, writer, encoded[0])  # warm-up, not counted
        writer.close()
    except OSError as e:
        raise BenchError(f"cannot reach {url}: {e}") from e
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ok = statuses.get(200, 0)
    if not latencies:
        raise BenchError(f"no request completed at concurrency {concurrency}")
    return LevelResult(
        Row.from_latencies(concurrency, latencies, wall), len(latencies) - ok, statuses
    )


def load_level(
    url: str,
    uploads: Sequence[Upload],
    concurrency: int,
    requests: int,
    seconds: float,
    path: str = "/v1/predict",
    headers: dict[str, str] | None = None,
) -> LevelResult:
    """One bounded level: ``concurrency`` clients until ``requests`` or ``seconds``."""
    return asyncio.run(_level(url, uploads, concurrency, requests, seconds, path, headers))
