"""What every load sweep shares: concurrency levels, one CSV layout, one plot style.

Rows use perf_analyzer's column names and units (latencies in microseconds), so a gateway
sweep and a Triton sweep read the same way and overlay on one plot.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.errors import CovidctError

COLUMNS = (
    "Concurrency",
    "Inferences/Second",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
    "Server Queue",
    "Server Compute Infer",
    "Avg Batch",
)
#: perf_analyzer's latency components, whose sum is the average latency.
LATENCY_PARTS = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)
RESULTS = Path(__file__).resolve().parent / "results"


class BenchError(CovidctError, RuntimeError):
    """A benchmark cannot run as asked; the message says why."""


@dataclass(frozen=True)
class Row:
    """One concurrency level of a sweep (latencies in microseconds, as perf_analyzer)."""

    concurrency: int
    throughput: float
    p50: float
    p90: float
    p95: float
    p99: float
    avg: float
    server_queue: float | None = None
    server_compute: float | None = None
    avg_batch: float | None = None  # Triton's statistics: inferences per execution

    def values(self) -> list[str]:
        """The row as CSV cells, in ``COLUMNS`` order (an unknown figure is empty)."""
        out = [str(self.concurrency), f"{self.throughput:.2f}"]
        for v in (self.p50, self.p90, self.p95, self.p99, self.avg):
            out.append(f"{v:.0f}")
        for opt in (self.server_queue, self.server_compute):
            out.append("" if opt is None else f"{opt:.0f}")
        out.append("" if self.avg_batch is None else f"{self.avg_batch:.2f}")
        return out

    @classmethod
    def from_record(cls, r: dict[str, str]) -> Row:
        """A CSV row by perf_analyzer's column names (ours add "Avg Batch").

        perf_analyzer 2.50 writes no "Avg latency": then it is the sum of its parts.
        """

        def opt(name: str) -> float | None:
            v = r.get(name)
            return float(v) if v not in (None, "") else None

        avg = opt("Avg latency")
        if avg is None:
            avg = sum(opt(p) or 0.0 for p in LATENCY_PARTS)
        return cls(
            int(r["Concurrency"]),
            float(r["Inferences/Second"]),
            float(r["p50 latency"]),
            float(r["p90 latency"]),
            float(r["p95 latency"]),
            float(r["p99 latency"]),
            avg,
            opt("Server Queue"),
            opt("Server Compute Infer"),
            opt("Avg Batch"),
        )

    @classmethod
    def from_latencies(cls, concurrency: int, seconds: Sequence[float], wall: float) -> Row:
        """A level measured by our own load generator: its latencies and the wall time."""
        us = np.asarray(seconds, dtype=np.float64) * 1e6
        p50, p90, p95, p99 = np.percentile(us, [50, 90, 95, 99])
        return cls(concurrency, len(us) / wall, p50, p90, p95, p99, float(us.mean()))


def parse_levels(text: str) -> list[int]:
    """Concurrency levels: ``1:16:x2`` (geometric), ``1:8:2`` (step 2), ``4`` or ``1,2,8``."""
    text = text.strip()
    try:
        if "," in text:
            levels = [int(t) for t in text.split(",")]
        elif ":" in text:
            parts = text.split(":")
            start, end = int(parts[0]), int(parts[1])
            step = parts[2] if len(parts) > 2 else "1"
            levels, c = [], start
            while c <= end:
                levels.append(c)
                c = c * int(step[1:]) if step.startswith("x") else c + int(step)
                if step in ("x1", "x0", "0"):
                    raise ValueError
        else:
            levels = [int(text)]
    except (ValueError, IndexError):
        levels = []
    if not levels or min(levels) < 1 or max(levels) > 1024:
        raise BenchError(
            f"concurrency {text!r}: expected START:END:xFACTOR, START:END:STEP, N or N,M,... "
            "with levels in 1..1024"
        )
    return levels


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    """A sweep's rows as CSV with perf_analyzer's column names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow(r.values())


def read_csv(path: Path) -> list[Row]:
    """The rows :func:`write_csv` wrote."""
    with path.open(newline="") as f:
        return [Row.from_record(r) for r in csv.DictReader(f)]


def plot(path: Path, curves: Mapping[str, Sequence[Row]], title: str) -> None:
    """Throughput (x) against p50 and p99 latency (y), one line per curve, levels labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for i, (name, rows) in enumerate(curves.items()):
        colour = f"C{i}"
        x = [r.throughput for r in rows]
        ax.plot(x, [r.p99 / 1000 for r in rows], "o-", color=colour, label=f"{name} p99")
        ax.plot(
            x, [r.p50 / 1000 for r in rows], "s--", color=colour, alpha=0.6, label=f"{name} p50"
        )
        for r in rows:
            ax.annotate(
                f"c{r.concurrency}",
                (r.throughput, r.p99 / 1000),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from export.openvino import cpu_flags

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "cpu": cpu,
        # what decides the kernels oneDNN, ONNX Runtime and OpenVINO pick (VNNI, bf16, AMX)
        "instruction_sets": cpu_flags(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_gib, 1),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
    }


def table(rows: Sequence[Row]) -> list[str]:
    """A sweep's rows as a Markdown table (milliseconds)."""
    out = [
        "| concurrency | inferences/s | p50 ms | p95 ms | p99 ms | server queue ms | "
        "server compute ms | avg batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        q = "" if r.server_queue is None else f"{r.server_queue / 1000:.1f}"
        c = "" if r.server_compute is None else f"{r.server_compute / 1000:.1f}"
        out.append(
            f"| {r.concurrency} | {r.throughput:.1f} | {r.p50 / 1000:.1f} | {r.p95 / 1000:.1f} "
            f"| {r.p99 / 1000:.1f} | {q} | {c} | "
            + ("" if r.avg_batch is None else f"{r.avg_batch:.2f}")
            + " |"
        )
    return out


def rel(path: Path) -> str:
    """A path as BENCHMARKS.md (at the repository root) links to it."""
    root = RESULTS.parent.parent
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def save(out: Path, name: str, section: str, result: dict[str, Any]) -> None:
    """Write ``section.md`` and ``result.json`` of one benchmark into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "section.md").write_text(section.rstrip() + "\n")
    payload = {"benchmark": name, "machine": machine(), **result}
    (out / "result.json").write_text(json.dumps(payload, indent=2, default=_plain) + "\n")


def _plain(o: object) -> object:
    if isinstance(o, Row):
        return asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
