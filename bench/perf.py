"""``covidct bench triton``: perf_analyzer against a real tritonserver, fed real CT slices.

Each concurrency level is one perf_analyzer run (its own ``--concurrency-range c:c``, so
geometric sweeps such as 1:16:x2 work); several model versions (fp32 and INT8, say) are
measured level by level, interleaved, so they see the same machine noise.
"""

from __future__ import annotations

import contextlib
import csv
import json
import operator
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import real_images
from bench.engines import EngineChild
from bench.sweep import BenchError, Row, plot, rel, save, table, write_csv
from covidct.config import ModelSpec

PROTOCOLS = ("grpc", "http")

#: One in-process pass: per batch size (as text), images/s and latency.
Pass = dict[str, dict[str, float]]


def perf_analyzer_path() -> Path:
    """The perf_analyzer that ``make setup`` installs into the virtual environment, unless
    COVIDCT_PERF_ANALYZER names another (bench/gpu.sh: the NGC SDK image's, via docker)."""
    chosen = os.environ.get("COVIDCT_PERF_ANALYZER")
    if chosen:
        return Path(chosen)
    local = Path(sys.prefix) / "bin" / "perf_analyzer"
    found = local if local.is_file() else shutil.which("perf_analyzer")
    if not found:
        raise BenchError("perf_analyzer not found: run `make setup` (it installs it into .venv)")
    return Path(found)


def write_input_data(path: Path, spec: ModelSpec, images: np.ndarray) -> None:
    """perf_analyzer's ``--input-data`` JSON: one entry per real preprocessed slice."""
    entries = [
        {spec.input_name: {"content": img.ravel().tolist(), "shape": list(img.shape)}}
        for img in images
    ]
    path.write_text(json.dumps({"data": entries}))


def run_level(
    url: str,
    model: str,
    version: str,
    concurrency: int,
    input_data: Path,
    raw_csv: Path,
    protocol: str = "grpc",
    batch: int = 1,
    measurement_ms: int = 4000,
    stability: float = 50.0,
    retry: bool = True,
) -> Row:
    """One perf_analyzer measurement at a fixed concurrency; its CSV is kept at ``raw_csv``.

    perf_analyzer repeats windows until three agree within ``stability`` percent; on a noisy
    machine that can fail, and the level is retried once with windows twice as long.
    """
    cmd = [
        str(perf_analyzer_path()),
        "-m",
        model,
        "-u",
        url,
        "-i",
        protocol,
        "-b",
        str(batch),
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--input-data",
        str(input_data),
        "--measurement-interval",
        str(measurement_ms),
        "--stability-percentage",
        f"{stability:g}",
        "--max-trials",
        "6",
        "-f",
        str(raw_csv),
    ]
    if version:
        cmd += ["-x", version]
    result = subprocess.run(cmd, capture_output=True, text=True)
    unstable = "Failed to obtain stable measurement" in result.stdout + result.stderr
    if unstable and retry:
        return run_level(
            url,
            model,
            version,
            concurrency,
            input_data,
            raw_csv,
            protocol,
            batch,
            2 * measurement_ms,
            stability,
            retry=False,
        )
    if result.returncode != 0 or not raw_csv.is_file():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
        raise BenchError(f"perf_analyzer failed at concurrency {concurrency}:\n{tail}")
    return parse_perf_csv(raw_csv)[0]


def parse_perf_csv(path: Path) -> list[Row]:
    """Rows of a perf_analyzer CSV (its own column names; latencies in microseconds)."""
    with path.open(newline="") as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    # perf_analyzer appends server metrics blocks after a blank line; the first block is ours.
    rows = []
    for r in csv.DictReader(lines):
        if not r.get("Concurrency", "").strip().isdigit():
            break
        rows.append(Row.from_record(r))
    if not rows:
        raise BenchError(f"{path}: no perf_analyzer rows")
    return rows


@contextlib.contextmanager
def triton(repository: Path | None, url: str | None, protocol: str) -> Iterator[str]:
    """The address to measure: ``url`` as given, or a tritonserver started on ``repository``."""
    if url:
        yield url
        return
    if repository is None:
        raise BenchError("give --repository DIR (a server is started) or --url HOST:PORT")
    from serving.server import TritonError, TritonServer, free_port

    with tempfile.TemporaryDirectory() as tmp:
        server = TritonServer(
            repository, free_port(), free_port(), free_port(), log_file=Path(tmp) / "triton.log"
        )
        try:
            server.start()
        except TritonError as e:
            raise BenchError(str(e)) from e
        try:
            yield server.grpc_address if protocol == "grpc" else server.url.removeprefix("http://")
        finally:
            server.stop()


def served_spec(url: str, model: str, version: str, protocol: str) -> ModelSpec:
    """The ModelSpec the server carries in the model's config (as the gateway reads it)."""
    from covidct.modelconfig import SPEC_PARAMETER, spec_of

    if protocol == "grpc":
        import tritonclient.grpc as grpcclient

        gclient = grpcclient.InferenceServerClient(url)
        config = gclient.get_model_config(model, version, as_json=True)["config"]
    else:
        import tritonclient.http as httpclient

        config = httpclient.InferenceServerClient(url).get_model_config(model, version)
    spec = spec_of(config)
    if spec is None:
        raise BenchError(f"model {model} carries no {SPEC_PARAMETER}; export it with covidct")
    return spec


def executions(url: str, model: str, version: str) -> tuple[int, int]:
    """Triton's (inference_count, execution_count) of a model version, over gRPC."""
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(
        model, version, as_json=True
    )
    found = stats.get("model_stats", [])
    return (
        sum(int(s.get("inference_count", 0)) for s in found),
        sum(int(s.get("execution_count", 0)) for s in found),
    )


@dataclass(frozen=True)
class Served:
    """One thing a sweep measures: a version of the model on one server."""

    key: str  # the key of its rows in the result
    url: str
    version: str
    file_name: str  # its CSVs: triton-<file_name>.csv, raw/<file_name>-c<level>.csv


def sweep(
    targets: Sequence[Served],
    model: str,
    spec: ModelSpec,
    levels: Sequence[int],
    out: Path,
    protocol: str = "grpc",
    batch: int = 1,
    measurement_ms: int = 4000,
    slices: int = 16,
    stability: float = 50.0,
    after_level: Callable[[int], None] | None = None,
) -> dict[str, list[Row]]:
    """perf_analyzer at every level for every target (versions of one server, or the same
    version on several servers), interleaved level by level so that a machine slowing down
    mid-run affects every target alike; ``after_level(c)`` runs once each level is done."""
    if protocol not in PROTOCOLS:
        raise BenchError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
    out.mkdir(parents=True, exist_ok=True)
    input_data = out / "input_data.json"
    write_input_data(input_data, spec, real_images(spec, slices))
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    rows: dict[str, list[Row]] = {t.key: [] for t in targets}
    try:
        for c in levels:
            for t in targets:
                csv_path = raw / f"{t.file_name}-c{c}.csv"
                before = executions(t.url, model, t.version) if protocol == "grpc" else None
                row = run_level(
                    t.url,
                    model,
                    t.version,
                    c,
                    input_data,
                    csv_path,
                    protocol,
                    batch,
                    measurement_ms,
                    stability,
                )
                if before is not None:  # perf_analyzer's own traffic only: one client here
                    inferences, execs = map(
                        operator.sub, executions(t.url, model, t.version), before
                    )
                    row = replace(row, avg_batch=inferences / execs if execs else None)
                rows[t.key].append(row)
            if after_level is not None:
                after_level(c)
    finally:
        input_data.unlink(missing_ok=True)  # 16 slices as JSON text: large, and derived
    for t in targets:
        write_csv(out / f"triton-{t.file_name}.csv", rows[t.key])
    return rows


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
    info = served_versions(repository, model, versions)
    passes: dict[str, list[Pass]] = {}
    with triton(repository, url, protocol) as address, contextlib.ExitStack() as children:
        spec = served_spec(address, model, versions[0], protocol)
        engines = {v: info.get(v, {}).get("bench_engine", "ort-fp32") for v in versions}
        images = real_images(spec, 16)
        local_engines = {}
        for v in versions:
            path = _local_onnx(repository, model, v)
            if path is not None:
                local_engines[v] = children.enter_context(
                    EngineChild(engines[v], path, spec, images)
                )
                passes[v] = []

        def in_process_pass(level: int) -> None:
            for v, child in local_engines.items():
                passes[v].append(child.measure(IN_PROCESS_BATCHES, IN_PROCESS_ROUNDS))

        targets = [Served(v, address, v, f"v{v or 'latest'}") for v in versions]
        rows = sweep(
            targets,
            model,
            spec,
            levels,
            out,
            protocol,
            batch,
            measurement_ms,
            16,
            stability,
            after_level=in_process_pass,
        )
    local = {v: in_process_figures(engines[v], p) for v, p in passes.items() if p}
    names = {
        v: (f"v{v}" if v else "latest") + (f" ({info[v]['engine']})" if v in info else "")
        for v in versions
    }
    plot(
        out / "triton.png",
        {names[v]: r for v, r in rows.items()},
        f"Triton, {spec.backbone} {spec.image_size}², perf_analyzer {protocol}, batch {batch}",
    )
    lines = [
        f"## covidct bench triton ({spec.backbone}, S={spec.image_size})",
        "",
        f"perf_analyzer ({protocol}, batch {batch}, {measurement_ms} ms windows, stable within "
        f"{stability:g}%) against tritonserver on 127.0.0.1, input data: 16 real CT slices "
        "preprocessed for the model. Versions measured level by level, interleaved; after "
        "each level every local version's engine runs in process (batches "
        f"{', '.join(map(str, IN_PROCESS_BATCHES))}), and its in-process figure is the median "
        "of those passes at its best batch size.",
        "",
    ]
    summary = served_summary(rows, local, info)
    default = default_target_figures(summary)
    if summary:
        lines += [
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
        lines.append("")
    if default:
        lines += [
            f"Default CPU target here: {default['target']} {default['precision']} "
            f"({default['why']}); served, it reaches {default['speedup']:.2f}x the served ONNX "
            f"Runtime fp32 ({default['goal']}).",
            "",
        ]
    for v, vrows in rows.items():
        lines += [f"**{names[v]}**", "", *table(vrows), ""]
    lines += [f"![throughput vs latency]({rel(out / 'triton.png')})", ""]
    section = "\n".join(lines)
    save(
        out,
        "triton",
        section,
        {
            "model": model,
            "spec": spec.to_dict(),
            "protocol": protocol,
            "batch": batch,
            "rows": rows,
            "in_process": local,
            "versions": info,
            "summary": summary,
            "default_target": default,
        },
    )
    return section


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


def served_versions(
    repository: Path | None, model: str, versions: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """What each served version is, from its manifest (when the repository is local): the
    engine and precision (and ``bench engines``' name for it), and a reduced precision's gate
    figures against fp32."""
    if repository is None:
        return {}
    from export.repository import read_manifest

    info = {}
    for v in versions:
        if not v:
            continue
        manifest = read_manifest(repository / model, int(v))
        openvino = manifest.get("openvino") or {}
        if openvino:
            from export.openvino import read_engine

            precision = openvino["precision"]
            engine, gate = f"OpenVINO {precision}", openvino.get("agreement") or {}
            bench_engine = f"openvino-{precision}"
            split = read_engine(repository / model / v)["streams_from_batch"]
            if split:  # in process as served: batches from ``split`` on the streams
                engine += f" (streams from batch {split})"
                bench_engine += f"-streams{split}"
        elif manifest.get("int8"):
            engine, gate, bench_engine = "ONNX Runtime int8", manifest["int8"], "ort-int8"
        else:
            engine, gate = f"{manifest.get('target', '?')} fp32", {}
            bench_engine = "ort-fp32"
        info[v] = {
            "engine": engine,
            "bench_engine": bench_engine,
            "agreement": gate.get("top1_agreement_decisive"),
            "max_abs_prob_diff": gate.get("max_abs_prob_diff"),
        }
    return info


def _local_onnx(repository: Path | None, model: str, version: str) -> Path | None:
    """The served version's model.onnx when the repository is on this machine."""
    if repository is None:
        return None
    from export.repository import versions as versions_of

    chosen = version or str(max(versions_of(repository / model), default=0))
    path = repository / model / chosen / "model.onnx"
    return path if path.is_file() else None


#: ``bench triton``'s in-process passes: batch sizes, and timed runs per size in one pass.
IN_PROCESS_BATCHES = (1, 8, 16)
IN_PROCESS_ROUNDS = 3


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
