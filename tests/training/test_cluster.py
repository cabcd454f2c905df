"""Who a training process is in a multi-worker run (training/cluster.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli.train import _worker_args
from tests.cli_helpers import covidct
from training.cluster import ClusterError, Worker, ensure_tf_config, tf_config, worker_of


def test_tf_config_names_the_first_host_chief() -> None:
    hosts = ["a:1", "b:2", "c:3"]
    assert tf_config(hosts, 0) == {
        "cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]},
        "task": {"type": "chief", "index": 0},
    }
    assert tf_config(hosts, 2)["task"] == {"type": "worker", "index": 1}
    assert [worker_of(json.dumps(tf_config(hosts, i))) for i in range(3)] == [
        Worker(0, 3),
        Worker(1, 3),
        Worker(2, 3),
    ]
    assert Worker(0, 3).is_chief and not Worker(2, 3).is_chief


def test_a_cluster_of_workers_only_has_worker_zero_as_chief() -> None:
    config = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert worker_of(json.dumps(config)) == Worker(1, 2)


def test_indexed_job_variables_give_tf_config() -> None:
    env = {
        "COVIDCT_CLUSTER_HOSTS": "train-{index}.train:2222",
        "COVIDCT_CLUSTER_SIZE": "3",
        "JOB_COMPLETION_INDEX": "1",
    }
    assert ensure_tf_config(env) == Worker(1, 3)
    assert json.loads(env["TF_CONFIG"]) == tf_config(
        ["train-0.train:2222", "train-1.train:2222", "train-2.train:2222"], 1
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "needs TF_CONFIG"),
        ({"TF_CONFIG": "{not json"}, "does not parse"),
        ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {}})}, "parse"),
        (
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}
                )
            },
            "not in its cluster",
        ),
        ({"COVIDCT_CLUSTER_HOSTS": "train:2222", "COVIDCT_CLUSTER_SIZE": "2"}, "{index}"),
        ({"COVIDCT_CLUSTER_HOSTS": "t-{index}:1", "JOB_COMPLETION_INDEX": "0"}, "integer"),
        (
            {
                "COVIDCT_CLUSTER_HOSTS": "t-{index}:1",
                "COVIDCT_CLUSTER_SIZE": "2",
                "JOB_COMPLETION_INDEX": "2",
            },
            "outside",
        ),
    ],
)
def test_bad_cluster_descriptions_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ClusterError, match=message.replace("{", r"\{").replace("}", r"\}")):
        ensure_tf_config(env)


def test_launcher_passes_every_training_option_but_its_own() -> None:
    argv = ["covidct", "train", "--data", "d", "--launch-local", "2", "--strategy=default"]
    argv += ["--max-restarts", "1", "--out", "r", "--resume"]
    assert _worker_args(argv) == ["--data", "d", "--out", "r", "--resume"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--balance", "nope"], "balance 'nope' must be one of"),
        (["--batch-size", "0"], "batch_size must be at least 1"),
        (["--data", "/nonexistent/covidct-data"], "no such folder"),
    ],
)
def test_the_launcher_refuses_bad_options_before_starting_workers(
    tmp_path: Path, args: list[str], message: str
) -> None:
    run = tmp_path / "run"
    result = covidct(
        *("train", "--data", tmp_path, "--out", run, "--launch-local", "2", *args),
        env={**os.environ, "COVIDCT_CACHE_DIR": str(tmp_path / "cache")},
    )
    text = " ".join(result.stderr.split())
    assert result.returncode == 2 and message in text, result.stderr[-2000:]
    assert text.count(message) == 1  # said once, by the launcher
    assert "worker" not in text.lower() and not run.exists()
