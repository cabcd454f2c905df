"""The deployment log (append-only JSON lines) and the journal of the deployment in progress.

The log records every attempt: promotions, gate rejections, failures, rollbacks. The
journal (one JSON file, replaced atomically) records the step a deployment has reached, so
that a rerun after a kill knows what to finish or undo.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path
from typing import Any

from covidct.files import atomic_write_text

LOG_NAME = "deployments.jsonl"


def who() -> str:
    """The person running the command (``$USER``, else the login name)."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "unknown"


def now_iso() -> str:
    """Local time with its UTC offset, as the log writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class DeploymentLog:
    """Append-only JSON lines; one line per deployment attempt."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, entry: dict[str, Any]) -> None:
        """Add one attempt's line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(entry, sort_keys=True) + "\n"
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a crash cut the last line: start a fresh one
                    line = "\n" + line
        # One write of one line on an O_APPEND descriptor: lines never interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (a line cut short by a crash is skipped)."""
        if not self.path.is_file():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return entries


def _pct(metrics: dict[str, Any] | None, key: str) -> str:
    if not metrics or key not in metrics:
        return "-"
    return f"{100 * metrics[key]:.1f}"


TABLE_COLUMNS = (
    "time",
    "who",
    "action",
    "versions",
    "macro-F1 %",
    "COVID sens %",
    "COVID PPV %",
    "gate",
    "outcome",
    "source run",
)


def table_rows(entries: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per entry for ``covidct deployments`` (figures: candidate vs production)."""
    rows: list[tuple[str, ...]] = []
    for e in entries:
        metrics = e.get("metrics") or {}
        cand, prod = metrics.get("candidate"), metrics.get("production")

        def pair(key: str, cand: Any = cand, prod: Any = prod) -> str:
            return f"{_pct(cand, key)} / {_pct(prod, key)}"

        gate = e.get("gate") or {}
        rows.append(
            (
                str(e.get("time", "")),
                str(e.get("who", "")),
                str(e.get("action", "")),
                f"{e.get('from_version') or '-'} -> {e.get('to_version') or '-'}",
                pair("macro_f1"),
                pair("covid_sensitivity"),
                pair("covid_ppv"),
                "-" if not gate else ("pass" if gate.get("promote") else "reject"),
                str(e.get("outcome", "")),
                Path(str(e.get("source_run") or "-")).name,
            )
        )
    return rows


class Journal:
    """The state of the deployment in progress, written atomically after every step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        """The interrupted deployment's state, or None when none is in progress."""
        if not self.path.is_file():
            return None
        try:
            return dict(json.loads(self.path.read_text()))
        except json.JSONDecodeError:
            return None  # never happens with atomic writes; treat as no journal

    def save(self, state: dict[str, Any]) -> None:
        """Replace the state in one step (a kill leaves the old one or the new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def clear(self) -> None:
        """The deployment ended: nothing left to recover."""
        self.path.unlink(missing_ok=True)
