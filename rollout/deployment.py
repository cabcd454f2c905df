"""What redeploy and rollback share: step reporting, the journal, the switch.

A deployment moves the gateway from ``old_version`` to ``new_version`` with the protocol of
``rollout.control`` (Triton) and ``rollout.admin`` (gateway). Its state (versions, steps done,
figures) lives in a journal written after every step; a rerun after a kill reads it and either
finishes the deployment or puts the old version back (``recover``). Every attempt ends as one
line in the deployment log.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct.config import ModelSpec
from export.repository import (
    pinned_config,
    read_manifest,
    remove_staged,
    versions,
    write_config,
)
from rollout.admin import GatewayAdmin
from rollout.control import DeployError, TritonFleet
from rollout.deploylog import now_iso, who
from rollout.options import DeployOptions
from rollout.smoke import smoke_slices, smoke_test

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepEvent:
    """One step's progress, as the command line shows it."""

    step: str
    status: str  # start, ok, skip (done before an interruption), fail
    detail: str = ""
    seconds: float = 0.0


Reporter = Callable[[StepEvent], None]


class WatchFailed(DeployError):
    """The error rate after the switch was over the limit."""


class Deployment:
    """One deployment's state and the steps both commands are made of."""

    def __init__(self, opts: DeployOptions, report: Reporter, state: dict[str, Any]) -> None:
        self.opts, self.report, self.state = opts, report, state
        self.triton = TritonFleet(opts.triton_url, opts.model)
        self.gateway = GatewayAdmin(opts.gateway_url, opts.admin_key)

    @staticmethod
    def new_state(action: str, **fields: Any) -> dict[str, Any]:
        """A fresh journal state for ``action`` (redeploy or rollback) with ``fields``."""
        return {
            "id": uuid.uuid4().hex[:12],
            "action": action,
            "time": now_iso(),
            "who": who(),
            "done": [],
            "timings": {},
            "details": {},
            **fields,
        }

    # -- steps ---------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[], str]) -> None:
        """Run a step once: skipped when the journal says it finished before a kill."""
        if name in self.state["done"]:
            self.report(StepEvent(name, "skip", self.state["details"].get(name, "")))
            return
        self.report(StepEvent(name, "start"))
        started = time.perf_counter()
        try:
            detail = fn()
        except Exception as e:
            self.report(StepEvent(name, "fail", str(e), time.perf_counter() - started))
            raise
        seconds = time.perf_counter() - started
        self.state["done"].append(name)
        self.state["timings"][name] = round(seconds, 2)
        self.state["details"][name] = detail
        if not self.opts.dry_run:
            self.opts.journal.save(self.state)
        self.report(StepEvent(name, "ok", detail, seconds))

    @property
    def old(self) -> int:
        """The version serving when the deployment started."""
        return int(self.state["from_version"])

    @property
    def new(self) -> int:
        """The version the deployment moves to."""
        return int(self.state["to_version"])

    def load_pair(self) -> str:
        """Both versions served by every Triton; the gateways still send everything to the old."""
        self.triton.load_versions(self.opts.model_dir, sorted({self.old, self.new}), self.new)
        return f"{self._tritons} serve versions {self.old} and {self.new}"

    @property
    def _tritons(self) -> str:
        n = len(self.triton)
        return {1: "Triton", 2: "both Tritons"}.get(n, f"all {n} Tritons")

    def smoke(self) -> str:
        """Real slices through every Triton on the new version (``rollout.smoke``)."""
        spec = ModelSpec.from_dict(read_manifest(self.opts.model_dir, self.new)["model_spec"])
        files = smoke_slices(self.opts.smoke_slices)
        figures = smoke_test(
            self.triton.replicas,
            self.new,
            self.opts.model_dir / str(self.new),
            spec,
            files,
            max_latency_ms=self.opts.smoke_max_latency_ms,
        )
        self.state["smoke"] = figures
        on = f" on each of {len(self.triton)} replicas" if len(self.triton) > 1 else ""
        return (
            f"{figures['slices']} real slices{on}: top-1 agreement "
            f"{figures['top1_agreement']:.0%}, p50 {figures['p50_ms']} ms"
        )

    def switch(self) -> str:
        """Every gateway process serves the new version from its next request."""
        answer = self.gateway.switch(self.new)
        n = len(answer.get("gateways") or [None])
        who = "the gateway serves" if n == 1 else f"{n} gateway processes serve"
        return f"{who} version {self.new}"

    def drain(self) -> str:
        """Wait until no request is left on the old version."""
        waited = self.gateway.drain(self.old, self.opts.drain_timeout_s)
        return f"no request left on version {self.old} ({waited:.1f} s)"

    def watch(self) -> str:
        """Error rate of the new version over the watch window; WatchFailed past the limit."""
        deadline = time.monotonic() + self.opts.watch_seconds
        requests = errors = 0
        while True:
            mine = self.gateway.status()["since_switch"]["by_version"].get(str(self.new), {})
            requests, errors = int(mine.get("requests", 0)), int(mine.get("errors", 0))
            if requests and errors / requests > self.opts.max_error_rate:
                raise WatchFailed(
                    f"error rate {errors}/{requests} on version {self.new} is over "
                    f"{self.opts.max_error_rate:.0%}"
                )
            if time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, self.opts.watch_seconds))
        return f"{requests} requests, {errors} errors in {self.opts.watch_seconds:g} s"

    def retire_old(self) -> str:
        """Unload the old version; the new one serves alone."""
        self.triton.load_versions(self.opts.model_dir, [self.new], self.new)
        return f"version {self.old} unloaded; {self._tritons} serve {self.new} only"

    def put_back_old(self, remove_new: bool) -> None:
        """Undo before or after a switch: the old version serves, the new one is unloaded.

        On the replicas that answer; one that is down (often why the deployment failed)
        serves the old version when it comes back, from the config pinned here."""
        live, down = self.triton.reachable()
        if down:
            log.warning("undoing without %s (not reachable): pinned config only", down)
        serving = self.gateway.status().get("version")
        if serving == str(self.new):
            if self.old not in live.ready_versions():
                live.load_versions(self.opts.model_dir, sorted({self.old, self.new}), self.old)
            self.gateway.switch(self.old)
            self.gateway.drain(self.new, self.opts.drain_timeout_s)
        if self.new in live.ready_anywhere():
            live.load_versions(self.opts.model_dir, [self.old], self.old)
        write_config(self.opts.model_dir, pinned_config(self.opts.model_dir, self.old, [self.old]))
        if remove_new:
            shutil.rmtree(self.opts.model_dir / str(self.new), ignore_errors=True)

    # -- ending ----------------------------------------------------------------------------

    def finish(self, outcome: str, **extra: Any) -> dict[str, Any]:
        """Append the log line, clear the journal, return the entry."""
        entry = {
            k: self.state.get(k)
            for k in (
                "id",
                "time",
                "who",
                "action",
                "source_run",
                "data",
                "from_version",
                "to_version",
                "metrics",
                "gate",
                "gate_split",
                "test_split_sha256",
                "val_split_sha256",
                "smoke",
                "timings",
            )
        }
        entry.update(outcome=outcome, finished=now_iso(), **extra)
        self.opts.deployment_log.append(entry)
        if not self.opts.dry_run:
            self.opts.journal.clear()
        self.gateway.close()
        return entry


def remove_orphans(model_dir: Path, newest_before: int) -> list[str]:
    """Remove what an interrupted export of this deployment left: staged folders, and
    versions above the newest that existed when the deployment started (never served)."""
    removed = remove_staged(model_dir)
    for v in versions(model_dir):
        if v > newest_before:
            shutil.rmtree(model_dir / str(v), ignore_errors=True)
            removed.append(str(v))
    return removed


def recover(opts: DeployOptions, report: Reporter) -> dict[str, Any] | None:
    """Bring an interrupted deployment to a consistent end; returns its log entry.

    Once the gateway serves the new version (the smoke test passed), the deployment is
    finished: drain and unload the old one. Before that it is undone: the new version is
    unloaded, the old one stays served, and a version this deployment exported is removed.
    """
    state = opts.journal.load()
    if state is None:
        return None
    d = Deployment(opts, report, state)
    report(StepEvent("recover", "start", f"interrupted {state['action']} {state['id']}"))
    created = bool(state.get("created_version"))
    if "from_version" not in state or "to_version" not in state:
        remove_orphans(opts.model_dir, int(state.get("newest_before", 1 << 30)))
        if "from_version" in state:  # an export may have replaced config.pbtxt
            old = int(state["from_version"])
            write_config(opts.model_dir, pinned_config(opts.model_dir, old, [old]))
        outcome = "interrupted before export; cleaned up"
    elif d.gateway.status().get("version") == str(d.new) and "switch" in state["done"]:
        d.drain()
        d.retire_old()
        outcome = f"interrupted after the switch; finished: version {d.new} serves"
    else:
        d.put_back_old(remove_new=created)
        remove_staged(opts.model_dir)
        outcome = f"interrupted before the switch; undone: version {d.old} serves"
    report(StepEvent("recover", "ok", outcome))
    return d.finish(outcome)
