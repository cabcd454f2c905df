"""Redeploy and rollback against the real tritonserver (explicit model control) and gateway.

One stack per module (per xdist worker); each test starts from whatever version serves and
checks relative to it: a redeploy under load moves to the next version; a rejected candidate,
a failed smoke test and a version that fails to load leave the serving one; a redeploy
killed midway is recovered by its rerun, then rolled back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from covidct.modelconfig import parse_config
from export.repository import pinned_config, versions, write_config
from gateway.app import create_app
from gateway.protocol import UVICORN_OPTIONS
from gateway.settings import GatewaySettings
from rollout.control import DeployError, TritonControl
from rollout.deployment import DeployOptions
from rollout.redeploy import redeploy
from serving.server import TritonServer, free_port
from tests.loadclient import Load, assert_one_clean_switch, p99

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]

ADMIN = "redeploy-test-key"


class Stack:
    def __init__(self, repo: Path, triton: TritonServer, gateway: str, env: dict[str, str]):
        self.repo, self.triton, self.gateway, self.env = repo, triton, gateway, env
        self.model_dir = repo / "covidct"
        self.grpc = f"127.0.0.1:{triton.grpc_port}"

    def current(self) -> int:
        return int(self.serving()["version"])

    def serving(self) -> dict:
        r = httpx.get(f"{self.gateway}/admin/v1/serving", headers={"x-admin-key": ADMIN})
        return dict(r.json())

    def ready(self) -> list[int]:
        return TritonControl(self.grpc, "covidct").ready_versions()

    def log(self) -> list[dict]:
        path = self.repo / "deployments.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def args(self, *extra: str | Path) -> list[str]:
        common = ["--repository", self.repo, "--gateway", self.gateway, "--triton", self.grpc]
        return [sys.executable, "-m", "cli", *map(str, [*extra, *common])]

    def run(self, *extra: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*extra), capture_output=True, text=True, env=self.env, timeout=600
        )

    def kill_redeploy_when(self, run: Path, watch_s: str, moment: Callable[[], bool]) -> bool:
        """Start ``covidct redeploy --from-run run``, SIGKILL it once ``moment()`` holds;
        True when it was killed (False: it ended first)."""
        args = self.args("redeploy", "--from-run", run, "--data", run.parent / "data")
        proc = subprocess.Popen(
            [*args, "--watch-seconds", watch_s],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if moment():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait(timeout=60)
        return proc.returncode == -signal.SIGKILL

    def options(self, run: Path, **extra: Any) -> DeployOptions:
        """In-process redeploy options against this stack, deploying ``run``."""
        return DeployOptions(
            repository=self.repo,
            data=run.parent / "data",
            run=run,
            gateway_url=self.gateway,
            triton_url=self.grpc,
            admin_key=ADMIN,
            cache_root=Path(self.env["COVIDCT_CACHE_DIR"]),
            **extra,
        )

    def assert_serves_only(self, version: int) -> None:
        assert self.serving()["version"] == str(version)
        assert self.ready() == [version]
        config = parse_config((self.model_dir / "config.pbtxt").read_text())
        assert list(config.version_policy.specific.versions) == [version]
        assert not list(self.model_dir.glob(".tmp-*"))


@pytest.fixture(scope="module")
def stack(repository: Path, tmp_path_factory: pytest.TempPathFactory, cache_env: dict):
    import uvicorn

    repo = tmp_path_factory.mktemp("redeploy") / "models"
    model_dir = repo / "covidct"
    model_dir.mkdir(parents=True)
    shutil.copytree(repository / "covidct" / "1", model_dir / "1")
    shutil.copy(repository / "covidct" / "labels.txt", model_dir / "labels.txt")
    write_config(model_dir, pinned_config(model_dir, 1, [1]))
    ports = free_port(), free_port(), free_port()
    triton = TritonServer(
        repo, *ports, model_control="explicit", log_file=repo.parent / "triton.log"
    )
    triton.start()
    port = free_port()
    settings = GatewaySettings(triton_url=f"127.0.0.1:{ports[0]}", admin_key=ADMIN)
    uv = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            **UVICORN_OPTIONS,
        )
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    env = {**cache_env, "COVIDCT_ADMIN_KEY": ADMIN}
    yield Stack(repo, triton, f"http://127.0.0.1:{port}", env)
    uv.should_exit = True
    thread.join(timeout=10)
    triton.stop()


def test_redeploy_under_load_switches_once_and_fails_no_request(stack: Stack, ci_run: Path):
    old = stack.current()
    new = max(versions(stack.model_dir)) + 1
    with Load(stack.gateway) as load:
        time.sleep(4)
        started = time.perf_counter()
        result = stack.run(
            "redeploy", "--from-run", ci_run, "--data", ci_run.parent / "data", "--watch-seconds", 3
        )
        finished = time.perf_counter()
        time.sleep(4)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    records = sorted(load.records)
    assert_one_clean_switch(records, finished, str(old), str(new))
    stack.assert_serves_only(new)
    entry = stack.log()[-1]
    assert entry["outcome"] == "deployed" and entry["gate"]["promote"]
    assert (entry["from_version"], entry["to_version"]) == (old, new)
    before = [r for r in records if r[1] < started]
    during = [r for r in records if started <= r[0] and r[1] <= finished]
    later = [r for r in records if r[0] > finished]
    print(
        f"\nredeploy under load: {len(records)} requests, 0 failed; "
        f"p99 before {p99(before):.0f} ms (n={len(before)}), during {p99(during):.0f} ms "
        f"(n={len(during)}), after {p99(later):.0f} ms (n={len(later)}); "
        f"redeploy wall time {finished - started:.1f} s; steps {entry['timings']}"
    )


def test_gate_rejection_changes_nothing(stack: Stack, ci_run: Path, tmp_path: Path) -> None:
    worse = tmp_path / "worse-run"
    worse.mkdir()
    for item in ci_run.iterdir():
        if item.is_file():
            shutil.copy(item, worse / item.name)
    (worse / "saved_model").symlink_to(ci_run / "saved_model")
    metrics = json.loads((worse / "metrics.json").read_text())
    metrics["test"]["macro_f1"] -= 0.05
    (worse / "metrics.json").write_text(json.dumps(metrics))
    before, old = versions(stack.model_dir), stack.current()
    result = stack.run("redeploy", "--from-run", worse, "--data", ci_run.parent / "data")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "macro-F1" in result.stderr and "too low" in result.stderr
    assert versions(stack.model_dir) == before
    stack.assert_serves_only(old)
    entry = stack.log()[-1]
    assert entry["outcome"] == "rejected" and not entry["gate"]["promote"]
    assert any("macro-F1" in r and "too low" in r for r in entry["gate"]["reasons"])


def test_failed_smoke_test_rolls_back(stack: Stack, ci_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad-slices"
    bad.mkdir()
    (bad / "slice.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a slice")
    before, old = versions(stack.model_dir), stack.current()
    result = stack.run(
        "redeploy", "--from-run", ci_run, "--data", ci_run.parent / "data", "--smoke-slices", bad
    )
    assert result.returncode == 1
    assert "smoke" in result.stderr
    stack.assert_serves_only(old)
    assert versions(stack.model_dir) == before  # the version that failed is gone
    entry = stack.log()[-1]
    assert entry["outcome"].startswith("rolled back: smoke test failed"), entry["outcome"]


def test_version_that_fails_to_load_leaves_the_old_one_serving(stack: Stack, ci_run: Path) -> None:
    from export.pipeline import export_run

    def broken_export(run: Path, repository: Path, serving):
        manifest = export_run(run, repository, serving)
        onnx = repository / "covidct" / str(manifest["version"]) / "model.onnx"
        onnx.write_bytes(b"truncated by a full disk")
        return manifest

    events: list = []
    before, old = versions(stack.model_dir), stack.current()
    opts = stack.options(ci_run)
    with pytest.raises(DeployError, match="could not load"):
        redeploy(opts, events.append, exporter=broken_export)
    assert [e.step for e in events if e.status == "fail"] == ["load"]
    stack.assert_serves_only(old)
    assert versions(stack.model_dir) == before
    assert stack.log()[-1]["outcome"].startswith("failed: Triton could not load")


def test_killed_redeploy_is_recovered_by_its_rerun_then_rolled_back(
    stack: Stack, ci_run: Path
) -> None:
    before, old = versions(stack.model_dir), stack.current()
    # midway through the export
    killed = stack.kill_redeploy_when(
        ci_run, "1", lambda: bool(list(stack.model_dir.glob(".tmp-version-*/model.onnx")))
    )
    assert killed, "redeploy finished before it could be killed"
    # Consistent: the old version serves, no new version was published.
    assert stack.current() == old and stack.ready() == [old]
    assert versions(stack.model_dir) == before
    assert (stack.repo / ".deploy-covidct.json").is_file()
    again = stack.run(
        "redeploy", "--from-run", ci_run, "--data", ci_run.parent / "data", "--watch-seconds", 1
    )
    assert again.returncode == 0, again.stderr[-3000:]
    new = max(before) + 1
    stack.assert_serves_only(new)
    assert not (stack.repo / ".deploy-covidct.json").exists()
    outcomes = [e["outcome"] for e in stack.log()[-2:]]
    assert outcomes[0].startswith("interrupted before export") and outcomes[1] == "deployed"
    # One command back to the version the redeploy replaced, with the same protocol.
    result = stack.run("rollback", "--watch-seconds", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    stack.assert_serves_only(old)
    entry = stack.log()[-1]
    assert entry["action"] == "rollback" and (entry["from_version"], entry["to_version"]) == (
        new,
        old,
    )
    table = subprocess.run(
        [sys.executable, "-m", "cli", "deployments", "--repository", str(stack.repo)],
        capture_output=True,
        text=True,
    )
    assert table.returncode == 0 and "rollback" in table.stdout and "interrupted" in table.stdout


#: Appended to a new version's model.py: it serves its warm-up and the smoke test (7
#: executions), then fails every execution, as a version with a latent fault would.
LATENT_FAULT = """

_healthy_execute = TritonPythonModel.execute
_executions = [0]


def _execute_then_fail(self, requests):
    _executions[0] += 1
    if _executions[0] > 12:
        raise RuntimeError("latent fault (test)")
    return _healthy_execute(self, requests)


TritonPythonModel.execute = _execute_then_fail
"""


def test_watch_rolls_back_a_version_that_fails_after_the_switch(stack: Stack, ci_run: Path) -> None:
    """The candidate passes the gate and the smoke test, then fails once clients reach it:
    the watch sees its error rate, switches back and unloads it, by itself."""
    from export.pipeline import export_run

    def export_with_fault(run: Path, repository: Path, serving) -> dict:
        manifest = export_run(run, repository, serving)
        model_py = repository / "covidct" / str(manifest["version"]) / "model.py"
        model_py.write_text(model_py.read_text() + LATENT_FAULT)
        return manifest

    old = stack.current()
    new = max(versions(stack.model_dir)) + 1
    opts = stack.options(ci_run, watch_seconds=30)
    with Load(stack.gateway) as load:
        time.sleep(2)
        with pytest.raises(DeployError, match=f"error rate .* on version {new} is over 5%"):
            redeploy(opts, lambda event: None, exporter=export_with_fault)
        rolled_back = time.perf_counter()
        time.sleep(3)
    stack.assert_serves_only(old)
    assert new not in stack.ready()
    entry = stack.log()[-1]
    assert entry["outcome"].startswith("rolled back: error rate"), entry["outcome"]
    records = sorted(load.records)
    failed = [r for r in records if r[2] != 200]
    assert failed, "no request reached the faulty version"
    assert all(r[2] == 200 and r[3] == str(old) for r in records if r[0] > rolled_back)
    print(f"\nwatch rollback: {len(failed)} of {len(records)} requests failed on version {new}")


def test_redeploy_killed_after_the_switch_is_finished_by_its_rerun(
    stack: Stack, ci_run: Path
) -> None:
    old, before = stack.current(), versions(stack.model_dir)
    new = max(before) + 1
    journal = stack.repo / ".deploy-covidct.json"

    def switched() -> bool:
        try:
            return "switch" in json.loads(journal.read_text())["done"]
        except (OSError, ValueError, KeyError):
            return False

    # during the drain or the watch
    assert stack.kill_redeploy_when(ci_run, "120", switched), "redeploy ended before it switched"
    # The gateway already serves the new version; the old one is still loaded beside it.
    assert stack.current() == new and stack.ready() == sorted([old, new])
    again = stack.run(
        "redeploy", "--from-run", ci_run, "--data", ci_run.parent / "data", "--watch-seconds", 1
    )
    assert again.returncode == 0, again.stderr[-3000:]
    stack.assert_serves_only(new)
    assert versions(stack.model_dir) == [*before, new]  # finished, not exported again
    assert not journal.exists()
    assert stack.log()[-1]["outcome"].startswith("interrupted after the switch; finished")
