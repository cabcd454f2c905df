"""``covidct bench overload``: the gateway at ten times what it can serve.

Capacity is measured first: uploads/s with as many clients as the in-flight limit. Then
``factor`` x that many clients send real slices at ``factor`` x the capacity in requests/s
(a 503 is not waited out: Retry-After is ignored, as a careless client would) for
``seconds``; then as many send large uploads (a real slice padded to ``big_mib`` MiB, still a
valid PNG) as fast as they can. Every answer must be 200 or a fast 503 with Retry-After and
none a 5xx other than 503; the gateway's RSS is sampled at 10 Hz and held against its memory
budget (``GatewaySettings.memory_budget``); afterwards the gateway must answer a real slice
at once.
"""

from __future__ import annotations

import asyncio
import os
import struct
import tempfile
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.capacity import _wait_ready, gateway_process, identity_repository, running_triton
from bench.client import Upload, exchange, load_level, multipart_request
from bench.corpus import real_data_dir, real_pngs
from bench.sweep import BenchError, save
from covidct.addresses import LOCALHOST, host_port
from gateway.settings import GatewaySettings
from serving.server import free_port

MiB = 1 << 20


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


@contextmanager
def peak_rss(pid: int, every_s: float = 0.1) -> Iterator[list[int]]:
    """Samples ``pid``'s RSS while the block runs; yields a list holding the peak at the end."""
    peak = [rss_bytes(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            try:
                peak[0] = max(peak[0], rss_bytes(pid))
            except (OSError, BenchError):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def png_chunk(kind: bytes, body: bytes, length: int | None = None) -> bytes:
    """One PNG chunk with a correct CRC; ``length`` may lie about the body's size."""
    size = len(body) if length is None else length
    return struct.pack(">I", size) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_chunk(png: bytes, chunk: bytes) -> bytes:
    """``chunk`` inserted right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + chunk + png[33:]


def padded_png(png: bytes, size: int) -> bytes:
    """``png`` with a private ancillary chunk that brings it to ``size`` bytes (decoders skip
    it: the slice stays valid)."""
    return with_chunk(png, png_chunk(b"prVt", b"\0" * max(0, size - len(png) - 12)))


@dataclass
class Phase:
    """What one phase's clients got."""

    clients: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: dict[int, list[float]] = field(default_factory=dict)
    missing_retry_after: int = 0

    def p(self, status: int, q: float) -> float:
        values = sorted(self.latencies.get(status, []))
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0.0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def per_s(self) -> float:
        return self.sent / self.seconds

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "seconds": self.seconds,
            "sent": self.sent,
            "per_s": self.per_s,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "ok_p50_ms": self.p(200, 0.5),
            "ok_p99_ms": self.p(200, 0.99),
            "rejected_p50_ms": self.p(503, 0.5),
            "rejected_p99_ms": self.p(503, 0.99),
            "rejected_without_retry_after": self.missing_retry_after,
        }


async def _phase(
    url: str, requests: list[bytes], clients: int, seconds: float, rate: float | None
) -> Phase:
    """``clients`` connections for ``seconds``; with ``rate``, together they send at most
    ``rate`` requests/s (each on its own schedule), else each sends again at once."""
    parsed = urlsplit(url)
    host, port = parsed.hostname or LOCALHOST, parsed.port or 80
    phase = Phase(clients, seconds)
    began = time.perf_counter()
    deadline = began + seconds
    interval = clients / rate if rate else 0.0

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        n = index
        due = began + interval * index / clients
        try:
            while time.perf_counter() < deadline:
                n += 1
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                due = max(due + interval, time.perf_counter())  # behind: no catch-up burst
                start = time.perf_counter()
                try:
                    answer = await exchange(reader, writer, requests[n % len(requests)])
                    status, retry_after, close = answer.status, answer.retry_after, answer.close
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    status, retry_after, close = 0, False, True
                phase.statuses[status] += 1
                phase.latencies.setdefault(status, []).append(time.perf_counter() - start)
                if status == 503 and not retry_after:
                    phase.missing_retry_after += 1
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return phase


def run_phase(
    url: str, uploads: list[Upload], clients: int, seconds: float, rate: float | None = None
) -> Phase:
    host = urlsplit(url).netloc
    requests = [multipart_request(host, "/v1/predict", u, {}) for u in uploads]
    return asyncio.run(_phase(url, requests, clients, seconds, rate))


def _healthy(url: str, upload: Upload) -> bool:
    request = urllib.request.Request(
        f"{url}/v1/predict", data=upload.body, headers={"Content-Type": "application/octet-stream"}
    )
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
            ready = r.status == 200
        with urllib.request.urlopen(request, timeout=10) as r:
            return ready and r.status == 200
    except OSError:
        return False


def run_overload_bench(
    out: Path,
    seconds: float = 30.0,
    factor: int = 10,
    big_mib: int = 8,
    big_seconds: float = 10.0,
    repository: Path | None = None,
    triton_grpc: str | None = None,
) -> dict[str, Any]:
    """The whole ``covidct bench overload``; returns the figures (also saved under ``out``).

    Serves ``repository`` (default: an identity model, so the gateway is what is measured)
    in its own tritonserver, or uses the one at ``triton_grpc``.
    """
    settings = GatewaySettings()
    in_flight = settings.max_in_flight
    pngs = real_pngs(real_data_dir())[:16]
    uploads = [Upload(p.name, p.read_bytes(), "image/png") for p in pngs]
    big = [Upload(u.name, padded_png(u.body, big_mib * MiB), "image/png") for u in uploads[:4]]
    with tempfile.TemporaryDirectory() as tmp, _triton(tmp, repository, triton_grpc) as grpc:
        port = free_port()
        env = {"COVIDCT_MAX_IN_FLIGHT": str(in_flight)}  # the default, not the benches' 256
        proc = gateway_process(grpc, port, 1, Path(tmp) / "gateway.log", env)
        url = f"http://{host_port(LOCALHOST, port)}"
        try:
            _wait_ready(url, proc)
            load_level(url, uploads, in_flight, 400, 3)  # warm-up
            base = rss_bytes(proc.pid)
            capacity = run_phase(url, uploads, in_flight, 5)
            offered = factor * capacity.per_s
            with peak_rss(proc.pid) as peak:
                overload = run_phase(url, uploads, factor * in_flight, seconds, offered)
            overload_peak = peak[0]
            with peak_rss(proc.pid) as peak:  # as fast as they can: memory, not latency
                large = run_phase(url, big, factor * in_flight, big_seconds)
            large_peak = peak[0]
            healthy = _healthy(url, uploads[0])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    budget = settings.memory_budget()
    figures = {
        "cpus": os.cpu_count(),
        "max_in_flight": in_flight,
        "max_upload_bytes": settings.max_upload_bytes,
        "factor": factor,
        "capacity": capacity.summary(),
        "overload": overload.summary(),
        "large": {**large.summary(), "upload_bytes": len(big[0].body)},
        "offered_vs_capacity": overload.per_s / capacity.per_s,
        "rss_base_mib": base / MiB,
        "rss_peak_overload_mib": overload_peak / MiB,
        "rss_peak_large_mib": large_peak / MiB,
        "request_budget_mib": budget / MiB,
        "rss_budget_mib": (base + budget) / MiB,
        "healthy_after": healthy,
    }
    save(out, "overload", overload_markdown(figures), figures)
    return figures


@contextmanager
def _triton(tmp: str, repository: Path | None, grpc: str | None) -> Iterator[str]:
    if grpc:
        yield grpc
        return
    repo = repository
    if repo is None:
        repo = Path(tmp) / "models"
        identity_repository(repo)
    with running_triton(repo, Path(tmp) / "triton.log") as server:
        yield server.grpc_address


def overload_markdown(f: dict[str, Any]) -> str:
    cap, over, large = f["capacity"], f["overload"], f["large"]

    def row(name: str, p: dict[str, Any]) -> str:
        other = sum(v for k, v in p["statuses"].items() if k not in ("200", "503"))
        return (
            f"| {name} | {p['clients']} | {p['sent']} | {p['per_s']:.0f} | "
            f"{p['statuses'].get('200', 0)} | {p['statuses'].get('503', 0)} | {other} | "
            f"{p['ok_p50_ms']:.0f} / {p['ok_p99_ms']:.0f} | "
            f"{p['rejected_p50_ms']:.1f} / {p['rejected_p99_ms']:.1f} |"
        )

    return "\n".join(
        [
            "## covidct bench overload",
            "",
            f"One gateway worker (in-flight limit {f['max_in_flight']}) on {f['cpus']} cores "
            "shared with Triton and the load generator. Clients ignore Retry-After: the overload "
            "clients keep their schedule after a 503, the large-upload clients send again at "
            "once.",
            "",
            "| phase | clients | requests | req/s | 200 | 503 | other | 200 p50/p99 ms | "
            "503 p50/p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            row("capacity", cap),
            row(f"overload {f['factor']}x", over),
            row(f"{large['upload_bytes'] / MiB:.0f} MiB uploads", large),
            "",
            f"Sent {f['offered_vs_capacity']:.1f}x the capacity's requests/s. 503s without "
            f"Retry-After: {over['rejected_without_retry_after']}. Gateway RSS: "
            f"{f['rss_base_mib']:.0f} MiB at rest, peak {f['rss_peak_overload_mib']:.0f} MiB "
            f"under overload, {f['rss_peak_large_mib']:.0f} MiB with large uploads; budget "
            f"{f['rss_budget_mib']:.0f} MiB (base + `GatewaySettings.memory_budget()` = "
            f"{f['request_budget_mib']:.0f} MiB). Healthy right after: "
            f"{'yes' if f['healthy_after'] else 'NO'}.",
            "",
        ]
    )
