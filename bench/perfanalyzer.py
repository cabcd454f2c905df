"""perf_analyzer, the load generator of ``bench triton``, ``bench settings`` and ``bench gateway``.

Each concurrency level is one perf_analyzer run (its own ``--concurrency-range c:c``, so
geometric sweeps such as 1:16:x2 work), fed real CT slices as ``--input-data``; its CSV is
read back into :class:`bench.sweep.Row`. :func:`sweep` measures several targets level by
level, interleaved, so they see the same machine noise.
"""

from __future__ import annotations

import csv
import json
import operator
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.corpus import real_images
from bench.sweep import BenchError, Row, write_csv
from covidct.config import ModelSpec

PROTOCOLS = ("grpc", "http")


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
        *("-m", model, "-u", url, "-i", protocol, "-b", str(batch)),
        *("--concurrency-range", f"{concurrency}:{concurrency}"),
        *("--input-data", str(input_data)),
        *("--measurement-interval", str(measurement_ms)),
        *("--stability-percentage", f"{stability:g}"),
        *("--max-trials", "6", "-f", str(raw_csv)),
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
                    *(t.url, model, t.version, c, input_data, csv_path),
                    *(protocol, batch, measurement_ms, stability),
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
        input_data.unlink(missing_ok=True)  # the slices as JSON text: large, and derived
    for t in targets:
        write_csv(out / f"triton-{t.file_name}.csv", rows[t.key])
    return rows
