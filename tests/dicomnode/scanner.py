"""The scanner side of the node's tests: DCMTK's storescu and echoscu (the real binaries),
node settings on free ports, a running node."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dicomnode.node import Node, Outcome, Process
from dicomnode.series import Series
from dicomnode.settings import NodeSettings

SCANNER = "SCANNER"
NODE_AET = "COVIDCT"
SALT = "test-salt"


def storescu(
    port: int,
    files: Path,
    *,
    aet: str = SCANNER,
    aec: str = NODE_AET,
    extra: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Send a folder (or one file) as a scanner does: ``storescu -xs`` proposes JPEG Lossless,
    which the real series use (``extra``: more options, e.g. ``-nh``: go on after a failure)."""
    command = ["storescu", "-xs", "-aet", aet, "-aec", aec, *extra]
    if files.is_dir():
        command += ["+sd", "+r"]
    command += ["127.0.0.1", str(port), str(files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def echoscu(
    port: int, *, aet: str = SCANNER, aec: str = NODE_AET
) -> subprocess.CompletedProcess[str]:
    """One C-ECHO."""
    command = ["echoscu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def node_settings(tmp: Path, **overrides: Any) -> NodeSettings:
    """Settings for a test node: free ports, a spool under ``tmp``, 1 s to stable, a fixed
    salt; no .env file read."""
    values: dict[str, Any] = {
        "port": 0,
        "http_port": 0,
        "spool_dir": tmp / "spool",
        "stable_s": 1.0,
        "audit_salt": SALT,
        "retry_backoff_s": 0.2,
    }
    values.update(overrides)
    return NodeSettings(_env_file=None, **values)  # type: ignore[call-arg]


class Recorder:
    """A process that records each series it gets (and can be told to fail)."""

    def __init__(self, fail: int = 0, outcome: Outcome | None = None) -> None:
        self.calls: list[Series] = []
        self.fail = fail
        self.outcome = outcome or Outcome(verdict="COVID-19", model_version="1")

    def __call__(self, series: Series) -> Outcome:
        self.calls.append(series)
        if len(self.calls) <= self.fail:
            raise RuntimeError(f"attempt {len(self.calls)} fails on purpose")
        return self.outcome


@contextmanager
def running_node(
    settings: NodeSettings, process: Process | None = None, *, http: bool = False, **kw: Any
) -> Iterator[Node]:
    """A started node, stopped at the end."""
    node = Node(settings, process or Recorder(), **kw)
    node.start(http=http)
    try:
        yield node
    finally:
        node.stop(drain_s=5)
