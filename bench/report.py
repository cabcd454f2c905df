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

#: ``bench capacity``'s goal: uploads per gateway core-second with a model that costs nothing.
CAPACITY_TARGET_PER_CORE = 300

ORDER = (
    "data",
    "train",
    "training-run",
    "quality",
    "engines",
    "triton",
    "settings",
    "gateway",
    "gateway-1-thread",
    "capacity",
    "replicas",
    "pacs",
    "gpu",
    "make-serve",
)


@dataclass(frozen=True)
class Target:
    """One line of the targets table."""

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
    """The targets, judged from the committed result files: per served version against its
    in-process engine and its gate, the default CPU target's speed-up, the gateway's overhead
    and capacity."""
    out = []
    triton = _load(results, "triton")
    gateway, capacity = _load(results, "gateway"), _load(results, "capacity")
    if triton and triton.get("summary"):  # every served version beside its in-process engine
        out += _served_targets(triton)
    else:
        out.append(Target("Served versions vs in-process, same engine", ">= 0.9x", "-", None))
    if gateway and gateway.get("triton"):
        g, t = _rows(gateway["gateway"]), _rows(gateway["triton"])
        ratios = {c: g[c]["throughput"] / t[c]["throughput"] for c in (4, 8) if c in g and c in t}
        # The median of the interleaved c=1 rounds (model time taken out) when the run has
        # them; a single sweep level otherwise (older results).
        overhead = gateway.get("p50_overhead_c1_ms")
        if overhead is None and 1 in g and 1 in t:
            overhead = (g[1]["p50"] - t[1]["p50"]) / 1000
        rounds = len((gateway.get("c1_rounds") or {}).get("rounds", []))
        what = "Gateway p50 overhead over Triton direct (c=1" + (
            f", median of {rounds} interleaved rounds, model time taken out)" if rounds else ")"
        )
        goal_ms = gateway.get("p50_overhead_target_ms", P50_OVERHEAD_TARGET_MS)
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
                what,
                f"<= {goal_ms:g} ms",
                "-" if overhead is None else f"{overhead:+.1f} ms",
                None if overhead is None else overhead <= goal_ms,
            )
        )
    else:
        goal = f">= 0.9x, p50 +<= {P50_OVERHEAD_TARGET_MS:g} ms"
        out.append(Target("Gateway vs Triton direct", goal, "-", None))
    capacity_goal = f">= {CAPACITY_TARGET_PER_CORE:g} PNG/s per core"
    if capacity:
        best = max(r["per_gateway_core"] for r in capacity["rows"])
        out.append(
            Target(
                "Gateway capacity, identity model",
                capacity_goal,
                f"{best:.0f} per gateway core-second",
                best >= CAPACITY_TARGET_PER_CORE,
            )
        )
    else:
        out.append(Target("Gateway capacity, identity model", capacity_goal, "-", None))
    return out + _pacs_targets(_load(results, "pacs")) + _quality_targets(_load(results, "quality"))


def _quality_targets(quality: dict[str, Any] | None) -> list[Target]:
    """The best-on-val recipe's test figures on real CT (median over its seeds)."""
    from bench.qualityreport import COLUMNS, GOALS

    if not quality:
        return []
    best = quality["best"]
    summary = quality["summaries"][best]
    names = dict(COLUMNS)
    out = []
    for key, goal in GOALS:
        what = names[key]
        s = summary.get(key)
        seeds = s["n"] if s else 0
        out.append(
            Target(
                f"Real CT (covidxct-128 test), recipe `{best}`, {what}, median of {seeds} seeds",
                f">= {100 * goal:.0f}%",
                "-" if s is None else f"{100 * s['median']:.1f}%",
                None if s is None else s["median"] >= goal,
            )
        )
    return out


def _pacs_targets(pacs: dict[str, Any] | None) -> list[Target]:
    """The DICOM node's receive rate beside Orthanc's and its end-to-end time beside the
    gateway's own study time (medians of interleaved rounds); none before it is measured."""
    if not pacs:
        return []
    receive_what = "DICOM node receive rate vs Orthanc, same storescu run"
    e2e_what = "DICOM node last instance to SR stored, less the stable wait, vs gateway study"
    rec, e2e = pacs["receive"], pacs["end_to_end"]
    rx, ex = rec["ratio"]["median"], e2e["ratio"]["median"]
    return [
        Target(
            receive_what,
            f">= {rec['target_x']:g}x",
            f"{rec['node_per_s']['median']:.0f} vs {rec['orthanc_per_s']['median']:.0f} "
            f"instances/s = {rx:.2f}x",
            rx >= rec["target_x"],
        ),
        Target(
            f"{e2e_what} ({pacs['instances']} slices)",
            f"<= {e2e['target_x']:g}x",
            f"{e2e['node_s']['median']:.1f} vs {e2e['gateway_study_s']['median']:.1f} s "
            f"= {ex:.2f}x",
            ex <= e2e["target_x"],
        ),
    ]


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
    """Write :func:`render`'s text to ``output`` (replaced at once, never half written)."""
    text = render(results)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text)
    tmp.replace(output)
    return text
