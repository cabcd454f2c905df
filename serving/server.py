"""``covidct triton``: the real tritonserver (from the nvidia-pytriton wheel) on this machine.

Prepares what the binary needs (the Python backend stub in the backend folder, the wheel's
libraries and this interpreter's libpython on LD_LIBRARY_PATH, the venv's site-packages for
the backend's ``model.py``), starts it bound to 127.0.0.1, waits until it is ready or says why
not (port in use, a model that failed to load: the server's own reason), logs to a file
(or to its own stdout, in a container), and stops it cleanly. ``python -m serving`` runs the
same thing where the covidct command line is not installed (the CPU Triton image).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidct.addresses import (
    LOCALHOST,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    host_port,
)
from covidct.errors import CovidctError

MODEL_CONTROL = ("explicit", "poll", "none")
_log = logging.getLogger(__name__)


class TritonError(CovidctError, RuntimeError):
    """The server could not start or become ready; the message carries its reason."""


def pytriton_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


def prepare_backends() -> Path:
    """Put the Python 3.11 stub where the Python backend looks for it; return backends dir."""
    root = pytriton_dir()
    stub = root / "backends" / "python" / "triton_python_backend_stub"
    if not stub.is_file():
        shutil.copy(root / "python_backend_stubs" / "3.11" / "triton_python_backend_stub", stub)
        stub.chmod(0o755)
    return root / "backends"


def server_env() -> dict[str, str]:
    site = sysconfig.get_paths()["purelib"]
    libs = [str(Path(site) / "nvidia_pytriton.libs"), str(sysconfig.get_config_var("LIBDIR"))]
    old = os.environ.get("LD_LIBRARY_PATH")
    return {
        **os.environ,
        "LD_LIBRARY_PATH": ":".join([*libs, *([old] if old else [])]),
        "COVIDCT_SITE_PACKAGES": site,
    }


_recent_ports: collections.deque[int] = collections.deque(maxlen=1024)
_recent_ports_lock = threading.Lock()


def free_port() -> int:
    """A port free on 127.0.0.1 now, and none of the last 1,024 this process was given.

    The kernel may hand a just-closed port out again at once, so several calls in a row (the
    ports of one Triton, one composed stack) could otherwise name the same port twice.
    """
    with _recent_ports_lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _recent_ports:
                _recent_ports.append(port)
                return port


def port_in_use(port: int, address: str = "127.0.0.1") -> bool:
    """Something holds ``port`` on ``address``. SO_REUSEADDR as Triton binds: the connections
    a killed server leaves in TIME_WAIT do not count, a listener does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    """In the child before exec: Linux sends it SIGKILL when the parent dies, however it dies
    (SIGKILL included), so a tritonserver never outlives the process that started it."""
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


#: ``log_file`` value that leaves the server's output on this process's stdout (containers).
STDOUT = Path("-")


@dataclass
class TritonServer:
    """One tritonserver process. Use as a context manager, or start()/stop().

    ``address`` is where its three endpoints listen: 127.0.0.1 for local runs and tests,
    0.0.0.0 only inside a container whose ports the deployment publishes.
    """

    repository: Path
    grpc_port: int = TRITON_GRPC_PORT
    http_port: int = TRITON_HTTP_PORT
    metrics_port: int = TRITON_METRICS_PORT
    model_control: str = "none"
    models: list[str] = field(default_factory=list)
    log_file: Path | None = None
    poll_seconds: int = 2
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment
    process: subprocess.Popen[bytes] | None = None
    address: str = LOCALHOST

    def command(self) -> list[str]:
        cmd = [
            str(pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={prepare_backends()}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--log-verbose=0",
        ]
        if self.model_control == "explicit":
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={m}" for m in self.models] or ["--load-model=*"]
        elif self.model_control == "poll":
            cmd += ["--model-control-mode=poll", f"--repository-poll-secs={self.poll_seconds}"]
        return cmd

    @property
    def url(self) -> str:
        """The HTTP endpoint a client on this host reaches."""
        return f"http://{host_port(self.address, self.http_port)}"

    @property
    def grpc_address(self) -> str:
        """``HOST:PORT`` of the gRPC endpoint (what the gateway and tritonclient take)."""
        return host_port(self.address, self.grpc_port)

    def start(self, timeout: float = 120.0) -> TritonServer:
        if self.model_control not in MODEL_CONTROL:
            raise TritonError(f"--model-control must be one of {', '.join(MODEL_CONTROL)}")
        if not self.repository.is_dir():
            raise TritonError(f"model repository {self.repository} does not exist")
        for name, port in (
            ("gRPC", self.grpc_port),
            ("HTTP", self.http_port),
            ("metrics", self.metrics_port),
        ):
            if port_in_use(port, self.address):
                raise TritonError(f"{name} port {port} on {self.address} is already in use")
        self.log_file = self.log_file or self.repository.parent / "tritonserver.log"
        if self.log_file == STDOUT:
            log = None
        else:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_file.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            env={**server_env(), **self.env},
            start_new_session=True,
            # The parent-death signal follows the starting thread: start servers from the
            # main thread (or one that lives as long as the server).
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        if log is not None:
            log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonError(
                    f"tritonserver exited ({self.process.returncode}): {self.failure_reason()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        reason = self.failure_reason()
        self.stop()
        raise TritonError(f"tritonserver not ready after {timeout:.0f} s: {reason}")

    def failure_reason(self) -> str:
        """The server's own words: model load errors first, else the log's last lines."""
        if self.log_file == STDOUT:
            return "see the server's output above"
        if self.log_file is None or not self.log_file.is_file():
            return "no log"
        lines = self.log_file.read_text(errors="replace").splitlines()
        noise = ("NVML", "dcgm", "DCGM", "CudaDriverHelper", "pinned memory")
        errors = [
            ln
            for ln in lines
            if ("failed to load" in ln or ln.startswith("E")) and not any(n in ln for n in noise)
        ]
        picked = errors[-5:] or [ln for ln in lines if ln.strip()][-3:]
        return " | ".join(x.strip()[:300] for x in picked)

    def model_ready(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/models/{name}/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def statistics(self, name: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/v2/models/{name}/stats", timeout=5) as r:
            return dict(json.loads(r.read()))

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # Triton drains in-flight requests
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()  # the rest of its group goes with reap_group
                self.process.wait()
        self.reap_group()

    def reap_group(self) -> None:
        """Kill what the exited server left in its process group. A tritonserver killed with
        SIGKILL cannot stop its Python backend stubs; a stub polls for its parent and exits
        by itself (within 0.5 s here, idle or mid-request), but one that hangs would live on,
        orphaned, holding its shared memory, and a restart must not start beside it. The
        server leads its own group (``start_new_session``), so the group is the server's."""
        if self.process is None or self.process.poll() is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left in it
            os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Supervisor:
    """Keeps one started ``TritonServer`` running: a watcher thread restarts it when it exits
    without being asked to (crash, OOM kill, ``kill -9``), after a backoff that doubles from
    ``first_backoff_s`` up to ``max_backoff_s`` and resets once a server has stayed up for
    ``stable_s``. Every exit and restart is logged with the server's own reason.

    The watcher thread starts the replacements, so it is the parent-death anchor
    (``_die_with_parent``) of every server after the first; it lives until ``stop()``.
    """

    def __init__(
        self,
        server: TritonServer,
        first_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
        ready_timeout_s: float = 120.0,
    ) -> None:
        import threading

        self.server = server
        self.first_backoff_s, self.max_backoff_s = first_backoff_s, max_backoff_s
        self.stable_s, self.ready_timeout_s = stable_s, ready_timeout_s
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def _watch(self) -> None:
        try:
            self._restart_on_exit()
        finally:
            # From this thread: a server it restarted dies with it (parent-death signal), so it
            # is stopped gracefully here, before the thread ends, not killed by its end.
            self.server.stop()

    def _restart_on_exit(self) -> None:
        backoff = self.first_backoff_s
        up_since = time.monotonic()
        while not self._stopping.wait(0.25):
            process = self.server.process
            if process is None or process.poll() is None:
                continue
            self.server.reap_group()
            if time.monotonic() - up_since >= self.stable_s:
                backoff = self.first_backoff_s
            _log.warning(
                "tritonserver exited (code %s): %s; restarting in %.0f s",
                process.returncode,
                self.server.failure_reason(),
                backoff,
            )
            if self._stopping.wait(backoff):
                return
            try:
                self.server.start(self.ready_timeout_s)
            except TritonError as e:
                _log.error("tritonserver restart failed: %s", e)
            else:
                self.restarts += 1
                _log.warning("tritonserver restarted (restart %d)", self.restarts)
            up_since = time.monotonic()
            backoff = min(backoff * 2, self.max_backoff_s)

    def stop(self) -> None:
        """Stop watching and stop the server (a restart under way finishes first); the
        watcher stops it, so that a server it restarted drains instead of being killed."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.ready_timeout_s + 40)
        self.server.stop()  # never started watching, or the join timed out


def run_until_stopped(server: TritonServer, timeout: float, say: Callable[[str], None]) -> int:
    """Start ``server``, report where it listens, and keep it until SIGINT or SIGTERM (then
    stop it: in-flight requests drain). What ``covidct triton`` and ``python -m serving``
    run. Returns 0 when stopped, 1 when the server could not start or exited by itself."""
    try:
        server.start(timeout)
    except TritonError as e:
        say(f"error: {e}")
        return 1
    say(
        f"tritonserver ready on {server.address}: gRPC port {server.grpc_port}, HTTP port "
        f"{server.http_port}, metrics port {server.metrics_port}, log {server.log_file}"
    )

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        assert server.process is not None
        server.process.wait()
        say(f"error: tritonserver exited ({server.process.returncode}): {server.failure_reason()}")
        return 1
    except KeyboardInterrupt:
        server.stop()
        say("tritonserver stopped")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
