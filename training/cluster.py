"""Training on several workers: who this process is, and a local launcher.

``covidct train --strategy multiworker`` runs one process per worker under TensorFlow's
``MultiWorkerMirroredStrategy``. Each process learns its place from ``TF_CONFIG`` (task
``chief`` index 0 is worker 0; ``worker`` index i is worker i + 1), or, in a Kubernetes
Indexed Job, from ``JOB_COMPLETION_INDEX`` with ``COVIDCT_CLUSTER_HOSTS`` (a host pattern
with ``{index}``) and ``COVIDCT_CLUSTER_SIZE`` (deploy/k8s/training). Worker 0, the chief,
is the only one that writes the run directory; the others read it (resume state, backups).

:func:`launch_local` starts N such processes on this machine (``covidct train
--launch-local N``): a quick check of a multi-GPU host, and how the tests run two workers.
A worker that dies takes the group down (collectives cannot continue without it), so the
launcher stops the others and starts all of them again with ``--resume``: every worker
restores the chief's last BackupAndRestore state and training goes on from there.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from covidct.errors import CovidctError

log = logging.getLogger(__name__)

HOSTS_ENV = "COVIDCT_CLUSTER_HOSTS"
SIZE_ENV = "COVIDCT_CLUSTER_SIZE"
INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
STOP_GRACE_S = 10.0


class ClusterError(CovidctError, ValueError):
    """The cluster description is missing or inconsistent; the message says which."""


@dataclass(frozen=True)
class Worker:
    """This process's place: worker ``index`` of ``workers`` (0 is the chief)."""

    index: int = 0
    workers: int = 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def tf_config(hosts: Sequence[str], index: int) -> dict[str, object]:
    """``TF_CONFIG`` for worker ``index`` of ``hosts`` (``host:port``; the first is chief)."""
    if not 0 <= index < len(hosts):
        raise ClusterError(f"worker index {index} is outside the {len(hosts)} hosts")
    cluster: dict[str, list[str]] = {"chief": [hosts[0]]}
    if len(hosts) > 1:
        cluster["worker"] = list(hosts[1:])
    task = {"type": "chief", "index": 0} if index == 0 else {"type": "worker", "index": index - 1}
    return {"cluster": cluster, "task": task}


def _indexed_tf_config(env: Mapping[str, str]) -> dict[str, object] | None:
    """``TF_CONFIG`` derived from an Indexed Job's completion index, or None outside one."""
    pattern, size, index = env.get(HOSTS_ENV), env.get(SIZE_ENV), env.get(INDEX_ENV)
    if not pattern:
        return None
    if "{index}" not in pattern:
        raise ClusterError(f"{HOSTS_ENV}={pattern!r} needs an {{index}} placeholder")
    try:
        n, i = int(size or ""), int(index or "")
    except ValueError as e:
        raise ClusterError(f"{HOSTS_ENV} needs integer {SIZE_ENV} and {INDEX_ENV}") from e
    if n < 1:
        raise ClusterError(f"{SIZE_ENV} must be at least 1")
    return tf_config([pattern.format(index=k) for k in range(n)], i)


def ensure_tf_config(env: dict[str, str] | os._Environ[str] = os.environ) -> Worker:
    """This process's place, setting ``TF_CONFIG`` from the Indexed Job variables if needed.

    Raises:
        ClusterError: no cluster description, or one that does not parse.
    """
    if "TF_CONFIG" not in env:
        derived = _indexed_tf_config(env)
        if derived is None:
            raise ClusterError(
                "--strategy multiworker needs TF_CONFIG describing the cluster (or "
                f"{HOSTS_ENV}, {SIZE_ENV} and {INDEX_ENV} in a Kubernetes Indexed Job); "
                "`covidct train --launch-local N` sets it for N workers on this machine"
            )
        env["TF_CONFIG"] = json.dumps(derived)
    return worker_of(env["TF_CONFIG"])


def worker_of(text: str) -> Worker:
    """Parse ``TF_CONFIG``; the chief is worker 0, ``worker`` i is i + 1 (i if no chief)."""
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        chiefs, others = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        kind, index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ClusterError(f"TF_CONFIG does not parse: {e}") from e
    if len(chiefs) > 1 or not chiefs + others:
        raise ClusterError("TF_CONFIG needs at most one chief and at least one worker")
    if kind == "chief" and chiefs:
        position = 0
    elif kind == "worker" and 0 <= index < len(others):
        position = index + len(chiefs)
    else:
        raise ClusterError(f"TF_CONFIG task {kind}:{index} is not in its cluster")
    return Worker(index=position, workers=len(chiefs) + len(others))


# --------------------------------------------------------------------------- launcher


def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch_local(
    train_args: Sequence[str],
    workers: int,
    run: Path,
    max_restarts: int = 3,
    poll_s: float = 0.5,
) -> int:
    """Run ``covidct train TRAIN_ARGS --strategy multiworker`` as ``workers`` local processes.

    Returns:
        0 when every worker finished, else the exit status of the first failure after the
        last restart.
    """
    if workers < 1:
        raise ClusterError("--launch-local needs at least 1 worker")
    args = [a for a in train_args if a != "--resume"]
    asked = "--resume" in train_args  # the first start does what was asked
    restarts = 0
    while True:
        # a restart resumes whatever the group got to write (nothing yet: a fresh start)
        started = (run / "train_config.json").is_file()
        resume = ["--resume"] if (asked if restarts == 0 else started) else []
        hosts = [f"127.0.0.1:{p}" for p in _free_ports(workers)]
        procs = []
        for i in range(workers):
            env = {**os.environ, "TF_CONFIG": json.dumps(tf_config(hosts, i))}
            cmd = [sys.executable, "-m", "cli", "train", *args, "--strategy", "multiworker"]
            procs.append(subprocess.Popen([*cmd, *resume], env=env))
        print(
            f"launch-local: {workers} workers on {', '.join(hosts)} (pids "
            f"{', '.join(str(p.pid) for p in procs)}){' resuming' if resume else ''}",
            file=sys.stderr,
            flush=True,
        )
        failed: tuple[int, int] | None = None
        while failed is None:
            codes = [p.poll() for p in procs]
            failed = next(((i, c) for i, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is None and all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
        _stop(procs)
        index, code = failed
        if restarts >= max_restarts:
            print(
                f"launch-local: worker {index} exited with {code}; {max_restarts} restarts "
                "used, giving up",
                file=sys.stderr,
                flush=True,
            )
            return code if code > 0 else 1
        restarts += 1
        print(
            f"launch-local: worker {index} exited with {code}; restarting all {workers} "
            f"workers from the last backup (restart {restarts} of {max_restarts})",
            file=sys.stderr,
            flush=True,
        )
