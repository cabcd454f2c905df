"""One writer at a time on a model repository: export, redeploy and rollback hold an flock,
a second is refused naming the holder, a killed holder frees it, staging is per process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from export.repository import RepositoryBusy, remove_staged, repository_lock
from rollout.control import DeployError
from rollout.deployment import DeployOptions
from rollout.redeploy import redeploy, rollback

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from export.repository import repository_lock\n"
    "with repository_lock(Path(sys.argv[1]), 'covidct redeploy'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


@pytest.fixture
def held(tmp_path: Path):
    """Another process holding ``tmp_path / 'models'``; yields (repository, its pid)."""
    repo = tmp_path / "models"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(repo)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    yield repo, holder.pid
    holder.kill()
    holder.wait()


def test_a_second_writer_is_refused_naming_the_holder(held: tuple[Path, int]) -> None:
    repo, pid = held
    busy = pytest.raises(RepositoryBusy, match=rf"being changed by covidct redeploy \(pid {pid},")
    with busy, repository_lock(repo, "covidct export"):
        pytest.fail("got the lock another process holds")


def test_a_killed_holder_frees_the_repository(held: tuple[Path, int]) -> None:
    repo, pid = held
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with repository_lock(repo, "covidct export"):
        assert "covidct export (pid" in (repo / ".covidct.lock").read_text()
    assert (repo / ".covidct.lock").read_text() == ""  # released: no holder named


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with repository_lock(tmp_path, "covidct redeploy"), repository_lock(tmp_path, "export"):
        assert "covidct redeploy" in (tmp_path / ".covidct.lock").read_text()


def test_redeploy_and_rollback_refuse_while_another_writer_holds_it(
    held: tuple[Path, int], tmp_path: Path
) -> None:
    repo, _ = held
    opts = DeployOptions(repository=repo, data=tmp_path, run=tmp_path)
    for attempt in (lambda: redeploy(opts, print), lambda: rollback(opts, print)):
        with pytest.raises(DeployError, match="being changed by covidct redeploy"):
            attempt()
    assert not (repo / "covidct").exists()  # nothing was touched


def test_only_a_gone_process_s_staging_is_removed(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    live = os.getppid()  # the test runner's parent outlives the test
    for name in (f".tmp-version-{gone}-abc", f".tmp-version-{live}-def", ".tmp-version-old"):
        (tmp_path / name).mkdir()
    (tmp_path / f".tmp-config-{gone}-x").write_text("")
    removed = remove_staged(tmp_path)
    assert sorted(removed) == sorted(
        [f".tmp-version-{gone}-abc", ".tmp-version-old", f".tmp-config-{gone}-x"]
    )
    assert (tmp_path / f".tmp-version-{live}-def").is_dir()
