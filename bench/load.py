"""``covidct bench gateway``: a bounded async load against ``/v1/predict``, beside Triton.

Real 512² PNG slices and real DICOM files are uploaded in turn by ``c`` concurrent
clients (``bench.client``); each level stops after a fixed number of requests or seconds,
whichever comes first. With ``--triton`` the same levels are measured directly against
Triton with perf_analyzer, level by level in the same run, and the report gives the ratio;
then the concurrency-1 overhead is measured in interleaved rounds (``bench.rounds``), and
its median is the figure judged against the target.

The phases, in order: :func:`probe_gateway`, :func:`triton_inputs`, :func:`sweep_levels`,
:func:`c1_rounds`, :func:`write_results`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.client import (
    Answer,
    LevelResult,
    Upload,
    exchange,
    load_level,
    multipart_request,
    real_uploads,
)
from bench.sweep import BenchError, Row, plot, rel, save, table, write_csv
from covidct.config import ModelSpec

if TYPE_CHECKING:
    from bench.rounds import Round, Summary

__all__ = [
    "P50_OVERHEAD_TARGET_MS",
    "Answer",
    "GatewayBenchOptions",
    "LevelResult",
    "Upload",
    "exchange",
    "load_level",
    "multipart_request",
    "p50_overhead_c1_ms",
    "real_uploads",
    "run_gateway_bench",
]


#: What the gateway may add to Triton's median latency for one client (BENCHMARKS.md targets).
P50_OVERHEAD_TARGET_MS = 10.0


@dataclass(frozen=True)
class GatewayBenchOptions:
    """How much ``covidct bench gateway`` measures (its options; the defaults are the CLI's).

    Attributes:
        requests / seconds: the most requests and seconds of each sweep level.
        measurement_ms / stability: perf_analyzer's window and the agreement it asks of them.
        rounds: interleaved concurrency-1 rounds (0: none; the figure wants at least 7).
        round_requests: gateway requests (and direct gRPC calls) in each round.
    """

    requests: int
    seconds: float
    measurement_ms: int
    stability: float
    rounds: int
    round_requests: int


@dataclass
class Measured:
    """What one ``covidct bench gateway`` run measured."""

    spec: ModelSpec
    version: str
    uploads: list[Upload]
    gateway: list[Row]
    triton: list[Row]
    failures: int = 0
    rounds: list[Round] | None = None
    summary: Summary | None = None
    preprocess_here_ms: float | None = None

    @property
    def overhead_ms(self) -> float | None:
        """The c=1 overhead judged: the rounds' median, else the one sweep level."""
        if self.summary is not None:
            return self.summary.median_ms
        return p50_overhead_c1_ms(self.gateway, self.triton)


def run_gateway_bench(
    url: str,
    levels: Sequence[int],
    out: Path,
    triton_url: str | None,
    options: GatewayBenchOptions,
    api_key: str | None = None,
    label: str = "",
) -> str:
    """The whole ``covidct bench gateway`` command; returns its Markdown section."""
    headers = {"X-API-Key": api_key} if api_key else {}
    spec, version = probe_gateway(url, headers)
    m = Measured(spec, version, real_uploads(), [], [])
    with tempfile.TemporaryDirectory() as tmp:
        input_data = Path(tmp) / "input.json"
        images = triton_inputs(triton_url, m, input_data) if triton_url else None
        sweep_levels(url, levels, out, triton_url, input_data, options, headers, m)
        if triton_url and images is not None and options.rounds:
            c1_rounds(url, triton_url, input_data, images, out, options, headers, m)
    return write_results(out, m, options, label)


def probe_gateway(url: str, headers: dict[str, str]) -> tuple[ModelSpec, str]:
    """The served ModelSpec and the version that answers a real slice (Triton direct then
    measures that same version)."""
    import httpx

    try:
        info = httpx.get(f"{url}/v1/models", headers=headers, timeout=10).json()
    except (httpx.HTTPError, ValueError) as e:
        raise BenchError(f"gateway at {url} does not answer /v1/models: {e}") from e
    first = real_uploads()[0]
    answer = httpx.post(
        f"{url}/v1/predict",
        headers=headers,
        timeout=60,
        files={"file": (first.name, first.body, first.content_type)},
    )
    if answer.status_code != 200:
        raise BenchError(f"gateway at {url} answered {answer.status_code}: {answer.text[:300]}")
    return ModelSpec.from_dict(info["model_spec"]), str(answer.json()["model"]["version"])


def triton_inputs(triton_url: str, m: Measured, input_data: Path) -> Any:
    """The uploads preprocessed, as Triton direct is fed them (also written for perf_analyzer);
    fails early when Triton is unreachable."""
    import numpy as np

    from bench.perfanalyzer import write_input_data
    from bench.served import served_spec
    from covidct.preprocessing import preprocess_bytes

    served_spec(triton_url, m.spec.name, m.version, "grpc")
    images = np.stack([preprocess_bytes(u.body, m.spec.image_size).image for u in m.uploads])
    write_input_data(input_data, m.spec, images)
    return images


def sweep_levels(
    url: str,
    levels: Sequence[int],
    out: Path,
    triton_url: str | None,
    input_data: Path,
    o: GatewayBenchOptions,
    headers: dict[str, str],
    m: Measured,
) -> None:
    """Each level against Triton direct (perf_analyzer), then against the gateway."""
    from bench.perfanalyzer import run_level

    for c in levels:
        if triton_url:
            raw = out / "raw" / f"triton-c{c}.csv"
            raw.parent.mkdir(parents=True, exist_ok=True)
            row = run_level(
                triton_url,
                m.spec.name,
                m.version,
                c,
                input_data,
                raw,
                measurement_ms=o.measurement_ms,
                stability=o.stability,
            )
            m.triton.append(row)
        result = load_level(url, m.uploads, c, o.requests, o.seconds, headers=headers)
        m.failures += result.failures
        m.gateway.append(result.row)


def c1_rounds(
    url: str,
    triton_url: str,
    input_data: Path,
    images: Any,
    out: Path,
    o: GatewayBenchOptions,
    headers: dict[str, str],
    m: Measured,
) -> None:
    """The interleaved concurrency-1 rounds (``bench.rounds``), Triton's statistics read
    around each burst, and the in-process preprocessing cost of the same uploads."""
    from bench.perfanalyzer import run_level
    from bench.rounds import (
        GATEWAY,
        PYTHON_GRPC,
        TRITON,
        Burst,
        Summary,
        gateway_burst,
        grpc_burst,
        in_process_preprocess_ms,
        perf_server_ms,
        run_rounds,
        triton_clock,
    )
    from bench.roundsreport import save_calls

    def gateway(_: int) -> Burst:
        calls = gateway_burst(url, m.uploads, o.round_requests, headers)
        return Burst.of([c.latency_ms for c in calls], calls)

    def triton(index: int) -> Burst:
        raw = out / "raw" / "rounds" / f"triton-r{index + 1}.csv"
        raw.parent.mkdir(parents=True, exist_ok=True)
        row = run_level(
            triton_url,
            m.spec.name,
            m.version,
            1,
            input_data,
            raw,
            measurement_ms=o.measurement_ms,
            stability=o.stability,
        )
        return Burst(row.p50 / 1000, row.avg / 1000, server_ms=perf_server_ms(raw))

    def python(_: int) -> Burst:
        return Burst.of(grpc_burst(triton_url, m.spec, m.version, images, o.round_requests))

    arms = {GATEWAY: gateway, TRITON: triton, PYTHON_GRPC: python}
    clock = triton_clock(triton_url, m.spec.name, m.version)
    m.rounds = run_rounds(arms, o.rounds, clock)
    m.summary = Summary.of(m.rounds)
    m.preprocess_here_ms = in_process_preprocess_ms(m.uploads, m.spec.image_size)
    save_calls(out / "raw" / "rounds" / "gateway-calls.csv", m.rounds)


def write_results(out: Path, m: Measured, o: GatewayBenchOptions, label: str) -> str:
    """CSV, plot, result.json and section.md of a run; returns the section."""
    from bench.rounds import rounds_record

    write_csv(out / "gateway.csv", m.gateway)
    curves = {"gateway /v1/predict": m.gateway}
    if m.triton:
        write_csv(out / "triton.csv", m.triton)
        curves["Triton direct"] = m.triton
    title = f"Gateway vs Triton, {m.spec.backbone} {m.spec.image_size}²"
    plot(out / "gateway.png", curves, title)
    section = "\n".join(section_lines(out, m, o, label))
    record: dict[str, Any] = {
        "spec": m.spec.to_dict(),
        "version": m.version,
        "failures": m.failures,
        "gateway": m.gateway,
        "triton": m.triton,
        "p50_overhead_c1_ms": m.overhead_ms,
        "p50_overhead_target_ms": P50_OVERHEAD_TARGET_MS,
    }
    if m.rounds and m.summary:
        extra = {
            "requests_per_round": o.round_requests,
            "preprocess_in_process_ms": m.preprocess_here_ms,
        }
        record["c1_rounds"] = rounds_record(m.rounds, m.summary, extra)
    save(out, "gateway", section, record)
    return section


def section_lines(out: Path, m: Measured, o: GatewayBenchOptions, label: str) -> list[str]:
    """The Markdown section: the sweep, gateway vs Triton per level, the c=1 rounds."""
    from bench.roundsreport import rounds_markdown

    n_png = sum(u.content_type == "image/png" for u in m.uploads)
    lines = [
        f"## covidct bench gateway ({m.spec.backbone}, S={m.spec.image_size}, version "
        f"{m.version}" + (f"; {label})" if label else ")"),
        "",
        "Bounded async client (pre-encoded HTTP/1.1 requests on kept-alive connections), "
        f"{len(m.uploads)} real uploads in turn ({n_png} 512² PNG, "
        f"{len(m.uploads) - n_png} DICOM), each level up to {o.requests} requests or "
        f"{o.seconds:g} s; failed requests: {m.failures}."
        + (
            " Triton direct: perf_analyzer on the same slices preprocessed, gRPC, measured "
            "level by level in the same run."
            if m.triton
            else ""
        ),
        "",
        "**gateway**",
        "",
        *table(m.gateway),
        "",
    ]
    if m.triton:
        lines += versus_lines(m.gateway, m.triton)
    if m.rounds and m.summary and m.preprocess_here_ms is not None:
        lines += rounds_markdown(m.rounds, m.summary, P50_OVERHEAD_TARGET_MS, m.preprocess_here_ms)
    elif m.triton and (overhead := m.overhead_ms) is not None:
        met = "met" if overhead <= P50_OVERHEAD_TARGET_MS else "**not met**"
        lines += [
            f"p50 overhead of the gateway at concurrency 1, one level (no rounds): "
            f"{overhead:+.1f} ms (target <= {P50_OVERHEAD_TARGET_MS:g} ms: {met}).",
            "",
        ]
    return [*lines, f"![gateway vs Triton]({rel(out / 'gateway.png')})", ""]


def versus_lines(gateway: Sequence[Row], triton: Sequence[Row]) -> list[str]:
    """Gateway vs Triton direct, level by level (each level measured once each way)."""
    lines = [
        "**gateway vs Triton direct** (each level once each way)",
        "",
        "| concurrency | gateway inf/s | Triton inf/s | gateway / Triton | p50 overhead ms | "
        "p99 overhead ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for g, t in zip(gateway, triton, strict=True):
        lines.append(
            f"| {g.concurrency} | {g.throughput:.1f} | {t.throughput:.1f} | "
            f"{g.throughput / t.throughput:.2f} | {(g.p50 - t.p50) / 1000:+.1f} | "
            f"{(g.p99 - t.p99) / 1000:+.1f} |"
        )
    return [*lines, ""]


def p50_overhead_c1_ms(gateway: Sequence[Row], triton: Sequence[Row]) -> float | None:
    """Gateway p50 minus Triton-direct p50 at concurrency 1, in ms (None: not measured)."""
    g = next((r for r in gateway if r.concurrency == 1), None)
    t = next((r for r in triton if r.concurrency == 1), None)
    return None if g is None or t is None else (g.p50 - t.p50) / 1000
