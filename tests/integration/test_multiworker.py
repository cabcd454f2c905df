"""Two-worker training on this machine, really run: ``covidct train --launch-local 2`` starts
two ``MultiWorkerMirroredStrategy`` processes on 127.0.0.1 (TF_CONFIG generated, free ports),
the non-chief is killed with SIGKILL in the middle of epoch 2, the launcher restarts both
from the chief's last BackupAndRestore state, and the run finishes. Checked against a
single-worker run of the same global batch on the same data: the same files (written by the
chief alone), the batch split stated in train_config.json, and accuracy in the same band.
VGG16 from scratch at 64², 3 epochs, 90 synthetic slices: a pipeline check, not a
model (both runs stay near chance after 3 epochs; the band is what is compared)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_helpers import covidct

# In the "ci-run" group although it trains its own runs: its three TensorFlow processes fill
# both cores for four minutes, which must not overlap the group's timing-sensitive tests
# (test_overload's fast-503 bound failed once when they ran side by side).
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]

#: Class weights, not the default sampling: one pass over the index per epoch, the equivalence
#: this test measures (sampling's sharding is in tests/training/test_data.py).
TRAIN = ["--backbone", "vgg16", "--image-size", "64", "--epochs", "3", "--weights", "none"]
TRAIN += ["--balance", "class-weights"]
TRAIN += ["--patience", "5", "--seed", "3"]
PER_WORKER_BATCH = 4


def _epochs_logged(run: Path) -> list[int]:
    path = run / "train_log.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_two_workers_survive_a_killed_worker_and_match_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synth = covidct(
        *("data", "synth", "--out", data, "--patients", "30", "--slices-per-patient", "3"),
        *("--seed", "9", "--workers", "2"),
    )
    assert synth.returncode == 0, synth.stderr
    env = {**os.environ, "COVIDCT_CACHE_DIR": str(tmp_path / "cache")}

    one, two = tmp_path / "one", tmp_path / "two"
    train = [sys.executable, "-m", "cli", "train", "--data", str(data), *TRAIN]
    log, single_log = tmp_path / "launcher.log", tmp_path / "single.log"
    started = time.perf_counter()
    # The single-worker run beside the two workers: the three processes share 2 cores.
    with log.open("w") as out, single_log.open("w") as single_out:
        single = subprocess.Popen(
            [*train, "--out", str(one), "--batch-size", str(2 * PER_WORKER_BATCH)],
            stdout=single_out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        launcher = subprocess.Popen(
            [
                *train,
                "--out",
                str(two),
                "--batch-size",
                str(PER_WORKER_BATCH),
                "--launch-local",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 300
            while not _epochs_logged(two) and launcher.poll() is None:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(1.0)  # into epoch 2 (about 6 s of steps)
            started_line = r"launch-local: 2 workers on .* \(pids (\d+), (\d+)\)"
            pids = re.search(started_line, log.read_text())
            assert pids, log.read_text()[-3000:]
            os.kill(int(pids.group(2)), signal.SIGKILL)  # the non-chief
            killed_after = _epochs_logged(two)
            assert launcher.wait(timeout=400) == 0, log.read_text()[-4000:]
            two_s = time.perf_counter() - started
            assert single.wait(timeout=300) == 0, single_log.read_text()[-4000:]
            single_s = time.perf_counter() - started
        finally:
            for p in (single, launcher):
                if p.poll() is None:
                    p.kill()
    text = log.read_text()

    # The kill was noticed, both restarted from the chief's backup, and the run finished.
    assert killed_after == [0], killed_after
    assert "worker 1 exited with -9; restarting all 2 workers" in text, text[-3000:]
    assert re.search(r"launch-local: 2 workers on .* resuming", text), text[-3000:]
    assert _epochs_logged(two) == [0, 1, 2]  # epoch 1 was not lost, none ran twice to the end
    assert text.count(f"worker 1 of 2 done; the chief writes {two}") == 1

    # Only the chief wrote the run: the same files as the single-worker run.
    def files(run: Path) -> set[str]:
        return {
            str(p.relative_to(run)).split("/")[0] for p in run.iterdir() if p.name != "tensorboard"
        }

    assert files(two) == files(one)
    config = json.loads((two / "train_config.json").read_text())
    assert (config["workers"], config["batch_size"], config["global_batch_size"]) == (
        2,
        PER_WORKER_BATCH,
        2 * PER_WORKER_BATCH,
    )
    assert "worker 0 of 2: 6 steps x 4 slices per epoch (global batch 8)" in text
    assert "worker 1 of 2: 6 steps x 4 slices per epoch (global batch 8)" in text

    # Same global batch, same data: the same band of results (3 epochs from scratch).
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    a1, a2 = m1["test"]["accuracy"], m2["test"]["accuracy"]
    print(
        f"\nside by side: 1 worker x batch 8 done after {single_s:.0f} s (train "
        f"{m1['train_seconds']:.0f} s), test accuracy {a1:.3f}; 2 workers x batch 4 with one "
        f"kill + restart done after {two_s:.0f} s, test accuracy {a2:.3f}"
    )
    assert abs(a1 - a2) <= 0.34, (a1, a2)
    assert min(a1, a2) >= 0.2  # neither collapsed below chance
