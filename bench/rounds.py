"""The gateway's concurrency-1 overhead over Triton direct, from interleaved rounds.

One measurement of each side, minutes apart, cannot settle a figure of a few milliseconds on
shared cores: the model's own time drifts between the two by more than that. So ``covidct
bench gateway`` also runs ``rounds`` rounds, each a short concurrency-1 burst against the
gateway, one with perf_analyzer against Triton (the baseline of the target) and one with a
Python gRPC client (tritonclient, as the gateway calls Triton), the order reversed every
other round.

Each round yields two overheads. The raw one is gateway p50 minus Triton-direct p50. The
judged one takes the model's time out within each burst: the p50 of the gateway's own time
per request (client latency less the gRPC call, both per request), plus its gRPC call's
time outside Triton's server (Triton's statistics, read around the burst), less
perf_analyzer's time outside the server (its own client, network and send/receive figures).
The figure is the median over rounds, so one round caught by a neighbour's load does not
move it. The gateway's timings in each answer (``timings``) split its time into the parts.
"""

from __future__ import annotations

import asyncio
import csv
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bench.client import Upload, exchange, multipart_request
from bench.sweep import BenchError
from covidct.addresses import LOCALHOST
from covidct.config import ModelSpec

GATEWAY, TRITON, PYTHON_GRPC = "gateway", "triton", "python-grpc"
#: The arms of a round, in the order of even rounds (odd rounds run them reversed).
ARMS = (GATEWAY, TRITON, PYTHON_GRPC)


def round_order(index: int, arms: Sequence[str] = ARMS) -> tuple[str, ...]:
    """The arms of round ``index`` in the order they run: as given, reversed every other
    round, so no arm always runs first (or right after another)."""
    return tuple(arms) if index % 2 == 0 else tuple(reversed(arms))


@dataclass(frozen=True)
class GatewayCall:
    """One concurrency-1 gateway request: what the client saw and the answer's ``timings``."""

    latency_ms: float
    total_ms: float  # the gateway's own: from reading the upload to the built answer
    preprocess_ms: float
    inference_ms: float  # the gRPC call to Triton, as the gateway timed it
    source: str = "png"  # png or dicom: what was uploaded


@dataclass(frozen=True)
class Burst:
    """One arm's burst in a round: client p50 and mean, and the gateway's calls.

    ``server_ms``: Triton's mean server time per request as the arm measured it over its own
    windows (perf_analyzer does); None: read from Triton's statistics around the burst.
    """

    p50_ms: float
    mean_ms: float
    calls: tuple[GatewayCall, ...] = ()
    server_ms: float | None = None

    @classmethod
    def of(cls, ms: Sequence[float], calls: Sequence[GatewayCall] = ()) -> Burst:
        return cls(statistics.median(ms), statistics.fmean(ms), tuple(calls))


#: The timed fields of a GatewayCall, as the calls' CSV writes them.
CALL_FIELDS = ("latency_ms", "total_ms", "preprocess_ms", "inference_ms")
#: An arm of a round: called with the round's index, runs one burst.
Arm = Callable[[int], Burst]
#: Triton's cumulative (requests, their server time in ms: queue and compute) for the model.
ServerClock = Callable[[], tuple[int, float]]


def _mean(calls: Sequence[GatewayCall], f: Callable[[GatewayCall], float]) -> float:
    return statistics.fmean(f(c) for c in calls)


@dataclass
class Round:
    """One round: each arm's burst and Triton's mean server time per request during it."""

    index: int
    order: tuple[str, ...]
    bursts: dict[str, Burst] = field(default_factory=dict)
    server_ms: dict[str, float] = field(default_factory=dict)

    def outside_ms(self, arm: str, stat: str = "mean_ms") -> float:
        """The arm's time outside Triton's server: its client p50 or mean less the server's
        mean time per request during the same burst."""
        return getattr(self.bursts[arm], stat) - self.server_ms.get(arm, 0.0)

    @property
    def raw_overhead_ms(self) -> float:
        """Gateway p50 minus Triton-direct (perf_analyzer) p50, this round."""
        return self.bursts[GATEWAY].p50_ms - self.bursts[TRITON].p50_ms

    @property
    def overhead_ms(self) -> float:
        """The figure judged, the model's time taken out within each burst: p50 of the
        gateway's own time per request, plus its gRPC call outside Triton's server, less
        perf_analyzer's time outside the server."""
        calls = self.bursts[GATEWAY].calls
        own = statistics.median(c.latency_ms - c.inference_ms for c in calls)
        return own + self._grpc_ms() - self.outside_ms(TRITON)

    def _grpc_ms(self) -> float:
        calls = self.bursts[GATEWAY].calls
        return _mean(calls, lambda c: c.inference_ms) - self.server_ms.get(GATEWAY, 0.0)

    def parts_ms(self) -> dict[str, float]:
        """Means over the round's gateway calls; the parts of :data:`PARTS` add up to the
        mean overhead exactly (gateway mean outside Triton minus perf_analyzer's)."""
        calls = self.bursts[GATEWAY].calls
        parts = {
            "http": _mean(calls, lambda c: c.latency_ms - c.total_ms),
            "upload_and_answer": _mean(
                calls, lambda c: c.total_ms - c.preprocess_ms - c.inference_ms
            ),
            "preprocess": _mean(calls, lambda c: c.preprocess_ms),
            "grpc": self._grpc_ms(),
            "direct": -self.outside_ms(TRITON),
        }
        for source in ("png", "dicom"):
            pre = [c.preprocess_ms for c in calls if c.source == source]
            if pre:
                parts[f"preprocess_{source}_p50"] = statistics.median(pre)
        if PYTHON_GRPC in self.bursts:
            parts["python_grpc"] = self.outside_ms(PYTHON_GRPC)
        return parts


#: The breakdown's parts, in the order a request meets them (their sum is the mean overhead).
PARTS = {
    "http": "HTTP/1.1 outside the route: uvicorn, the middleware, JSON encoding, the client "
    "(client latency minus the answer's total_ms)",
    "upload_and_answer": "reading the multipart upload, the version lease, building the "
    "answer (total_ms minus preprocess_ms and inference_ms)",
    "preprocess": "decode, body box, crop and resize (preprocess_ms)",
    "grpc": "the gateway's gRPC call outside Triton's server (inference_ms minus Triton's "
    "server time per request)",
    "direct": "less perf_analyzer's own time outside Triton's server (its client and gRPC)",
}


@dataclass(frozen=True)
class Spread:
    """The median of per-round figures, with their range and quartiles."""

    values: tuple[float, ...]
    median: float
    low: float
    high: float
    q1: float
    q3: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        q1, q3 = np.percentile(values, [25, 75])
        return cls(tuple(values), statistics.median(values), min(values), max(values), q1, q3)

    def text(self) -> str:
        return (
            f"{self.median:+.1f} ms, the median of {len(self.values)} rounds (range "
            f"{self.low:+.1f} to {self.high:+.1f}, quartiles {self.q1:+.1f} to {self.q3:+.1f})"
        )


@dataclass(frozen=True)
class Summary:
    """The rounds' paired and raw overheads, and each part's median over rounds."""

    paired: Spread  # the figure judged: the model's time taken out within each burst
    raw: Spread
    parts_ms: dict[str, float]

    @property
    def median_ms(self) -> float:
        return self.paired.median

    @classmethod
    def of(cls, rounds: Sequence[Round]) -> Summary:
        if not rounds:
            raise BenchError("no concurrency-1 round was measured")
        per_round = [r.parts_ms() for r in rounds]
        keys = [k for k in per_round[0] if all(k in p for p in per_round)]
        parts = {k: statistics.median(p[k] for p in per_round) for k in keys}
        return cls(
            Spread.of([r.overhead_ms for r in rounds]),
            Spread.of([r.raw_overhead_ms for r in rounds]),
            parts,
        )


def run_rounds(arms: Mapping[str, Arm], rounds: int, server: ServerClock) -> list[Round]:
    """``rounds`` rounds of every arm in ``arms`` (gateway and triton at least), in
    :func:`round_order`; ``server`` is read around each burst whose arm does not report
    Triton's server time itself."""
    if not {GATEWAY, TRITON} <= set(arms):
        raise BenchError("a c=1 round needs the gateway and Triton direct")
    out = []
    for index in range(rounds):
        r = Round(index, round_order(index, [a for a in ARMS if a in arms]))
        for arm in r.order:
            before = server()
            burst = r.bursts[arm] = arms[arm](index)
            after = server()
            if burst.server_ms is not None:
                r.server_ms[arm] = burst.server_ms
            elif after[0] > before[0]:
                r.server_ms[arm] = (after[1] - before[1]) / (after[0] - before[0])
        out.append(r)
    return out


#: Triton's parts of a request's time, in its statistics and perf_analyzer's CSV alike.
SERVER_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


def perf_server_ms(raw_csv: Path) -> float | None:
    """Triton's mean server time per request (queue and compute) over perf_analyzer's own
    windows, from its CSV (None: the columns are missing)."""
    with raw_csv.open(newline="") as f:
        first = next(csv.DictReader(f), None) or {}
    names = [f"Server {p.replace('_', ' ').title()}" for p in SERVER_PARTS]
    if not all(first.get(n) for n in names):
        return None
    return sum(float(first[n]) for n in names) / 1000


def triton_clock(triton_url: str, model: str, version: str) -> ServerClock:
    """Triton's statistics of one model version: successful requests and their time."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_url)

    def read() -> tuple[int, float]:
        stats = client.get_inference_statistics(model, version, as_json=True)
        found = [s["inference_stats"] for s in stats.get("model_stats", [])]
        count = sum(int(s["success"].get("count", 0)) for s in found)
        ns = sum(int(s.get(p, {}).get("ns", 0)) for s in found for p in SERVER_PARTS)
        return count, ns / 1e6

    return read


async def _gateway_burst(
    url: str, uploads: Sequence[Upload], n: int, headers: dict[str, str]
) -> list[GatewayCall]:
    """``n`` requests one after another on one kept-alive connection, uploads in turn."""
    parsed = urlsplit(url)
    host, port = parsed.hostname or LOCALHOST, parsed.port or 80
    encoded = [multipart_request(f"{host}:{port}", "/v1/predict", u, headers) for u in uploads]
    reader, writer = await asyncio.open_connection(host, port)
    calls = []
    try:
        await exchange(reader, writer, encoded[-1])  # warm-up, not counted
        for i in range(n):
            start = time.perf_counter()
            answer = await exchange(reader, writer, encoded[i % len(encoded)])
            latency = (time.perf_counter() - start) * 1000
            if answer.status != 200:
                raise BenchError(f"gateway answered {answer.status} during a c=1 round")
            t = json.loads(answer.body)["timings"]
            source = "dicom" if "dicom" in uploads[i % len(uploads)].content_type else "png"
            times = (t["total_ms"], t["preprocess_ms"], t["inference_ms"])
            calls.append(GatewayCall(latency, *times, source))
    finally:
        writer.close()
    return calls


def gateway_burst(
    url: str, uploads: Sequence[Upload], n: int, headers: dict[str, str] | None = None
) -> list[GatewayCall]:
    """One concurrency-1 burst against the gateway, with each answer's timings."""
    return asyncio.run(_gateway_burst(url, uploads, n, headers or {}))


def grpc_burst(
    triton_url: str, spec: ModelSpec, version: str, images: np.ndarray, n: int
) -> list[float]:
    """Milliseconds of ``n`` direct gRPC calls (tritonclient, both outputs asked for, as the
    gateway asks), the tensor built inside the timing as the gateway's inference_ms does."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_url)

    def call(image: np.ndarray) -> None:
        inp = grpcclient.InferInput(spec.input_name, [1, *image.shape], "UINT8")
        inp.set_data_from_numpy(image[None])
        outputs = [
            grpcclient.InferRequestedOutput(spec.probabilities_name),
            grpcclient.InferRequestedOutput(spec.cam_name),
        ]
        client.infer(spec.name, [inp], model_version=version, outputs=outputs)

    try:
        call(images[-1])  # warm-up, not counted
        out = []
        for i in range(n):
            start = time.perf_counter()
            call(images[i % len(images)])
            out.append((time.perf_counter() - start) * 1000)
    finally:
        client.close()
    return out


def in_process_preprocess_ms(uploads: Sequence[Upload], size: int, passes: int = 7) -> float:
    """Mean milliseconds of ``preprocess_bytes`` on the same uploads, here in the bench's
    process on one thread: what the gateway's preprocess_ms costs without a server around it."""
    from covidct.preprocessing import preprocess_bytes

    times = []
    for _ in range(passes):
        for u in uploads:
            start = time.perf_counter()
            preprocess_bytes(u.body, size)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.fmean(times)


def rounds_record(rounds: Sequence[Round], summary: Summary, extra: dict[str, Any]) -> dict:
    """What result.json keeps of the rounds (per round, without the individual calls)."""
    return {
        "rounds": [
            {
                "index": r.index,
                "order": list(r.order),
                "p50_ms": {a: b.p50_ms for a, b in r.bursts.items()},
                "mean_ms": {a: b.mean_ms for a, b in r.bursts.items()},
                "triton_server_ms": r.server_ms,
                "overhead_ms": r.overhead_ms,
                "raw_overhead_ms": r.raw_overhead_ms,
                "parts_ms": r.parts_ms(),
            }
            for r in rounds
        ],
        "median_ms": summary.median_ms,
        **asdict(summary),
        **extra,
    }
