"""Shared fixtures: real CT data (../shared/data when present, else the copied fixtures) and
one synthetic COVIDx-CT folder per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings

from bench.corpus import real_data_dir
from tests.cli_helpers import CI_DATA, CI_TRAIN, covidct
from tests.wheel import InstalledWheel, install_wheel

FIXTURES = Path(__file__).parent / "fixtures"

# Property tests: bounded and reproducible in `make test`, long and fresh in `make fuzz`.
settings.register_profile("ci", max_examples=120, derandomize=True)
settings.register_profile("fuzz", max_examples=int(os.environ.get("COVIDCT_FUZZ_EXAMPLES", "5000")))
settings.load_profile("fuzz" if os.environ.get("COVIDCT_FUZZ") else "ci")


def pytest_configure(config: pytest.Config) -> None:
    """One cache root for the whole session (both xdist workers inherit it), never the user's
    ~/.cache/covidct: prepared data and ONNX conversions made by one test are reused by the
    next (export/convcache.py), and nothing outlives the session. A worker sees it set already."""
    if os.environ.get("COVIDCT_CACHE_DIR") or hasattr(config, "workerinput"):
        return
    root = tempfile.mkdtemp(prefix="covidct-test-cache-")
    os.environ["COVIDCT_CACHE_DIR"] = root
    config.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Real CT data, never skipped: ../shared/data (123 slices, 11 DICOMs) when the checkout
    sits beside it, else tests/fixtures (5 slices, 5 DICOMs) in the same layout. Tests count
    what the root holds, not fixed numbers."""
    return real_data_dir()


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 patients x 3 slices of synthetic CT at 512², shared by every test that reads it."""
    from training.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, patients=12, slices_per_patient=3, seed=7, workers=1)
    return out


@pytest.fixture(scope="session")
def cache_env() -> dict[str, str]:
    """Environment for covidct subprocesses, with the session's cache root (pytest_configure):
    prepared data and conversions shared with every other test of the session."""
    return dict(os.environ)


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory: pytest.TempPathFactory, cache_env: dict[str, str]) -> Path:
    """The CI-sized training run (tests/cli_helpers.py: CI_DATA, CI_TRAIN; DenseNet121 from
    scratch, 64x64, 14 epochs, 150 synthetic patients x 3 slices). Every test using it is in
    xdist group "ci-run", so it trains once.
    COVIDCT_TEST_CI_RUN=RUN reuses a finished run whose data folder is RUN/../data."""
    reuse = os.environ.get("COVIDCT_TEST_CI_RUN")
    if reuse:  # developer shortcut: a finished CI-sized run with its data beside it
        return Path(reuse)
    root = tmp_path_factory.mktemp("ci-train")
    data, run = root / "data", root / "run"
    synth = covidct(
        "data",
        "synth",
        "--out",
        data,
        *CI_DATA,
        "--workers",
        "2",
    )
    assert synth.returncode == 0, synth.stderr
    started = time.perf_counter()
    result = covidct("train", "--data", data, "--out", run, *CI_TRAIN, env=cache_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run / "test-duration.txt").write_text(f"{time.perf_counter() - started:.0f}")
    return run


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    """The project's wheel in a temporary venv, run from a folder outside the checkout."""
    return install_wheel(tmp_path_factory.mktemp("wheel"))
