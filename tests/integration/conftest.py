"""Session fixtures shared by the integration tests: one export, one real tritonserver, one
gateway in front of it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from covidct.samples import reference_slices
from gateway.app import create_app
from gateway.protocol import UVICORN_OPTIONS
from gateway.settings import GatewaySettings
from gateway.triton import Backend
from serving.server import TritonServer, free_port
from tests.wheel import InstalledWheel


@pytest.fixture(scope="session")
def repository(
    ci_run: Path, tmp_path_factory: pytest.TempPathFactory, installed_wheel: InstalledWheel
) -> Path:
    """The session's one export, made by the installed wheel outside the checkout: its
    parity check runs on the real slices packaged with covidct."""
    repo = tmp_path_factory.mktemp("served") / "models"
    result = installed_wheel.run("export", "--run", ci_run, "--repository", repo, "--target", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads(result.stdout.strip().splitlines()[-1])
    assert manifest["version"] == 1
    assert manifest["parity"]["probabilities_max_abs_diff"] <= 1e-4
    packaged = [s.name for s in reference_slices()]
    assert [Path(f).name for f in manifest["parity"]["slice_files"]] == packaged
    return repo


@pytest.fixture(scope="session")
def server(repository: Path):
    srv = TritonServer(
        repository,
        free_port(),
        free_port(),
        free_port(),
        model_control="poll",
        poll_seconds=1,
        log_file=repository.parent / "triton.log",
    )
    with srv:
        yield srv


@contextmanager
def running_gateway(
    settings: GatewaySettings, backend_factory: Callable[[GatewaySettings], Backend] | None = None
) -> Iterator[str]:
    """A real gateway (uvicorn on 127.0.0.1 as it is served, in a thread) with ``settings``
    (and a fake Triton from ``backend_factory`` if given); yields its URL."""
    import uvicorn

    port = free_port()
    app = create_app(settings, backend_factory)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", **UVICORN_OPTIONS
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def gateway_url(server):
    """The real gateway in front of ``server``."""
    with running_gateway(GatewaySettings(triton_url=f"127.0.0.1:{server.grpc_port}")) as url:
        yield url
