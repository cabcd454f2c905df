"""The tritonserver launcher's pure parts: where it listens, where it logs, its two entry
points (``covidct triton`` and ``python -m serving``, the CPU Triton image's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.server import STDOUT, TritonServer
from tests.waiting import poll, wait_for


@pytest.mark.parametrize(
    ("address", "url_host"),
    [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::1", "[::1]")],
)
def test_every_endpoint_listens_on_the_address(address: str, url_host: str) -> None:
    server = TritonServer(Path("/models"), 1, 2, 3, address=address)
    command = server.command()
    for endpoint in ("grpc", "http", "metrics"):
        assert f"--{endpoint}-address={address}" in command
    assert server.url == f"http://{url_host}:2"
    assert server.grpc_address == f"{url_host}:1"


def test_serving_needs_only_what_the_cpu_triton_image_copies(tmp_path: Path) -> None:
    """deploy/triton-cpu/Dockerfile copies serving/ and three core modules, nothing else."""
    import shutil

    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "serving", tmp_path / "serving")
    (tmp_path / "covidct").mkdir()
    for name in ("__init__.py", "errors.py", "addresses.py"):
        shutil.copy(root / "covidct" / name, tmp_path / "covidct" / name)
    dockerfile = (root / "deploy" / "triton-cpu" / "Dockerfile").read_text()
    assert "COPY covidct/__init__.py covidct/errors.py covidct/addresses.py" in dockerfile
    code = "import serving.server, serving.__main__; print(serving.server.TritonError.__mro__[1])"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, '.'); {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "CovidctError" in result.stdout


def test_a_server_logging_to_stdout_points_there_for_its_reason() -> None:
    server = TritonServer(Path("/models"), log_file=STDOUT)
    assert server.failure_reason() == "see the server's output above"


def test_python_m_serving_says_why_it_cannot_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--repository", tmp_path / "absent", "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"error: model repository {tmp_path / 'absent'} does not exist" in result.stdout


ECHO_CONFIG = """name: "echo"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

ECHO_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]
            )
            for r in requests
        ]
"""


def _group(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid`` (zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


@pytest.mark.parametrize("finish", ["reap_group", "stop"])
def test_what_a_killed_server_leaves_in_its_group_is_killed(finish: str) -> None:
    """A child that does not notice its parent's death (here a shell's background sleep,
    standing for a hung backend stub) is killed by ``reap_group``, and by ``stop()``."""
    import os
    import signal

    server = TritonServer(Path("/models"))
    server.process = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], start_new_session=True)
    leader = server.process.pid
    wait_for(lambda: len(_group(leader)) == 2, timeout=10)
    os.kill(leader, signal.SIGKILL)
    server.process.wait()
    assert len(_group(leader)) == 1  # the orphan
    getattr(server, finish)()
    wait_for(lambda: _group(leader) == [], timeout=10)


@pytest.mark.integration
def test_a_restarted_server_is_stopped_gracefully_not_killed(tmp_path: Path) -> None:
    """The supervisor's watcher thread is the parent-death anchor of the servers it restarts:
    stop() must SIGTERM such a server (exit 0) before the thread ends, not leave the thread's
    end to SIGKILL it. A server killed with SIGKILL leaves nothing behind: its Python backend
    stub (a process of its group that the dead server cannot stop) is killed before the
    restart."""
    import os
    import signal

    from serving.server import Supervisor, free_port

    (tmp_path / "models" / "echo" / "1").mkdir(parents=True)
    (tmp_path / "models" / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (tmp_path / "models" / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    server = TritonServer(
        tmp_path / "models", free_port(), free_port(), free_port(), log_file=tmp_path / "t.log"
    )
    supervisor = Supervisor(server, first_backoff_s=0.1)
    server.start()
    supervisor.start()
    try:
        assert server.process is not None
        first = server.process.pid
        assert len(_group(first)) >= 2, "no Python backend stub beside the server"
        os.kill(first, signal.SIGKILL)
        poll(lambda: supervisor.restarts >= 1, 60)
        assert supervisor.restarts == 1 and server.process.pid != first
        assert _group(first) == [], "the killed server's stub outlived it"
        second = server.process.pid
        assert server.model_ready("echo")
    finally:
        supervisor.stop()
    assert server.process.returncode == 0, f"restarted server ended by {server.process.returncode}"
    assert _group(second) == [], "the stopped server left processes behind"


def test_free_port_never_names_a_recent_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may give a just-closed port out again at once (a composed stack once got
    the same port for Triton's HTTP and the node's HTTP): ``free_port`` asks again."""
    import collections
    import types

    import serving.server as server_module

    given = iter([41000, 41001, 41000, 41000, 41002])

    class Socket:
        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(given)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(server_module, "socket", types.SimpleNamespace(socket=Socket))
    monkeypatch.setattr(server_module, "_recent_ports", collections.deque(maxlen=1024))
    ports = [server_module.free_port() for _ in range(3)]
    assert ports == [41000, 41001, 41002]
