"""The concurrency-1 rounds of ``bench gateway``: order, median, breakdown, the c=1 client."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.client import Upload
from bench.rounds import (
    ARMS,
    GATEWAY,
    PARTS,
    PYTHON_GRPC,
    TRITON,
    Burst,
    GatewayCall,
    Round,
    Summary,
    gateway_burst,
    perf_server_ms,
    round_order,
    rounds_record,
    run_rounds,
)
from bench.roundsreport import rounds_markdown
from bench.sweep import BenchError


def test_the_order_is_reversed_every_other_round() -> None:
    assert [round_order(i, ("a", "b")) for i in range(4)] == [
        ("a", "b"),
        ("b", "a"),
        ("a", "b"),
        ("b", "a"),
    ]
    assert round_order(1) == tuple(reversed(ARMS))


def _call(latency: float, total: float = 0.0, pre: float = 0.0, inf: float = 0.0) -> GatewayCall:
    return GatewayCall(latency, total, pre, inf)


def test_rounds_run_every_arm_in_the_round_order() -> None:
    ran: list[tuple[int, str]] = []
    server = {"count": 0, "ms": 0.0}

    def arm(name: str, p50: float, triton_ms: float):
        def run(index: int) -> Burst:
            ran.append((index, name))
            server["count"] += 10  # ten requests reached Triton during this burst
            server["ms"] += 10 * triton_ms
            calls = [_call(p50, p50 - 1, 2, p50 - 5)] if name == GATEWAY else []
            return Burst.of([p50], calls)

        return run

    arms = {GATEWAY: arm(GATEWAY, 50, 38), TRITON: arm(TRITON, 40, 39)}
    rounds = run_rounds(arms, 3, lambda: (server["count"], server["ms"]))
    assert ran == [
        (0, GATEWAY),
        (0, TRITON),
        (1, TRITON),
        (1, GATEWAY),
        (2, GATEWAY),
        (2, TRITON),
    ]
    assert [r.raw_overhead_ms for r in rounds] == [10, 10, 10]
    assert all(r.server_ms == {GATEWAY: 38, TRITON: 39} for r in rounds)
    # own 5 (latency - inference) + gRPC 7 outside the server, less perf_analyzer's 1 outside
    assert [r.overhead_ms for r in rounds] == [11, 11, 11]
    own = {**arms, TRITON: lambda i: Burst(40.0, 40.0, server_ms=39.5)}  # perf_analyzer's
    assert run_rounds(own, 1, lambda: (server["count"], server["ms"]))[0].server_ms[TRITON] == 39.5
    with pytest.raises(BenchError, match="Triton direct"):
        run_rounds({GATEWAY: arm(GATEWAY, 50, 1)}, 1, lambda: (0, 0.0))


def _round(index: int, gateway: float, triton: float, model: float = 80.0) -> Round:
    """A round whose model took ``model`` ms per request, whatever the round's noise."""
    calls = [_call(gateway, gateway - 1.0, 3.0, model + 2.0)]
    bursts = {GATEWAY: Burst.of([gateway], calls), TRITON: Burst.of([triton])}
    return Round(index, round_order(index), bursts, {GATEWAY: model, TRITON: model})


def test_one_slow_round_does_not_move_the_median() -> None:
    overheads = [5.0, 6.0, 7.0, 5.5, 6.5, 6.0, 400.0]  # the last round caught a neighbour
    rounds = [_round(i, 80.0 + o, 80.0) for i, o in enumerate(overheads)]
    summary = Summary.of(rounds)
    assert summary.median_ms == pytest.approx(6.0)
    assert (summary.paired.low, summary.paired.high) == pytest.approx((5.0, 400.0))
    assert summary.paired.q1 <= summary.median_ms <= summary.paired.q3 < 10
    worse = Summary.of([*rounds[:-1], _round(6, 80.0 + 4000.0, 80.0)])
    assert worse.median_ms == summary.median_ms  # a mean would have moved by hundreds


def test_the_model_time_cancels_within_each_round() -> None:
    """The model slowed down between the gateway's burst and Triton direct's: the raw
    difference swings, the paired one (each side less Triton's own time) does not."""
    slow = [_call(206.0, 205.0, 2.0, 202.0)]  # the model took 200 ms in the gateway's burst
    bursts = {GATEWAY: Burst.of([206.0], slow), TRITON: Burst.of([81.0])}  # and 80 here
    r = Round(0, (GATEWAY, TRITON), bursts, {GATEWAY: 200.0, TRITON: 80.0})
    assert r.raw_overhead_ms == 125.0
    assert r.overhead_ms == pytest.approx(4.0 + 2.0 - 1.0)  # own, gRPC, less perf_analyzer's


def test_the_parts_add_up_to_the_mean_overhead() -> None:
    """client 90 = http 1 + (total 89: preprocess 3 + inference 82 + upload/answer 4);
    Triton's server 80 per request in both bursts: gRPC outside it 2; perf_analyzer 81,
    so 1 outside; overhead 10 - 1 = 9."""
    calls = [_call(90.0, 89.0, 3.0, 82.0)] * 2 + [GatewayCall(90.0, 89.0, 3.0, 82.0, "dicom")]
    bursts = {
        GATEWAY: Burst.of([90.0] * 3, calls),
        TRITON: Burst.of([81.0]),
        PYTHON_GRPC: Burst.of([81.5]),
    }
    r = Round(0, ARMS, bursts, {GATEWAY: 80.0, TRITON: 80.0, PYTHON_GRPC: 80.0})
    parts = r.parts_ms()
    assert parts == pytest.approx(
        {
            "http": 1,
            "upload_and_answer": 4,
            "preprocess": 3,
            "grpc": 2,
            "direct": -1,
            "preprocess_png_p50": 3,
            "preprocess_dicom_p50": 3,
            "python_grpc": 1.5,
        }
    )
    assert sum(parts[k] for k in PARTS) == pytest.approx(r.overhead_ms) == 9
    summary = Summary.of([r])
    record = rounds_record([r], summary, {"requests_per_round": 3})
    assert record["median_ms"] == 9 and record["rounds"][0]["parts_ms"]["http"] == 1
    json.dumps(record)  # result.json must be able to hold it
    text = "\n".join(rounds_markdown([r], summary, 10.0, 2.5))
    assert "+9.0 ms, the median of 1 rounds" in text and "target <= 10 ms: met" in text
    assert "| mean overhead | +9.0 |" in text and "| preprocess in process | 2.5 |" in text
    assert "**not met**" in "\n".join(rounds_markdown([r], summary, 5.0, 2.5))


@contextmanager
def _fake_gateway(status: int = 200) -> Iterator[str]:
    """An HTTP/1.1 server (kept-alive connections) answering every request with the
    gateway's timings."""
    body = json.dumps({"timings": {"total_ms": 9.0, "preprocess_ms": 2.0, "inference_ms": 6.0}})
    answer = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while True:
                length = None
                while (line := self.rfile.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length is None:
                    return
                self.rfile.read(length)
                self.wfile.write(answer)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()


def test_the_gateway_burst_reads_each_answers_timings() -> None:
    uploads = [Upload("a.png", b"\x89PNG" + bytes(100), "image/png")]
    with _fake_gateway() as url:
        calls = gateway_burst(url, uploads, 5)
    assert len(calls) == 5
    assert all((c.total_ms, c.preprocess_ms, c.inference_ms) == (9, 2, 6) for c in calls)
    assert all(c.latency_ms > 0 for c in calls)
    with _fake_gateway(503) as url, pytest.raises(BenchError, match="answered 503"):
        gateway_burst(url, uploads, 2)


def test_no_round_is_refused() -> None:
    with pytest.raises(BenchError, match="no concurrency-1 round"):
        Summary.of([])


def test_perf_analyzers_server_time_is_read_from_its_csv(tmp_path: Path) -> None:
    raw = tmp_path / "triton-r1.csv"
    raw.write_text(
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
        "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
        "p50 latency\n1,4.9,17,2474,2466,46,197627,618,4,201088\n"
    )
    assert perf_server_ms(raw) == pytest.approx(200.757)
    raw.write_text("Concurrency,Inferences/Second,p50 latency\n1,4.9,201088\n")
    assert perf_server_ms(raw) is None
