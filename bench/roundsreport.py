"""The concurrency-1 rounds of ``covidct bench gateway`` written out: section lines, CSV."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.rounds import CALL_FIELDS, GATEWAY, PARTS, PYTHON_GRPC, TRITON, Round, Summary


def rounds_markdown(
    rounds: Sequence[Round], summary: Summary, target_ms: float, preprocess_here_ms: float
) -> list[str]:
    """The section's lines for the rounds: per round, the median judged, the breakdown."""
    python = PYTHON_GRPC in rounds[0].bursts
    lines = [
        f"**Concurrency 1, {len(rounds)} interleaved rounds** (order reversed every other "
        "round; server ms: Triton's mean queue and compute time per request during that "
        "burst, from its statistics or perf_analyzer's; overhead, model out: the p50 of the "
        "gateway's own time per request plus its gRPC call outside Triton's server, less "
        "perf_analyzer's time outside the server)",
        "",
        "| round | order | gateway p50 ms | server ms | Triton direct p50 ms | server ms | "
        + ("Python gRPC p50 ms | " if python else "")
        + "raw overhead ms | overhead, model out, ms |",
        "|---:|---|---:|---:|---:|---:|" + ("---:|" if python else "") + "---:|---:|",
    ]
    for r in rounds:
        g, t = r.bursts[GATEWAY], r.bursts[TRITON]
        lines.append(
            f"| {r.index + 1} | {', '.join(r.order)} | {g.p50_ms:.1f} | "
            f"{r.server_ms.get(GATEWAY, 0.0):.1f} | {t.p50_ms:.1f} | "
            f"{r.server_ms.get(TRITON, 0.0):.1f} | "
            + (f"{r.bursts[PYTHON_GRPC].p50_ms:.1f} | " if python else "")
            + f"{r.raw_overhead_ms:+.1f} | {r.overhead_ms:+.1f} |"
        )
    met = "met" if summary.median_ms <= target_ms else "**not met**"
    parts = summary.parts_ms
    lines += [
        "",
        "p50 overhead of the gateway at concurrency 1, the model's time taken out: "
        f"{summary.paired.text()}; target <= {target_ms:g} ms: {met}. Raw (gateway p50 "
        f"minus Triton-direct p50): {summary.raw.text()}.",
        "",
        "**Where the gateway's concurrency-1 time goes beyond Triton direct** (means over each "
        "round's gateway calls, median over rounds; the parts add up to the mean overhead)",
        "",
        "| part | ms | what |",
        "|---|---:|---|",
        *(f"| {k} | {parts[k]:+.1f} | {what} |" for k, what in PARTS.items()),
        f"| mean overhead | {sum(parts[k] for k in PARTS):+.1f} | the sum of the parts above |",
    ]
    for source in ("png", "dicom"):
        if f"preprocess_{source}_p50" in parts:
            lines.append(
                f"| of preprocess: {source.upper()} p50 | {parts[f'preprocess_{source}_p50']:.1f}"
                f" | the gateway's preprocess_ms for {source.upper()} uploads alone |"
            )
    if python:
        lines.append(
            f"| beside grpc: Python client | {parts['python_grpc']:+.1f} | tritonclient.grpc "
            "alone, same tensors: its time outside Triton's server |"
        )
    lines += [
        f"| preprocess in process | {preprocess_here_ms:.1f} | the same uploads through "
        "`preprocess_bytes` in the bench's process, one thread (mean) |",
        "",
    ]
    return lines


def save_calls(path: Path, rounds: Sequence[Round]) -> None:
    """Every gateway call of every round, as CSV (round, then the call's fields)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [",".join(("round", *CALL_FIELDS, "source"))]
    for r in rounds:
        for c in r.bursts[GATEWAY].calls:
            times = ",".join(f"{getattr(c, k):.3f}" for k in CALL_FIELDS)
            rows.append(f"{r.index + 1},{times},{c.source}")
    path.write_text("\n".join(rows) + "\n")
