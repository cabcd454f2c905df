"""``covidct bench settings``: which Triton settings should ``covidct export`` default to?

The same exported version is served under several configurations (dynamic batching off,
on with two queue delays, one or two model instances), each by its own tritonserver, all
running at once, and swept with perf_analyzer level by level, the variants in turn. The
recommendation rule is written down here so it can be checked: the highest mean throughput
at concurrency >= 4, among configurations whose median latency at concurrency 1 is within
10% of the best (load must not cost the single user). The median, not p99: a window at
concurrency 1 holds too few requests for its p99 to be more than one request, so one stray
slow answer would decide. A unit test holds ``TritonOptions``'s defaults to the committed
recommendation.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.perfanalyzer import Served, sweep
from bench.sweep import BenchError, Row, plot, rel, save
from covidct.config import DEFAULT_MODEL_NAME, ModelSpec
from export.repository import read_manifest, version_cam_hw, versions
from export.tritonconfig import RepositoryError, TritonOptions, render_config


@dataclass(frozen=True)
class Variant:
    """One way to serve the version: its name in the section and its Triton settings."""

    name: str
    serving: TritonOptions


def variants(base: TritonOptions) -> list[Variant]:
    """The four settings compared, all on the cpu target from ``base``."""
    cpu = replace(base, target="cpu")
    return [
        Variant("no batching, 1 instance", replace(cpu, dynamic_batching=False, instance_count=1)),
        Variant(
            "batching 2 ms, 1 instance", replace(cpu, max_queue_delay_us=2000, instance_count=1)
        ),
        Variant(
            "batching 20 ms, 1 instance", replace(cpu, max_queue_delay_us=20000, instance_count=1)
        ),
        Variant(
            "batching 2 ms, 2 instances", replace(cpu, max_queue_delay_us=2000, instance_count=2)
        ),
    ]


def recommend(results: dict[str, list[Row]]) -> str:
    """The rule in the module docstring; returns the chosen variant's name."""
    best_p50_c1 = min(rows[0].p50 for rows in results.values())
    eligible = {n: r for n, r in results.items() if r[0].p50 <= 1.10 * best_p50_c1}

    def loaded(rows: list[Row]) -> float:
        high = [r.throughput for r in rows if r.concurrency >= 4] or [rows[-1].throughput]
        return statistics.mean(high)

    return max(eligible, key=lambda n: loaded(eligible[n]))


def _variant_repository(
    src: Path,
    version: int,
    dst: Path,
    serving: TritonOptions,
    spec: ModelSpec,
    cam_hw: tuple[int, int],
) -> None:
    """A one-version repository serving ``src``'s version with ``serving`` settings."""
    model_dir = dst / spec.name
    (model_dir / "1").mkdir(parents=True)
    for f in (src / str(version)).iterdir():
        (model_dir / "1" / f.name).symlink_to(f.resolve())
    for f in src.iterdir():
        if f.is_file() and f.name != "config.pbtxt":
            shutil.copy(f, model_dir / f.name)
    (model_dir / "config.pbtxt").write_text(render_config(spec, serving, cam_hw))


def run_settings_bench(
    repository: Path,
    out: Path,
    levels: Sequence[int],
    model: str = DEFAULT_MODEL_NAME,
    version: int | None = None,
    measurement_ms: int = 4000,
    stability: float = 50.0,
) -> str:
    """The whole ``covidct bench settings`` command; returns its Markdown section."""
    src = repository / model
    version, spec, cam_hw = served_cpu_version(src, version)
    chosen = variants(TritonOptions())
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        targets = serve_variants(stack, Path(tmp), src, version, chosen, spec, cam_hw)
        results = sweep(
            targets,
            model,
            spec,
            levels,
            out,
            measurement_ms=measurement_ms,
            stability=stability,
        )
    pick = recommend(results)
    picked = next(v for v in chosen if v.name == pick)
    defaults = TritonOptions()
    follows = all(
        getattr(defaults, k) == getattr(picked.serving, k)
        for k in ("dynamic_batching", "max_queue_delay_us", "instance_count")
    )
    plot(out / "settings.png", results, "Triton settings (same model, perf_analyzer gRPC)")
    section = settings_markdown(model, version, levels, results, pick, follows, out)
    save(
        out,
        "settings",
        section,
        {
            "model": model,
            "version": version,
            "results": results,
            "recommended": pick,
            "recommended_serving": asdict(picked.serving),
            "defaults_follow": follows,
        },
    )
    return section


def served_cpu_version(src: Path, version: int | None) -> tuple[int, ModelSpec, tuple[int, int]]:
    """The cpu-target version to serve (the newest unless given), its ModelSpec and CAM size.

    Raises:
        BenchError: ``src`` holds no config, the version is not a cpu-target one, or its
            manifest cannot be read.
    """
    if not (src / "config.pbtxt").is_file():
        raise BenchError(f"{src} has no config.pbtxt: export a cpu version first")
    version = version or max(versions(src), default=0)
    if not (src / str(version) / "model.py").is_file():
        raise BenchError(f"{src}/{version} is not a cpu-target version (no model.py)")
    try:
        manifest = read_manifest(src, version)
        spec = ModelSpec.from_dict(manifest["model_spec"])
        cam_hw = version_cam_hw(src, manifest, spec)
    except RepositoryError as e:
        raise BenchError(str(e)) from e
    return version, spec, cam_hw


def serve_variants(
    stack: contextlib.ExitStack,
    tmp: Path,
    src: Path,
    version: int,
    chosen: Sequence[Variant],
    spec: ModelSpec,
    cam_hw: tuple[int, int],
) -> list[Served]:
    """Every variant served at once, each by its own tritonserver (stopped with ``stack``).

    Idle servers cost no CPU, and sweeping them level by level in turn means a machine that
    slows down mid-run slows every variant alike.
    """
    from serving.server import TritonError, TritonServer, free_port

    targets = []
    for i, variant in enumerate(chosen):
        repo = tmp / f"repo{i}"
        _variant_repository(src, version, repo, variant.serving, spec, cam_hw)
        server = TritonServer(
            repo, free_port(), free_port(), free_port(), log_file=tmp / f"triton{i}.log"
        )
        try:
            stack.enter_context(server)
        except TritonError as e:
            raise BenchError(f"{variant.name}: {e}") from e
        targets.append(Served(variant.name, server.grpc_address, "1", f"variant{i}"))
    return targets


def settings_markdown(
    model: str,
    version: int,
    levels: Sequence[int],
    results: dict[str, list[Row]],
    pick: str,
    follows: bool,
    out: Path,
) -> str:
    """The BENCHMARKS.md section: every variant per level, the recommendation, and whether
    ``covidct export``'s defaults follow it."""
    defaults = TritonOptions()
    header = "| concurrency | " + " | ".join(f"{n}: inf/s (p50 / p99 ms)" for n in results) + " |"
    lines = [
        "## covidct bench settings",
        "",
        f"One exported cpu version ({model} v{version}) served four ways, each by its own "
        "tritonserver (all four running), swept with perf_analyzer (gRPC, real slices), the "
        "variants interleaved level by level. Rule: highest mean "
        "throughput at concurrency >= 4 among settings whose median latency at concurrency 1 "
        "is within 10% of the best.",
        "",
        header,
        "|---:|" + "---:|" * len(results),
    ]
    for j, c in enumerate(levels):
        cells = [
            f"{r[j].throughput:.1f} ({r[j].p50 / 1000:.0f} / {r[j].p99 / 1000:.0f})"
            for r in results.values()
        ]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Recommended: **{pick}**. `covidct export` defaults (dynamic batching "
        f"{'on' if defaults.dynamic_batching else 'off'}, queue delay "
        f"{defaults.max_queue_delay_us} µs, {defaults.instance_count} instance(s)) "
        + ("follow it." if follows else "do NOT follow it yet: change TritonOptions's defaults."),
        "",
        f"![settings]({rel(out / 'settings.png')})",
        "",
    ]
    return "\n".join(lines)


def recommended_serving(result: Path) -> dict[str, object]:
    """The committed recommendation (``result.json`` of a settings run)."""
    return dict(json.loads(result.read_text())["recommended_serving"])
