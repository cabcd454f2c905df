"""``covidct bench capacity``: the gateway's own ceiling, with a model that costs nothing.

An identity model (``bench/identity/model.py``) is served by a real tritonserver under the
ModelSpec's tensor names; the gateway runs under uvicorn with 1..N worker processes; the
bounded load generator uploads real 512² PNG slices. Throughput per gateway core is uploads
divided by the CPU seconds the gateway processes spent (read from /proc), since the
gateway shares the cores with Triton and the load generator.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.client import Upload, load_level
from bench.corpus import real_data_dir, real_pngs
from bench.profiling import profile_summary, py_spy
from bench.sweep import BenchError, save
from covidct.addresses import LOCALHOST
from covidct.config import DEFAULT_IMAGE_SIZE, ModelSpec, Provenance
from covidct.preprocessing import preprocess_bytes, python_references
from export.tritonconfig import TritonOptions, render_config
from gateway.protocol import UVICORN_ARGS
from serving.server import TritonError, TritonServer, free_port

IDENTITY_MODEL = Path(__file__).parent / "identity" / "model.py"
CAM_HW = (7, 7)


def identity_repository(root: Path, size: int = DEFAULT_IMAGE_SIZE) -> ModelSpec:
    """A repository serving the identity model as ``covidct`` (input S x S)."""
    spec = ModelSpec(
        image_size=size,
        backbone="identity",
        provenance=Provenance(synthetic=True, source_run="covidct bench capacity: no model"),
    )
    model = root / spec.name
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(IDENTITY_MODEL.read_text())
    (model / "labels.txt").write_text("\n".join(spec.class_names) + "\n")
    serving = TritonOptions(max_batch_size=32, max_queue_delay_us=500)
    (model / "config.pbtxt").write_text(render_config(spec, serving, CAM_HW))
    return spec


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"gateway exited ({process.returncode}) before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(f"gateway at {url} not ready after {timeout:.0f} s")


def gateway_process(
    triton_grpc: str, port: int, workers: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """uvicorn running the gateway app factory with ``workers`` processes on loopback."""
    full_env = {
        **os.environ,
        "COVIDCT_TRITON_URL": triton_grpc,
        "COVIDCT_MAX_IN_FLIGHT": "256",
        "COVIDCT_API_KEY": "",
        **(env or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "gateway.app:create_app",
        "--factory",
        "--host",
        LOCALHOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
        *UVICORN_ARGS,
    ]
    with log.open("wb") as f:
        return subprocess.Popen(cmd, env=full_env, stdout=f, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def running_triton(
    repository: Path, log: Path, env: dict[str, str] | None = None
) -> Iterator[TritonServer]:
    """A tritonserver on ``repository`` (loopback, free ports) for the length of a block."""
    try:
        server = TritonServer(
            repository, free_port(), free_port(), free_port(), log_file=log, env=env or {}
        ).start()
    except TritonError as e:
        raise BenchError(str(e)) from e
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_gateway(
    servers: TritonServer | Sequence[TritonServer],
    workers: int,
    log: Path,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The gateway in front of ``servers`` (several: it balances over them), ready, for the
    length of a block: (URL, process)."""
    servers = [servers] if isinstance(servers, TritonServer) else servers
    addresses = ",".join(s.grpc_address for s in servers)
    port = free_port()
    proc = gateway_process(addresses, port, workers, log, env)
    try:
        url = f"http://{LOCALHOST}:{port}"
        _wait_ready(url, proc)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


#: The setting that moves small grey PNGs' preprocessing to the worker threads (the design
#: before the event-loop path): measured beside the default at one worker.
THREADS_ENV = {"COVIDCT_PREPROCESS_INLINE_PIXELS": "0"}
#: Interleaved rounds of :func:`preprocessing_costs`.
COST_ROUNDS = 7


def preprocessing_costs(
    pngs: Sequence[bytes], rounds: int = COST_ROUNDS, size: int = DEFAULT_IMAGE_SIZE
) -> dict[str, float]:
    """Milliseconds to preprocess one real slice to ``size``² on one core, compiled kernels vs
    the Python references, interleaved round by round; the median round of each."""
    times: dict[str, list[float]] = {"compiled kernels": [], "Python references": []}
    for _ in range(rounds):
        for name in times:
            with contextlib.ExitStack() as stack:
                if name == "Python references":
                    stack.enter_context(python_references())
                started = time.perf_counter()
                for data in pngs:
                    preprocess_bytes(data, size)
                times[name].append((time.perf_counter() - started) * 1000 / len(pngs))
    return {name: statistics.median(ms) for name, ms in times.items()}


def _capacity_row(
    server: TritonServer,
    uploads: Sequence[Upload],
    workers: int,
    threads: bool,
    concurrency: int,
    seconds: float,
    requests: int,
    log: Path,
    spy_to: Path | None,
) -> dict[str, Any]:
    assert server.process is not None
    env = THREADS_ENV if threads else None
    with running_gateway(server, workers, log, env) as (url, proc):
        load_level(url, uploads, concurrency, 200, 10)  # warm every worker
        gw0, tr0 = cpu_seconds(proc.pid), cpu_seconds(server.process.pid)
        spy = py_spy(proc.pid, seconds - 1, spy_to) if spy_to is not None else None
        client0, wall0 = time.process_time(), time.perf_counter()
        result = load_level(url, uploads, concurrency, requests, seconds)
        wall = time.perf_counter() - wall0
        if spy is not None:  # sampled for seconds - 1: finished by now or soon
            spy.wait(timeout=60)
        gw = cpu_seconds(proc.pid) - gw0
        tr = cpu_seconds(server.process.pid) - tr0
        client = time.process_time() - client0
    done = round(result.row.throughput * wall)
    return {
        "workers": workers,
        "preprocessing": "worker threads" if threads else "event loop",
        "uploads": done,
        "failures": result.failures,
        "uploads_per_s": result.row.throughput,
        "p50_ms": result.row.p50 / 1000,
        "p99_ms": result.row.p99 / 1000,
        "gateway_cpu_s": gw,
        "triton_cpu_s": tr,
        "client_cpu_s": client,
        "wall_s": wall,
        "per_gateway_core": done / gw if gw else 0.0,
    }


def run_capacity_bench(
    out: Path,
    workers: Sequence[int] = (1, 2),
    concurrency: int = 16,
    seconds: float = 15.0,
    requests: int = 20000,
    profile: bool = False,
) -> str:
    """The whole ``covidct bench capacity`` command; returns its Markdown section.

    Rows: each worker count as configured (small PNGs preprocessed on the event loop), and
    right after the first, the same worker count with preprocessing in the worker threads.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.txt").unlink(missing_ok=True)
    pngs = real_pngs(real_data_dir())[:16]
    uploads = [Upload(p.name, p.read_bytes(), "image/png") for p in pngs]
    configs = [(n, False) for n in workers]
    configs.insert(1, (workers[0], True))
    spy_to = out / "profile.txt" if profile else None
    spec, rows = measure_capacity(uploads, configs, concurrency, seconds, requests, spy_to)
    costs = preprocessing_costs([u.body for u in uploads], size=spec.image_size)
    shares = profile_summary(out / "profile.txt") if (out / "profile.txt").is_file() else {}
    section = capacity_markdown(spec, rows, costs, shares, len(uploads), concurrency, seconds)
    save(
        out,
        "capacity",
        section,
        {
            "rows": rows,
            "concurrency": concurrency,
            "seconds": seconds,
            "profile": shares,
            "preprocessing_ms": costs,
        },
    )
    return section


def measure_capacity(
    uploads: Sequence[Upload],
    configs: Sequence[tuple[int, bool]],
    concurrency: int,
    seconds: float,
    requests: int,
    spy_to: Path | None,
) -> tuple[ModelSpec, list[dict[str, Any]]]:
    """One row per (workers, preprocessing in threads) configuration, all in front of one
    identity-model tritonserver; the first row is profiled into ``spy_to`` when given."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        spec = identity_repository(repo)
        with running_triton(repo, Path(tmp) / "triton.log") as server:
            for i, (n, threads) in enumerate(configs):
                log = Path(tmp) / f"gateway{i}.log"
                spy = spy_to if i == 0 else None
                rows.append(
                    _capacity_row(
                        server, uploads, n, threads, concurrency, seconds, requests, log, spy
                    )
                )
    return spec, rows


def capacity_markdown(
    spec: ModelSpec,
    rows: Sequence[dict[str, Any]],
    costs: dict[str, float],
    shares: dict[str, float],
    slices: int,
    concurrency: int,
    seconds: float,
) -> str:
    """The BENCHMARKS.md section: one row per configuration, the preprocessing cost per
    slice, and where a worker's busy time goes when it was profiled."""
    lines = [
        f"## covidct bench capacity (identity model, S={spec.image_size})",
        "",
        f"The gateway alone: an identity model in a real tritonserver, uvicorn with N worker "
        f"processes, {concurrency} kept-alive connections uploading {slices} real 512² "
        f"PNG slices in turn for {seconds:g} s per row. 'Per gateway core' is uploads divided "
        "by the CPU seconds of the gateway processes (from /proc); Triton and the load "
        f"generator share the same {os.cpu_count()} cores. 'Preprocessing' says where a "
        "slice is preprocessed: on the event loop (the default for 8-bit grey PNGs up to 512², "
        "`COVIDCT_PREPROCESS_INLINE_PIXELS`) or handed to the worker threads (the setting at 0).",
        "",
        "| workers | preprocessing | uploads/s | p50 ms | p99 ms | failed | gateway CPU s | "
        "Triton CPU s | client CPU s | uploads per gateway core-s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['preprocessing']} | {r['uploads_per_s']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['failures']} | "
            f"{r['gateway_cpu_s']:.1f} | {r['triton_cpu_s']:.1f} | {r['client_cpu_s']:.1f} | "
            f"{r['per_gateway_core']:.0f} |"
        )
    kernels, references = costs["compiled kernels"], costs["Python references"]
    lines += [
        "",
        f"Preprocessing one real slice on one core, in the bench process (median of "
        f"{COST_ROUNDS} interleaved rounds over the same {slices} slices): compiled kernels "
        f"{kernels:.2f} ms, Python references {references:.2f} ms "
        f"({references / kernels:.2f}x; identical model inputs, tests compare them).",
        "",
    ]
    if shares:
        lines += [
            "Where one gateway worker's busy time goes (py-spy, 200 samples/s, all threads, "
            "idle waits excluded): "
            + "; ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items())
            + ".",
            "",
        ]
    return "\n".join(lines)
