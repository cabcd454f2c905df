"""``covidct bench gateway``: a bounded async load generator against ``/v1/predict``.

Real 512² PNG slices and real DICOM files are uploaded in turn by ``c`` concurrent
clients; each level stops after a fixed number of requests or seconds, whichever comes
first. With ``--triton`` the same levels are measured directly against Triton with
perf_analyzer, level by level in the same run, and the report gives the ratio.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.corpus import real_data_dir, real_pngs
from bench.sweep import BenchError, Row, plot, rel, save, table, write_csv


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
    """What one exchange on a kept-alive connection got back (the body is read and dropped)."""

    status: int
    retry_after: bool  # a Retry-After header was sent
    close: bool  # the server will close the connection


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
    await reader.readexactly(length)
    return Answer(int(status_line.split()[1]), retry_after, close)


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
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
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


def run_gateway_bench(
    url: str,
    levels: Sequence[int],
    out: Path,
    triton_url: str | None = None,
    requests: int = 200,
    seconds: float = 30.0,
    measurement_ms: int = 4000,
    api_key: str | None = None,
    stability: float = 50.0,
    label: str = "",
) -> str:
    """The whole ``covidct bench gateway`` command; returns its Markdown section."""
    import httpx

    from bench.perf import run_level, served_spec, write_input_data
    from covidct.config import ModelSpec
    from covidct.preprocessing import preprocess_bytes

    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        info = httpx.get(f"{url}/v1/models", headers=headers, timeout=10).json()
    except (httpx.HTTPError, ValueError) as e:
        raise BenchError(f"gateway at {url} does not answer /v1/models: {e}") from e
    spec = ModelSpec.from_dict(info["model_spec"])
    uploads = real_uploads()
    first = uploads[0]
    answer = httpx.post(
        f"{url}/v1/predict",
        headers=headers,
        timeout=60,
        files={"file": (first.name, first.body, first.content_type)},
    )
    if answer.status_code != 200:
        raise BenchError(f"gateway at {url} answered {answer.status_code}: {answer.text[:300]}")
    version = str(answer.json()["model"]["version"])  # Triton direct measures the same one
    gateway_rows: list[Row] = []
    triton_rows: list[Row] = []
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        input_data = Path(tmp) / "input.json"
        if triton_url:
            import numpy as np

            served_spec(triton_url, spec.name, version, "grpc")  # fails early if unreachable
            images = np.stack([preprocess_bytes(u.body, spec.image_size).image for u in uploads])
            write_input_data(input_data, spec, images)
        for c in levels:
            if triton_url:
                raw = out / "raw" / f"triton-c{c}.csv"
                raw.parent.mkdir(parents=True, exist_ok=True)
                triton_rows.append(
                    run_level(
                        triton_url,
                        spec.name,
                        version,
                        c,
                        input_data,
                        raw,
                        measurement_ms=measurement_ms,
                        stability=stability,
                    )
                )
            result = load_level(url, uploads, c, requests, seconds, headers=headers)
            failures += result.failures
            gateway_rows.append(result.row)
    write_csv(out / "gateway.csv", gateway_rows)
    curves = {"gateway /v1/predict": gateway_rows}
    if triton_rows:
        write_csv(out / "triton.csv", triton_rows)
        curves["Triton direct"] = triton_rows
    plot(out / "gateway.png", curves, f"Gateway vs Triton, {spec.backbone} {spec.image_size}²")
    n_png = sum(u.content_type == "image/png" for u in uploads)
    lines = [
        f"## covidct bench gateway ({spec.backbone}, S={spec.image_size}, version {version}"
        + (f"; {label})" if label else ")"),
        "",
        "Bounded async client (pre-encoded HTTP/1.1 requests on kept-alive connections), "
        f"{len(uploads)} real uploads in turn ({n_png} 512² PNG, "
        f"{len(uploads) - n_png} DICOM), each level up to {requests} requests or {seconds:g} s; "
        f"failed requests: {failures}."
        + (
            " Triton direct: perf_analyzer on the same slices preprocessed, gRPC, measured "
            "level by level in the same run."
            if triton_rows
            else ""
        ),
        "",
        "**gateway**",
        "",
        *table(gateway_rows),
        "",
    ]
    if triton_rows:
        lines += [
            "**gateway vs Triton direct**",
            "",
            "| concurrency | gateway inf/s | Triton inf/s | gateway / Triton | p50 overhead ms | "
            "p99 overhead ms |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for g, t in zip(gateway_rows, triton_rows, strict=True):
            lines.append(
                f"| {g.concurrency} | {g.throughput:.1f} | {t.throughput:.1f} | "
                f"{g.throughput / t.throughput:.2f} | {(g.p50 - t.p50) / 1000:+.1f} | "
                f"{(g.p99 - t.p99) / 1000:+.1f} |"
            )
        lines.append("")
        overhead = p50_overhead_c1_ms(gateway_rows, triton_rows)
        if overhead is not None:
            met = "met" if overhead <= P50_OVERHEAD_TARGET_MS else "**not met**"
            lines += [
                f"p50 overhead of the gateway at concurrency 1: {overhead:+.1f} ms (target "
                f"<= {P50_OVERHEAD_TARGET_MS:g} ms: {met}).",
                "",
            ]
    lines += [f"![gateway vs Triton]({rel(out / 'gateway.png')})", ""]
    section = "\n".join(lines)
    save(
        out,
        "gateway",
        section,
        {
            "spec": spec.to_dict(),
            "version": version,
            "failures": failures,
            "gateway": gateway_rows,
            "triton": triton_rows,
            "p50_overhead_c1_ms": p50_overhead_c1_ms(gateway_rows, triton_rows),
        },
    )
    return section


#: What the gateway may add to Triton's median latency for one client (BENCHMARKS.md targets).
P50_OVERHEAD_TARGET_MS = 10.0


def p50_overhead_c1_ms(gateway: Sequence[Row], triton: Sequence[Row]) -> float | None:
    """Gateway p50 minus Triton-direct p50 at concurrency 1, in ms (None: not measured)."""
    g = next((r for r in gateway if r.concurrency == 1), None)
    t = next((r for r in triton if r.concurrency == 1), None)
    return None if g is None or t is None else (g.p50 - t.p50) / 1000
