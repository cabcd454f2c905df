"""``covidct serve`` (``make serve``): Triton and the gateway on this machine, demo if needed.

When the repository holds no model, a demo one is built first (synthetic CT, a short
DenseNet201 training, CPU export) in subprocesses, so this process never imports TensorFlow.
Each phase prints one line, then the child's own progress (Keras' epochs); TensorFlow's
start-up chatter is filtered out of the child's stderr, everything else is shown. The demo
model is marked synthetic in its card and in every answer.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from covidct.addresses import host_port
from covidct.errors import CovidctError

if TYPE_CHECKING:
    from serving.server import TritonServer

log = logging.getLogger(__name__)

DEMO_PATIENTS, DEMO_SLICES_PER_PATIENT = 60, 4
DEMO_BACKBONE, DEMO_IMAGE_SIZE, DEMO_EPOCHS = "densenet201", 128, 4
DEMO_SYNTH = [
    "--patients",
    str(DEMO_PATIENTS),
    "--slices-per-patient",
    str(DEMO_SLICES_PER_PATIENT),
    "--seed",
    "1",
]
DEMO_TRAIN = [
    "--backbone",
    DEMO_BACKBONE,
    "--image-size",
    str(DEMO_IMAGE_SIZE),
    "--epochs",
    str(DEMO_EPOCHS),
    "--weights",
    "none",
    "--batch-size",
    "16",
    "--patience",
    str(DEMO_EPOCHS),
]

#: Lines TensorFlow and Keras print on every start that report no error, hidden from the demo
#: build: absl's note before its logging is set up, its INFO and WARNING lines (oneDNN, CPU
#: features) with the CPU-feature note's second line, TensorFlow's Python INFO lines, and one
#: ERROR line that is not one: the tf.data graph Keras builds names an attribute
#: (``use_unbounded_threadpool``) the installed runtime's op definition lacks, and TensorFlow
#: goes on without it (training and export complete as usual). Blank lines too (a progress
#: bar's trace, as the child's stderr is no terminal). Any other line is shown.
HARMLESS = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler"
    r"|E\d{4} [\d:.]+ +\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute "
    r"use_unbounded_threadpool which is not in the op definition"
    r"|INFO (tensorflow|absl): "
    r"|\s*$"
)
#: Keras warns on every ``fit`` over a tf.data pipeline (already shuffled) that ``shuffle=True``
#: is ignored; hidden in the child as a Python warning filter (it takes two lines).
KERAS_SHUFFLE_WARNING = "ignore:`shuffle=True` was passed:UserWarning"
#: Lines of a failed child's stderr shown again, unfiltered, with the error.
TAIL_LINES = 25


class DemoBuildError(CovidctError):
    """A phase of the demo build failed; its last lines were printed before the message."""


def is_harmless(line: str) -> bool:
    """Whether a line of a TensorFlow child's stderr is start-up chatter (``HARMLESS``)."""
    return HARMLESS.match(line) is not None


def has_model(repository: Path) -> bool:
    """True when some model folder has a config and at least one numeric version."""
    if not repository.is_dir():
        return False
    return any(
        (m / "config.pbtxt").is_file() and any(v.is_dir() and v.name.isdigit() for v in m.iterdir())
        for m in repository.iterdir()
        if m.is_dir()
    )


def child_env() -> dict[str, str]:
    """This environment, with TensorFlow's C++ INFO and WARNING lines off (once its logging is
    set up: ``HARMLESS`` catches the ones before) and Keras' shuffle warning filtered."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONWARNINGS"] = ",".join(
        w for w in (env.get("PYTHONWARNINGS"), KERAS_SHUFFLE_WARNING) if w
    )
    return env


def run_phase(title: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
    """One phase of the demo build: ``title``, then the child's stdout as it comes and its
    stderr without the harmless lines.

    Raises:
        DemoBuildError: the child failed; its last stderr lines (unfiltered) were printed.
    """
    print(title, flush=True)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace", env=env) as p:
        assert p.stderr is not None
        for line in p.stderr:
            tail.append(line)
            if not is_harmless(line):
                sys.stderr.write(line)
                sys.stderr.flush()
    if p.returncode != 0:
        sys.stderr.write(f"--- its last {len(tail)} lines, unfiltered ---\n{''.join(tail)}")
        raise DemoBuildError(
            f"building the demo model failed at {title!r} (exit {p.returncode}): "
            "its last lines are above"
        )


def _covidct(title: str, *args: str | Path) -> None:
    log.debug("running: covidct %s", " ".join(map(str, args)))
    run_phase(title, [sys.executable, "-m", "cli", *map(str, args)], child_env())


def build_demo(repository: Path, work: Path) -> None:
    """Synthetic data -> short DenseNet201 run -> CPU export into ``repository``; a phase
    already done (by an interrupted build) is skipped, an interrupted training resumed."""
    data, run = work / "data", work / "run"
    if not (data / "train_COVIDx-CT.txt").is_file():
        slices = DEMO_PATIENTS * DEMO_SLICES_PER_PATIENT
        _covidct(
            f"demo 1/3: synthetic CT, {slices} slices", "data", "synth", "--out", data, *DEMO_SYNTH
        )
    if not (run / "saved_model" / "saved_model.pb").is_file():
        resume = ["--resume"] if (run / "train_config.json").is_file() else []
        title = f"demo 2/3: training {DEMO_BACKBONE} {DEMO_IMAGE_SIZE}², {DEMO_EPOCHS} epochs"
        _covidct(title, "train", "--data", data, "--out", run, *DEMO_TRAIN, *resume)
    _covidct(
        "demo 3/3: export to the CPU target, with its parity check",
        "export",
        "--run",
        run,
        "--repository",
        repository,
        "--target",
        "cpu",
    )


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
    (``gateway.fleet``, a fresh one per run) so all serve one version and switch together.

    Raises:
        DemoBuildError: the repository held no model and building the demo one failed.
        TritonError: a tritonserver did not start.
    """
    from serving.server import Supervisor

    if not has_model(repository):
        print(
            f"{repository} holds no model: building a demo one (synthetic data, short "
            f"{DEMO_BACKBONE} training; several minutes on 2 cores)",
            flush=True,
        )
        build_demo(repository, demo_dir)
    servers = _tritons(repository, grpc_port, http_port, metrics_port, triton_replicas)
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
        _say_ready(servers, addresses, f"http://{host_port(host, port)}", workers)
        _run_gateway(addresses, host, port, workers)
    except SystemExit as e:
        if e.code != 0:
            raise
    finally:
        for supervisor in supervisors:
            supervisor.stop()  # then its Triton
        signal.signal(signal.SIGTERM, previous)
        print("stopped", flush=True)


def _tritons(
    repository: Path, grpc_port: int, http_port: int, metrics_port: int, replicas: int
) -> list[TritonServer]:
    """The tritonservers to start: replica i on the ports + 10 x i, each with its own log."""
    from serving.server import TritonServer

    return [
        TritonServer(
            repository,
            grpc_port + 10 * i,
            http_port + 10 * i,
            metrics_port + 10 * i,
            model_control="explicit",  # versions change only through covidct redeploy/rollback
            log_file=repository.parent
            / ("tritonserver.log" if i == 0 else f"tritonserver-{i}.log"),
        )
        for i in range(replicas)
    ]


def _say_ready(servers: list[TritonServer], addresses: str, url: str, workers: int) -> None:
    """Where everything listens, and a first request to try."""
    logs = ", ".join(str(server.log_file) for server in servers)
    gateways = f"{workers} processes" if workers > 1 else "one process"
    print(
        f"gateway: {url}/  (page; {gateways})\n"
        f"try:     curl -F file=@slice.png {url}/v1/predict\n"
        f"Triton:  gRPC {addresses}, log {logs}\n"
        "Ctrl-C or SIGTERM stops both.",
        flush=True,
    )


def _run_gateway(addresses: str, host: str, port: int, workers: int) -> None:
    """The gateway over ``addresses`` until stopped: in this process, or ``workers`` uvicorn
    worker processes sharing one serving folder."""
    import uvicorn

    from gateway.app import create_app
    from gateway.protocol import GRACE_S, UVICORN_OPTIONS
    from gateway.settings import GatewaySettings

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
        return
    # each worker is a fresh interpreter: it builds its app from the environment
    with tempfile.TemporaryDirectory(prefix="covidct-serving-") as shared:
        os.environ.update(COVIDCT_TRITON_URL=addresses, COVIDCT_SERVING_DIR=shared)
        uvicorn.run("gateway.app:create_app", factory=True, workers=workers, **options)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def default_demo_dir() -> Path:
    """Where the demo build keeps its data and run (``COVIDCT_DEMO_DIR``, else runs/demo)."""
    return Path(os.environ.get("COVIDCT_DEMO_DIR", "runs/demo"))
