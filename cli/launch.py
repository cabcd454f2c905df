"""``covidct serve`` (``make serve``): Triton and the gateway on this machine, demo if needed.

When the repository holds no model, a demo one is built first (synthetic CT, a short
DenseNet201 training, CPU export) in subprocesses, so this process never imports TensorFlow.
The demo model is marked synthetic in its card and in every answer.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_SYNTH = ["--patients", "60", "--slices-per-patient", "4", "--seed", "1"]
DEMO_TRAIN = [
    "--backbone",
    "densenet201",
    "--image-size",
    "128",
    "--epochs",
    "4",
    "--weights",
    "none",
    "--batch-size",
    "16",
    "--patience",
    "4",
]


def has_model(repository: Path) -> bool:
    """True when some model folder has a config and at least one numeric version."""
    if not repository.is_dir():
        return False
    return any(
        (m / "config.pbtxt").is_file() and any(v.is_dir() and v.name.isdigit() for v in m.iterdir())
        for m in repository.iterdir()
        if m.is_dir()
    )


def _covidct(*args: str | Path) -> None:
    cmd = [sys.executable, "-m", "cli", *map(str, args)]
    log.info("running: covidct %s", " ".join(map(str, args)))
    subprocess.run(cmd, check=True)


def build_demo(repository: Path, work: Path) -> None:
    """Synthetic data -> short DenseNet201 run -> CPU export into ``repository``."""
    data, run = work / "data", work / "run"
    if not (data / "train_COVIDx-CT.txt").is_file():
        _covidct("data", "synth", "--out", data, *DEMO_SYNTH)
    if not (run / "saved_model" / "saved_model.pb").is_file():
        resume = ["--resume"] if (run / "train_config.json").is_file() else []
        _covidct("train", "--data", data, "--out", run, *DEMO_TRAIN, *resume)
    _covidct("export", "--run", run, "--repository", repository, "--target", "cpu")


def serve(
    repository: Path,
    host: str,
    port: int,
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    demo_dir: Path,
    triton_replicas: int = 1,
    workers: int = 1,
) -> None:
    """Start Triton, then the gateway in this process; Ctrl-C or SIGTERM stops both, the
    gateway first (requests in flight get ``gateway.protocol.GRACE_S`` to finish), then
    Triton. A Triton that dies meanwhile is restarted (``serving.server.Supervisor``); the
    gateway reconnects.

    ``triton_replicas`` > 1 starts that many tritonservers on the same repository (replica
    i on the given ports + 10 x i) and the gateway balances over them
    (``gateway.replicas``): the scale-out topology on one machine. ``workers`` > 1 runs that
    many gateway processes on the one port (uvicorn workers); they share a serving folder
    (``gateway.fleet``, a fresh one per run) so all serve one version and switch together."""
    import uvicorn

    from gateway.app import create_app
    from gateway.protocol import GRACE_S, UVICORN_OPTIONS
    from gateway.settings import GatewaySettings
    from serving.server import Supervisor, TritonServer

    if not has_model(repository):
        print(
            f"{repository} holds no model: building a demo one (synthetic data, short "
            "DenseNet201 training; several minutes on 2 cores)",
            flush=True,
        )
        build_demo(repository, demo_dir)
    servers = [
        TritonServer(
            repository,
            grpc_port + 10 * i,
            http_port + 10 * i,
            metrics_port + 10 * i,
            model_control="explicit",  # versions change only through covidct redeploy/rollback
            log_file=repository.parent
            / ("tritonserver.log" if i == 0 else f"tritonserver-{i}.log"),
        )
        for i in range(triton_replicas)
    ]
    # SIGTERM (docker, systemd, Kubernetes) ends like Ctrl-C: the gateway drains first, then
    # Triton stops. uvicorn re-raises the signal it caught once it has shut down; without this
    # handler that would kill the process before Triton is stopped, leaving it orphaned.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # a Triton that dies is restarted, with backoff
    supervisors = [Supervisor(server) for server in servers]
    try:
        for server, supervisor in zip(servers, supervisors, strict=True):
            server.start()
            supervisor.start()
        addresses = ",".join(server.grpc_address for server in servers)
        url = f"http://{host}:{port}"
        logs = ", ".join(str(server.log_file) for server in servers)
        gateways = f"{workers} processes" if workers > 1 else "one process"
        print(
            f"gateway: {url}/  (page; {gateways})\n"
            f"try:     curl -F file=@slice.png {url}/v1/predict\n"
            f"Triton:  gRPC {addresses}, log {logs}\n"
            "Ctrl-C or SIGTERM stops both.",
            flush=True,
        )
        options = dict(
            **UVICORN_OPTIONS,
            host=host,
            port=port,
            log_level="info",
            access_log=False,
            timeout_graceful_shutdown=GRACE_S,
        )
        if workers == 1:
            uvicorn.run(create_app(GatewaySettings(triton_url=addresses)), **options)
        else:
            # each worker is a fresh interpreter: it builds its app from the environment
            with tempfile.TemporaryDirectory(prefix="covidct-serving-") as shared:
                os.environ.update(COVIDCT_TRITON_URL=addresses, COVIDCT_SERVING_DIR=shared)
                uvicorn.run("gateway.app:create_app", factory=True, workers=workers, **options)
    except SystemExit as e:
        if e.code != 0:
            raise
    finally:
        for supervisor in supervisors:
            supervisor.stop()  # then its Triton
        signal.signal(signal.SIGTERM, previous)
        print("stopped", flush=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def default_demo_dir() -> Path:
    return Path(os.environ.get("COVIDCT_DEMO_DIR", "runs/demo"))
