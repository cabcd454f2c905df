"""Session fixtures shared by the integration tests: one export, one real tritonserver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.server import TritonServer, free_port
from tests.cli_helpers import covidct


@pytest.fixture(scope="session")
def repository(ci_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("served") / "models"
    result = covidct("export", "--run", ci_run, "--repository", repo, "--target", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads(result.stdout.strip().splitlines()[-1])
    assert manifest["version"] == 1
    assert manifest["parity"]["probabilities_max_abs_diff"] <= 1e-4
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
