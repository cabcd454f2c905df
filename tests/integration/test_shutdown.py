"""Stopping: tritonserver never outlives what started it; SIGTERM to `covidct serve` stops the
gateway, then Triton, and exits 0 with nothing left running."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.corpus import real_pngs
from serving.server import free_port
from tests.waiting import poll

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and _alive(int(proc.name)):
                found.append(int(proc.name))
    return found


def _listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:port (a closed port in TIME_WAIT does not)."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Serve:
    """A `covidct serve` started on a copy of a model repository, with free ports."""

    process: subprocess.Popen[str]
    models: Path
    port: int
    grpc: int
    http: int
    metrics: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_serve(
    repository: Path, tmp_path: Path, env: dict[str, str] | None = None, *extra: str
) -> Serve:
    models = tmp_path / "models"
    shutil.copytree(repository, models)
    port, grpc, http, metrics = (free_port() for _ in range(4))
    ports = ["--port", port, "--grpc-port", grpc, "--http-port", http, "--metrics-port", metrics]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--repository",
            str(models),
            *map(str, ports),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )
    return Serve(process, models, port, grpc, http, metrics)


@pytest.mark.integration
def test_tritonserver_dies_with_a_parent_killed_by_sigkill(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    ports = [free_port() for _ in range(3)]
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from serving.server import TritonServer\n"
        f"s = TritonServer(Path({str(tmp_path / 'models')!r}), *{ports!r})\n"
        "s.start()\n"
        "print(s.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert parent.stdout is not None
        triton_pid = int(parent.stdout.readline())
        assert _alive(triton_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        assert poll(lambda: not _alive(triton_pid), 15), "tritonserver outlived its parent"
        assert poll(lambda: not any(_listening(p) for p in ports), 15)
    finally:
        parent.kill()


@pytest.mark.integration
@pytest.mark.xdist_group("ci-run")
def test_sigterm_to_covidct_serve_drains_then_stops_gateway_and_triton(
    repository: Path, tmp_path: Path, real_data: Path
) -> None:
    """SIGTERM with studies in flight: every one is answered 200 (none cut), then the gateway
    and Triton stop, the command exits 0 and nothing it started is left running."""
    serve = start_serve(repository, tmp_path)
    proc, models, url = serve.process, serve.models, serve.url
    port, grpc, http, metrics = serve.port, serve.grpc, serve.http, serve.metrics
    pngs = (real_pngs(real_data) * 4)[:16]  # the fixtures hold five: repeated
    study = [("files", (p.name, p.read_bytes())) for p in pngs]
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert poll(ready, 180), "covidct serve did not become ready"
        assert _processes_mentioning(str(models)), "no tritonserver serving the copy"
        answers: list[int | str] = []

        def send() -> None:
            try:
                r = httpx.post(f"{url}/v1/predict/study", files=study, timeout=120)
                answers.append(r.status_code)
            except httpx.HTTPError as e:
                answers.append(type(e).__name__)

        senders = [threading.Thread(target=send) for _ in range(4)]
        for s in senders:
            s.start()
        time.sleep(0.3)  # the studies are being read, preprocessed and inferred
        in_flight = len(senders) - len(answers)
        proc.send_signal(signal.SIGTERM)
        for s in senders:
            s.join(timeout=150)
        out, _ = proc.communicate(timeout=90)
        assert in_flight > 0, "every study was answered before SIGTERM: nothing was drained"
        assert answers == [200] * 4, (answers, out[-3000:])
        assert proc.returncode == 0, out[-3000:]
        assert "stopped" in out
        assert poll(lambda: not _processes_mentioning(str(models)), 15), "tritonserver survived"
        assert not any(_listening(p) for p in (port, grpc, http, metrics))
    finally:
        if proc.poll() is None:
            proc.kill()
