"""``covidct bench replicas``: one gateway over 1, 2 and 3 Triton replicas, and a failover.

Three tritonservers serve the same repository; three gateways (one process each) balance over
the first 1, 2 and 3 of them (``gateway.replicas``). The load generator uploads real 512² PNG
slices; the three topologies are measured interleaved (each round visits them in a rotated
order) and each row is the median over rounds, so the ratios compare like with like on a
noisy machine. Then the failover: under load on the 3-replica gateway, one tritonserver is
killed with SIGKILL and started again; failed requests, the restart and the gateway's
readmission are timed.

On a machine with fewer cores than replicas this measures the cost of balancing, not
scaling: every replica competes for the same cores.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.capacity import identity_repository, running_gateway, running_triton
from bench.client import LevelResult, Upload, load_level
from bench.corpus import real_data_dir, real_pngs
from bench.sweep import BenchError, save
from serving.server import TritonServer


def _replica_states(url: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
            return [s["state"] for s in json.loads(r.read())["replicas"]]
    except (OSError, ValueError, KeyError):
        return []


def _measure(
    repo: Path,
    tmp: Path,
    replicas: Sequence[int],
    uploads: list[Upload],
    concurrency: int,
    seconds: float,
    rounds: int,
    env: dict[str, str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows per replica count (medians over rounds) and the failover figures."""
    most = max(replicas)
    with ExitStack() as stack:
        servers = [
            stack.enter_context(running_triton(repo, tmp / f"triton{i}.log")) for i in range(most)
        ]
        gateways: dict[int, str] = {}
        for n in replicas:
            log = tmp / f"gateway{n}.log"
            url, _ = stack.enter_context(running_gateway(servers[:n], 1, log, env))
            load_level(url, uploads, concurrency, 100, 5)  # warm every replica's connection
            gateways[n] = url
        runs: dict[int, list[LevelResult]] = {n: [] for n in replicas}
        for r in range(rounds):
            order = list(replicas[r % len(replicas) :]) + list(replicas[: r % len(replicas)])
            for n in order:
                runs[n].append(load_level(gateways[n], uploads, concurrency, 100000, seconds))
        rows = []
        for n in replicas:
            results = runs[n]
            rows.append(
                {
                    "replicas": n,
                    "uploads_per_s": statistics.median(x.row.throughput for x in results),
                    "p50_ms": statistics.median(x.row.p50 for x in results) / 1000,
                    "p99_ms": statistics.median(x.row.p99 for x in results) / 1000,
                    "failures": sum(x.failures for x in results),
                    "rounds": [round(x.row.throughput, 2) for x in results],
                }
            )
        failover = (
            _failover(servers[1], gateways[most], uploads, concurrency, seconds) if most > 1 else {}
        )
    return rows, failover


def _failover(
    victim: TritonServer, url: str, uploads: list[Upload], concurrency: int, seconds: float
) -> dict[str, Any]:
    """SIGKILL ``victim`` a third into a load level, start it again, time the readmission."""
    window = max(3 * seconds, 6.0)
    result: dict[str, LevelResult] = {}
    load = threading.Thread(
        target=lambda: result.update(level=load_level(url, uploads, concurrency, 10**6, window))
    )
    load.start()
    time.sleep(window / 3)
    assert victim.process is not None
    killed = time.monotonic()
    victim.process.kill()
    victim.process.wait()
    victim.start()  # the same ports; returns once it is ready
    restarted = time.monotonic()
    while time.monotonic() - restarted < 30 and set(_replica_states(url)) != {"ready"}:
        time.sleep(0.1)
    readmitted = time.monotonic()
    load.join()
    level = result["level"]
    return {
        "window_s": window,
        "requests": round(level.row.throughput * window),
        "uploads_per_s": level.row.throughput,
        "p99_ms": level.row.p99 / 1000,
        "failures": level.failures,
        "statuses": level.statuses,
        "restart_s": restarted - killed,
        "readmitted_s": readmitted - restarted,
        "readmitted": set(_replica_states(url)) == {"ready"},
    }


def _model_label(repository: Path, version: str) -> str:
    """``densenet201 S=SIZE (cpu, v1)`` from the served version's manifest."""
    from export.repository import read_manifest, versions

    model_dir = repository / "covidct"
    found = versions(model_dir)
    if not found:
        raise BenchError(f"{model_dir} holds no version")
    v = int(version) if version else max(found)
    manifest = read_manifest(model_dir, v)
    spec = manifest.get("model_spec", {})
    target = manifest.get("target", "?")
    return f"{spec.get('backbone', '?')} S={spec.get('image_size', '?')} ({target}, v{v})"


def run_replicas_bench(
    out: Path,
    repository: Path | None = None,
    replicas: Sequence[int] = (1, 2, 3),
    concurrency: int = 8,
    seconds: float = 8.0,
    rounds: int = 3,
    version: str = "",
) -> str:
    """The whole ``covidct bench replicas`` command; returns its Markdown section."""
    pngs = real_pngs(real_data_dir())[:16]
    uploads = [Upload(p.name, p.read_bytes(), "image/png") for p in pngs]
    env = {"COVIDCT_MODEL_VERSION": version} if version else {}
    models: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        identity = Path(tmp) / "identity"
        spec = identity_repository(identity)
        plan: list[tuple[str, Path, dict[str, str]]] = [
            (f"identity model (S={spec.image_size})", identity, {})
        ]
        if repository is not None:
            plan.append((_model_label(repository, version), repository, env))
        for i, (label, repo, model_env) in enumerate(plan):
            work = Path(tmp) / f"run{i}"
            work.mkdir()
            rows, failover = _measure(
                repo, work, replicas, uploads, concurrency, seconds, rounds, model_env
            )
            models[label] = {"rows": rows, "failover": failover}
    section = replicas_markdown(models, concurrency, seconds, rounds)
    save(out, "replicas", section, {"models": models, "concurrency": concurrency})
    return section


def replicas_markdown(
    models: dict[str, dict[str, Any]], concurrency: int, seconds: float, rounds: int
) -> str:
    """The BENCHMARKS.md section: per model, a row per replica count, then the failovers."""
    lines = [
        "## covidct bench replicas (one gateway over 1, 2, 3 Triton replicas)",
        "",
        f"Three tritonservers on one repository, one gateway process per topology balancing "
        f"over the first 1, 2 or 3 (least outstanding requests); {concurrency} connections "
        f"upload real 512² PNG slices for {seconds:g} s per row, the topologies interleaved "
        f"over {rounds} rounds (median shown, every round in the last column). All share "
        f"this machine's {os.cpu_count()} cores: with fewer cores than replicas this shows "
        "what balancing costs, not scaling; on one GPU per replica each adds its GPU.",
        "",
        "| model | replicas | uploads/s | vs 1 replica | p50 ms | p99 ms | failed | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, figures in models.items():
        base = figures["rows"][0]["uploads_per_s"] or 1.0
        for r in figures["rows"]:
            lines.append(
                f"| {label} | {r['replicas']} | {r['uploads_per_s']:.1f} | "
                f"{r['uploads_per_s'] / base:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['failures']} | {', '.join(f'{x:.1f}' for x in r['rounds'])} |"
            )
    lines += [
        "",
        "Failover: under the same load on the 3-replica gateway, one tritonserver is killed "
        "(SIGKILL) a third into the window and started again on its ports.",
        "",
        "| model | window s | requests | uploads/s | p99 ms | failed | restart s | "
        "readmitted after s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, figures in models.items():
        f = figures["failover"]
        if not f:
            continue
        readmitted = f"{f['readmitted_s']:.1f}" if f["readmitted"] else "not in 30 s"
        lines.append(
            f"| {label} | {f['window_s']:.0f} | {f['requests']} | {f['uploads_per_s']:.1f} | "
            f"{f['p99_ms']:.0f} | "
            f"{f['failures']} | {f['restart_s']:.1f} | {readmitted} |"
        )
    return "\n".join(lines) + "\n"
