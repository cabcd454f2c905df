"""``covidct bench triton``: perf_analyzer against a real tritonserver, fed real CT slices.

Several model versions (fp32 and INT8, say) are measured level by level, interleaved
(:func:`bench.perfanalyzer.sweep`), so they see the same machine noise; after every level
each version whose files are local also runs in process, by the engine and precision it is
served with, so that served / in-process is judged over the same minutes.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.corpus import real_images
from bench.inprocess import EngineChild
from bench.perfanalyzer import Served, sweep
from bench.served import local_onnx, served_spec, served_versions, triton
from bench.sweep import Row, plot, rel, save, table
from covidct.addresses import LOCALHOST
from covidct.config import ModelSpec

#: One in-process pass: per batch size (as text), images/s and latency.
Pass = dict[str, dict[str, float]]

#: ``bench triton``'s in-process passes: batch sizes, and timed runs per size in one pass.
IN_PROCESS_BATCHES = (1, 8, 16)
IN_PROCESS_ROUNDS = 3
#: Real slices fed to perf_analyzer and to the in-process engines.
SLICES = 16


@dataclass(frozen=True)
class Window:
    """How perf_analyzer measures every level."""

    protocol: str = "grpc"
    batch: int = 1
    measurement_ms: int = 4000
    stability: float = 50.0


def run_triton_bench(
    repository: Path | None,
    url: str | None,
    model: str,
    versions: Sequence[str],
    levels: Sequence[int],
    out: Path,
    protocol: str = "grpc",
    batch: int = 1,
    measurement_ms: int = 4000,
    stability: float = 50.0,
) -> str:
    """The whole ``covidct bench triton`` command; returns its Markdown section.

    Every served version whose files are local is also run in process by the engine and
    precision it is served with (``bench engines``' runner, kept loaded in a child process)
    after every level of the interleaved sweep; its figure per batch size is the median of
    those passes: served / in-process is judged per precision, over the same minutes.
    """
    versions = list(versions) or [""]
    window = Window(protocol, batch, measurement_ms, stability)
    info = served_versions(repository, model, versions)
    engines = {v: info.get(v, {}).get("bench_engine", "ort-fp32") for v in versions}
    with triton(repository, url, protocol) as address, contextlib.ExitStack() as stack:
        spec = served_spec(address, model, versions[0], protocol)
        children = start_in_process(stack, repository, model, engines, spec)
        rows, passes = measure_served(address, model, spec, versions, levels, out, window, children)
    local = {v: in_process_figures(engines[v], p) for v, p in passes.items() if p}
    summary = served_summary(rows, local, info)
    default = default_target_figures(summary)
    names = {
        v: (f"v{v}" if v else "latest") + (f" ({info[v]['engine']})" if v in info else "")
        for v in versions
    }
    plot(
        out / "triton.png",
        {names[v]: r for v, r in rows.items()},
        f"Triton, {spec.backbone} {spec.image_size}², perf_analyzer {protocol}, batch {batch}",
    )
    section = triton_markdown(spec, window, rows, names, summary, default, out / "triton.png")
    result = {
        "model": model,
        "spec": spec.to_dict(),
        "protocol": protocol,
        "batch": batch,
        "rows": rows,
        "in_process": local,
        "versions": info,
        "summary": summary,
        "default_target": default,
    }
    save(out, "triton", section, result)
    return section


def start_in_process(
    stack: contextlib.ExitStack,
    repository: Path | None,
    model: str,
    engines: dict[str, str],
    spec: ModelSpec,
) -> dict[str, EngineChild]:
    """Per version whose model.onnx is on this machine, its engine loaded in a child process
    (closed with ``stack``), fed the same real slices as perf_analyzer."""
    images = real_images(spec, SLICES)
    children = {}
    for v, engine in engines.items():
        path = local_onnx(repository, model, v)
        if path is not None:
            children[v] = stack.enter_context(EngineChild(engine, path, spec, images))
    return children


def measure_served(
    address: str,
    model: str,
    spec: ModelSpec,
    versions: Sequence[str],
    levels: Sequence[int],
    out: Path,
    window: Window,
    children: dict[str, EngineChild],
) -> tuple[dict[str, list[Row]], dict[str, list[Pass]]]:
    """The interleaved perf_analyzer sweep of every version, with one in-process pass of each
    local version's engine after every level: (rows per version, passes per local version)."""
    passes: dict[str, list[Pass]] = {v: [] for v in children}

    def in_process_pass(level: int) -> None:
        for v, child in children.items():
            passes[v].append(child.measure(IN_PROCESS_BATCHES, IN_PROCESS_ROUNDS))

    targets = [Served(v, address, v, f"v{v or 'latest'}") for v in versions]
    rows = sweep(
        *(targets, model, spec, levels, out),
        *(window.protocol, window.batch, window.measurement_ms, SLICES, window.stability),
        after_level=in_process_pass,
    )
    return rows, passes


def triton_markdown(
    spec: ModelSpec,
    window: Window,
    rows: dict[str, list[Row]],
    names: dict[str, str],
    summary: dict[str, dict[str, Any]],
    default: dict[str, Any] | None,
    png: Path,
) -> str:
    """The BENCHMARKS.md section: how it was measured, the summary per version, the default
    CPU target's speed-up, every version's rows and the plot."""
    lines = [
        f"## covidct bench triton ({spec.backbone}, S={spec.image_size})",
        "",
        f"perf_analyzer ({window.protocol}, batch {window.batch}, {window.measurement_ms} ms "
        f"windows, stable within {window.stability:g}%) against tritonserver on {LOCALHOST}, "
        f"input data: {SLICES} real CT slices preprocessed for the model. Versions measured "
        "level by level, interleaved; after each level every local version's engine runs in "
        f"process (batches {', '.join(map(str, IN_PROCESS_BATCHES))}), and its in-process "
        "figure is the median of those passes at its best batch size.",
        "",
    ]
    if summary:
        lines += [*_summary_table(summary, names), ""]
    if default:
        lines += [
            f"Default CPU target here: {default['target']} {default['precision']} "
            f"({default['why']}); served, it reaches {default['speedup']:.2f}x the served ONNX "
            f"Runtime fp32 ({default['goal']}).",
            "",
        ]
    for v, vrows in rows.items():
        lines += [f"**{names[v]}**", "", *table(vrows), ""]
    lines += [f"![throughput vs latency]({rel(png)})", ""]
    return "\n".join(lines)


def _summary_table(summary: dict[str, dict[str, Any]], names: dict[str, str]) -> list[str]:
    lines = [
        "| version | best img/s | c=1 p50 / p99 ms | c=8 p50 / p99 ms | in-process "
        "img/s (same engine and precision) | served / in-process | top-1 agreement "
        "(decisive slices) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, f in summary.items():
        ratio = f"{f['served_vs_in_process']:.2f}x" if f["in_process"] else "-"
        inproc = f"{f['in_process']:.1f} (b{f['in_process_batch']})" if f["in_process"] else "-"
        agreement = f"{100 * f['agreement']:.1f}%" if f["agreement"] is not None else "-"
        lines.append(
            f"| {names[v]} | {f['best']:.1f} (c{f['best_c']}) | {f['c1']} | {f['c8']} | "
            f"{inproc} | {ratio} | {agreement} |"
        )
    return lines


def _latencies(rows: Sequence[Row], c: int) -> str:
    row = next((r for r in rows if r.concurrency == c), None)
    return f"{row.p50 / 1000:.1f} / {row.p99 / 1000:.1f}" if row else "-"


def served_summary(
    rows: dict[str, list[Row]], local: dict[str, dict[str, Any]], info: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per version: best served throughput, c=1 and c=8 latencies, the in-process figure of
    the same engine and precision, and the version's own gate figure."""
    out = {}
    for v, vrows in rows.items():
        if not vrows:
            continue
        best = max(vrows, key=lambda r: r.throughput)
        here = local.get(v) or {}
        inproc = here.get("best_images_per_s")
        out[v] = {
            "engine": info.get(v, {}).get("engine", "?"),
            "bench_engine": here.get("engine"),
            "best": best.throughput,
            "best_c": best.concurrency,
            "c1": _latencies(vrows, 1),
            "c8": _latencies(vrows, 8),
            "in_process": inproc,
            "in_process_batch": here.get("best_batch"),
            "served_vs_in_process": best.throughput / inproc if inproc else None,
            "agreement": info.get(v, {}).get("agreement"),
        }
    return out


def default_target_figures(summary: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The default CPU target (export/openvino.py's rule) served, against served ONNX Runtime
    fp32, with the goal the CPU's flags set: 4x with AMX, 1.8x with AVX512_BF16, else 1.4x
    (int8 where it passes the gate)."""
    from export.openvino import cpu_flags, default_cpu_target

    target, precision, why = default_cpu_target()
    engine = f"openvino-{precision}" if target == "openvino" else f"ort-{precision}"
    chosen = next(
        (
            f
            for f in summary.values()
            if (f["bench_engine"] or "").partition("-streams")[0] == engine
        ),
        None,
    )
    base = next((f for f in summary.values() if f["bench_engine"] == "ort-fp32"), None)
    if chosen is None or base is None:
        return None
    flags = set(cpu_flags())
    goal = 4.0 if "amx_bf16" in flags else 1.8 if "avx512_bf16" in flags else 1.4
    speedup = chosen["best"] / base["best"]
    return {
        "target": target,
        "precision": precision,
        "why": why,
        "speedup": speedup,
        "goal_x": goal,
        "goal": f"goal >= {goal:g}x on this CPU",
        "met": speedup >= goal,
    }


def in_process_figures(engine: str, passes: Sequence[Pass]) -> dict[str, Any]:
    """One engine's in-process figures from its passes: per batch size the median images/s
    over the passes, and the best batch size by that median."""
    per_batch = {b: statistics.median(p[b]["images_per_s"] for p in passes) for b in passes[0]}
    best = max(per_batch, key=lambda b: per_batch[b])
    return {
        "engine": engine,
        "passes": list(passes),
        "per_batch": per_batch,
        "best_batch": best,
        "best_images_per_s": per_batch[best],
    }
