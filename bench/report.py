"""``covidct bench report``: BENCHMARKS.md assembled from the result folders.

Each ``bench/results/NAME/`` holds what one ``covidct bench NAME`` run wrote
(``section.md``, ``result.json``, CSV, PNG) and, optionally, a hand-written ``notes.md``
reading of it. The targets table at the top is computed from the ``result.json`` files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import P50_OVERHEAD_TARGET_MS
from bench.sweep import RESULTS, machine

ORDER = (
    "data",
    "train",
    "training-run",
    "engines",
    "triton",
    "settings",
    "gateway",
    "gateway-1-thread",
    "capacity",
    "replicas",
    "gpu",
    "make-serve",
)


@dataclass(frozen=True)
class Target:
    what: str
    goal: str
    measured: str
    met: bool | None  # None: not measured yet


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / name / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _rows(raw: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(r["concurrency"]): r for r in raw}


def targets(results: Path) -> list[Target]:
    """The issue's four targets, judged from the committed result files."""
    out = []
    engines, triton = _load(results, "engines"), _load(results, "triton")
    gateway, capacity = _load(results, "gateway"), _load(results, "capacity")
    served: dict[str, dict[int, dict[str, Any]]] = {}
    if triton:
        served = {v: _rows(rows) for v, rows in triton["rows"].items()}
    summary = (triton or {}).get("summary")
    fp32 = next(iter(served.values()), None)
    local = (triton or {}).get("onnxruntime_in_process") or {}
    if summary:  # every served version beside its in-process engine (bench triton, new format)
        out += _served_targets(triton or {})
    elif fp32 and (local or engines):
        # prefer the in-process figure measured beside the sweep (same run) to bench engines'
        best_ort = local.get("best_images_per_s") or engines["best_images_per_s"]["ort-fp32"]  # type: ignore[index]
        best_served = max(r["throughput"] for r in fp32.values())
        ratio = best_served / best_ort
        out.append(
            Target(
                "Triton-served fp32 vs in-process ONNX Runtime (best batch)",
                ">= 0.9x",
                f"{best_served:.1f} vs {best_ort:.1f} img/s = {ratio:.2f}x",
                ratio >= 0.9,
            )
        )
    else:
        out.append(Target("Triton-served fp32 vs in-process ONNX Runtime", ">= 0.9x", "-", None))
    if gateway and gateway.get("triton"):
        g, t = _rows(gateway["gateway"]), _rows(gateway["triton"])
        ratios = {c: g[c]["throughput"] / t[c]["throughput"] for c in (4, 8) if c in g and c in t}
        overhead = (g[1]["p50"] - t[1]["p50"]) / 1000 if 1 in g and 1 in t else None
        out.append(
            Target(
                "Gateway /v1/predict vs Triton direct throughput, c=4 and c=8",
                ">= 0.9x",
                ", ".join(f"c{c} {r:.2f}x" for c, r in ratios.items()) or "-",
                bool(ratios) and min(ratios.values()) >= 0.9,
            )
        )
        out.append(
            Target(
                "Gateway p50 overhead over Triton direct (c=1)",
                f"<= {P50_OVERHEAD_TARGET_MS:g} ms",
                "-" if overhead is None else f"{overhead:+.1f} ms",
                None if overhead is None else overhead <= P50_OVERHEAD_TARGET_MS,
            )
        )
    else:
        out.append(Target("Gateway vs Triton direct", ">= 0.9x, p50 +<= 10 ms", "-", None))
    if capacity:
        best = max(r["per_gateway_core"] for r in capacity["rows"])
        out.append(
            Target(
                "Gateway capacity, identity model",
                ">= 300 PNG/s per core",
                f"{best:.0f} per gateway core-second",
                best >= 300,
            )
        )
    else:
        out.append(Target("Gateway capacity, identity model", ">= 300 PNG/s per core", "-", None))
    if len(served) == 2 and not summary:  # results written before the per-version summary
        (va, a), (vb, b) = served.items()
        common = sorted(set(a) & set(b))
        best_a = max(a[c]["throughput"] for c in common)
        best_b = max(b[c]["throughput"] for c in common)
        # the served version's own gate figure (its manifest); older results: bench engines'
        agreement = ((triton or {}).get("versions") or {}).get(vb, {}).get("agreement")
        source = "the served version's manifest"
        if agreement is None and engines:
            agreement, source = engines["agreement"]["ort-int8"], "bench engines' model"
        note = (
            f"; top-1 agreement {100 * agreement:.1f}% ({source})" if agreement is not None else ""
        )
        out.append(
            Target(
                f"INT8 served (v{vb}) vs fp32 served (v{va}), best concurrency",
                ">= 1.4x, >= 99% agreement",
                f"{best_b:.1f} vs {best_a:.1f} img/s = {best_b / best_a:.2f}x{note}",
                best_b / best_a >= 1.4 and (agreement is None or agreement >= 0.99),
            )
        )
    elif not summary:
        out.append(Target("INT8 served vs fp32 served", ">= 1.4x", "-", None))
    return out


def _served_targets(triton: dict[str, Any]) -> list[Target]:
    """Per served version: served vs in-process of the same engine and precision, and a
    reduced precision's gate figure; then the default CPU target's speed-up."""
    out = []
    for v, f in triton["summary"].items():
        if f["in_process"]:
            ratio = f["served_vs_in_process"]
            out.append(
                Target(
                    f"Served {f['engine']} (v{v}) vs in-process, same engine and precision",
                    ">= 0.9x",
                    f"{f['best']:.1f} vs {f['in_process']:.1f} img/s = {ratio:.2f}x",
                    ratio >= 0.9,
                )
            )
        if f["agreement"] is not None:
            out.append(
                Target(
                    f"{f['engine']} (v{v}) top-1 agreement with fp32, decisive real slices",
                    ">= 99%",
                    f"{100 * f['agreement']:.1f}% (the version's manifest)",
                    f["agreement"] >= 0.99,
                )
            )
    d = triton.get("default_target")
    if d:
        out.append(
            Target(
                f"Default CPU target ({d['target']} {d['precision']}) vs served ONNX Runtime fp32",
                f">= {d['goal_x']:g}x (this CPU's flags)",
                f"{d['speedup']:.2f}x",
                bool(d["met"]),
            )
        )
    return out


def render(results: Path = RESULTS) -> str:
    """The whole BENCHMARKS.md text."""
    folders = [results / n for n in ORDER if (results / n).is_dir()]
    folders += sorted(p for p in results.iterdir() if p.is_dir() and p.name not in ORDER)
    first = next((_load(results, p.name) for p in folders if _load(results, p.name)), None)
    m = (first or {}).get("machine") or machine()
    lines = [
        "# Benchmarks",
        "",
        "Generated by `covidct bench report` from the result folders under `bench/results/` "
        "(`make bench` reruns every benchmark, then this). Figures compared with each other "
        "come from the same run; each section names its command.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}; no GPU; instruction sets: "
        f"{', '.join(m.get('instruction_sets') or []) or 'not recorded'}.",
        "",
        "## Targets",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    for t in targets(results):
        met = "not measured" if t.met is None else ("yes" if t.met else "**no**")
        lines.append(f"| {t.what} | {t.goal} | {t.measured} | {met} |")
    lines.append("")
    for folder in folders:
        for part in ("section.md", "notes.md"):
            if (folder / part).is_file():
                lines += [(folder / part).read_text().rstrip(), ""]
    return "\n".join(lines)


def write_report(results: Path, output: Path) -> str:
    text = render(results)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text)
    tmp.replace(output)
    return text
