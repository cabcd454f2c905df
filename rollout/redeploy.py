"""``covidct redeploy`` and ``covidct rollback``: gated promotion, zero-downtime switch.

redeploy: train (or take a finished run) -> figures on the test split production was judged
on -> gate -> export as the next version -> load it beside the serving one -> smoke test
through Triton -> switch the gateway -> drain the old version -> watch the error rate
(automatic rollback past the limit) -> unload the old version. A failure before the switch
leaves the old version serving and removes the new one; a failure after it switches back.

rollback: the same protocol towards an earlier version.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from covidct.config import TrainConfig
from export.repository import (
    RepositoryBusy,
    TritonOptions,
    read_manifest,
    repository_lock,
    versions,
)
from rollout.control import DeployError
from rollout.deployment import (
    Deployment,
    DeployOptions,
    Reporter,
    StepEvent,
    WatchFailed,
    recover,
    remove_orphans,
)
from rollout.figures import (
    candidate_figures,
    data_test_sha,
    production_figures,
    production_test_sha,
    run_test_sha,
)
from rollout.gate import decide
from rollout.smoke import SmokeError

log = logging.getLogger(__name__)

Exporter = Callable[[Path, Path, TritonOptions], dict[str, Any]]


def _default_exporter(run: Path, repository: Path, serving: TritonOptions) -> dict[str, Any]:
    from export.pipeline import export_run

    return export_run(run, repository, serving)


def _serving_version(d: Deployment) -> int:
    """The version the gateway serves; it must be ready in Triton."""
    status = d.gateway.status()
    version = int(status["version"])
    if version not in d.triton.ready_versions():
        raise DeployError(f"the gateway serves version {version}, which Triton has not ready")
    return version


def _train(opts: DeployOptions) -> Path:
    from training.train import train

    assert opts.train_config is not None and opts.data is not None
    cfg = TrainConfig.from_json(opts.train_config.read_text())
    out = opts.runs_dir / time.strftime("redeploy-%Y%m%d-%H%M%S")
    train(opts.data, out, cfg, cache_root=opts.cache_root, verbose=2)
    return out


@contextmanager
def _holding(opts: DeployOptions, what: str) -> Iterator[None]:
    """The repository held for this deployment; a second writer is a DeployError."""
    try:
        with repository_lock(opts.repository, what):
            yield
    except RepositoryBusy as e:
        raise DeployError(str(e)) from e


def redeploy(
    opts: DeployOptions, report: Reporter, exporter: Exporter = _default_exporter
) -> dict[str, Any]:
    """Run a redeploy; returns its deployment-log entry (``outcome`` says how it ended).

    Raises:
        DeployError: a step failed (the entry was logged and the old version serves), or
            another export, redeploy or rollback holds the repository (nothing changed).
    """
    if opts.data is None or (opts.run is None) == (opts.train_config is None):
        raise DeployError("give --data and exactly one of --from-run or --train-config")
    if opts.dry_run:
        return _redeploy(opts, report, exporter)
    with _holding(opts, "covidct redeploy"):
        return _redeploy(opts, report, exporter)


def _redeploy(opts: DeployOptions, report: Reporter, exporter: Exporter) -> dict[str, Any]:
    assert opts.data is not None  # checked by redeploy()
    recovered = None if opts.dry_run else recover(opts, report)
    if recovered and recovered["outcome"].startswith("interrupted after the switch"):
        same = opts.run is not None and recovered.get("source_run") == str(opts.run.resolve())
        if same:
            return recovered  # the interrupted redeploy of this run is now complete
    model_dir = opts.model_dir
    state = Deployment.new_state(
        "redeploy", data=str(opts.data.resolve()), newest_before=max(versions(model_dir) or [0])
    )
    d = Deployment(opts, report, state)
    run: Path | None = opts.run

    def train_step() -> str:
        nonlocal run
        if run is None:
            run = _train(opts)
            return f"trained {run}"
        if not (run / "saved_model" / "saved_model.pb").is_file():
            raise DeployError(f"{run} has no SavedModel: not a finished run")
        return f"finished run {run}"

    try:
        d.step("train", train_step)
    except Exception as e:  # logged, then reported by the caller
        d.finish(f"failed: {e}")
        raise
    assert run is not None
    candidate, data = run, opts.data
    state["source_run"] = str(candidate.resolve())
    state["from_version"] = _serving_version(d)
    sha = data_test_sha(data)
    state["test_split_sha256"] = sha

    def evaluate_step() -> str:
        cand, cand_src = candidate_figures(candidate, data, sha, opts.cache_root)
        history = opts.deployment_log.read()
        prod, prod_src = production_figures(model_dir, d.old, data, sha, history, opts.cache_root)
        state["metrics"] = {"candidate": cand, "production": prod}
        return f"candidate: {cand_src}; production v{d.old}: {prod_src}"

    try:
        d.step("evaluate", evaluate_step)
    except Exception as e:
        d.finish(f"failed: {e}")
        raise
    decision = decide(
        state["metrics"]["candidate"],
        state["metrics"]["production"],
        opts.tolerances,
        sha,
        production_test_sha(model_dir, d.old),
        run_test_sha(candidate),
    )
    state["gate"] = decision.to_dict()

    def gate_step() -> str:
        if not decision.promote:
            raise DeployError(
                "gate rejected the candidate: "
                + "; ".join(
                    r for r in decision.reasons if not r.endswith(": ok") and "matches" not in r
                )
            )
        return "promote: no figure worse beyond its tolerance"

    try:
        d.step("gate", gate_step)
    except DeployError:
        return d.finish("rejected")
    if opts.dry_run:
        return d.finish("dry-run: would promote")

    def export_step() -> str:
        remove_orphans(model_dir, state["newest_before"])
        serving = TritonOptions(**read_manifest(model_dir, d.old).get("serving", {}))
        manifest = exporter(candidate, opts.repository, serving)
        state["to_version"] = int(manifest["version"])
        state["created_version"] = True
        return f"version {manifest['version']} written to {model_dir}"

    try:
        d.step("export", export_step)
        d.step("load", d.load_pair)
        d.step("smoke", d.smoke)
    except DeployError as e:
        if "to_version" in state:
            d.put_back_old(remove_new=True)
        outcome = "rolled back: smoke test failed" if isinstance(e, SmokeError) else "failed"
        d.finish(f"{outcome}: {e}")
        raise
    return _switch_and_settle(d)


def _switch_and_settle(d: Deployment) -> dict[str, Any]:
    """Switch, drain, watch, unload; automatic rollback when the watch fails."""
    try:
        d.step("switch", d.switch)
        d.step("drain", d.drain)
        d.step("watch", d.watch)
    except DeployError as e:
        d.put_back_old(remove_new=False)
        d.finish(f"rolled back: {e}")
        raise
    d.step("unload", d.retire_old)
    return d.finish("deployed")


def previous_version(opts: DeployOptions, current: int) -> int:
    """What ``rollback`` goes back to: the version the last deployment replaced."""
    for entry in reversed(opts.deployment_log.read()):
        if entry.get("outcome") == "deployed" and entry.get("to_version") == current:
            return int(entry["from_version"])
    older = [v for v in versions(opts.model_dir) if v < current]
    if not older:
        raise DeployError(f"no version older than {current} to roll back to")
    return max(older)


def rollback(opts: DeployOptions, report: Reporter, to: int | None = None) -> dict[str, Any]:
    """Switch back to ``to`` (default: the version the last redeploy replaced)."""
    with _holding(opts, "covidct rollback"):
        return _rollback(opts, report, to)


def _rollback(opts: DeployOptions, report: Reporter, to: int | None) -> dict[str, Any]:
    recover(opts, report)
    state = Deployment.new_state("rollback")
    d = Deployment(opts, report, state)
    current = _serving_version(d)
    target = to if to is not None else previous_version(opts, current)
    if target == current:
        raise DeployError(f"version {target} is already serving")
    if not (opts.model_dir / str(target) / "manifest.json").is_file():
        raise DeployError(f"version {target} is not in {opts.model_dir}")
    state.update(from_version=current, to_version=target, created_version=False)
    state["source_run"] = read_manifest(opts.model_dir, target).get("source_run")
    opts.journal.save(state)
    try:
        d.step("load", d.load_pair)
        d.step("smoke", d.smoke)
    except DeployError as e:
        d.put_back_old(remove_new=False)
        d.finish(f"failed: {e}")
        raise
    return _switch_and_settle(d)


def describe(entry: dict[str, Any]) -> str:
    """One line for the terminal."""
    return json.dumps(
        {k: entry.get(k) for k in ("action", "from_version", "to_version", "outcome")}
    )


__all__ = ["DeployOptions", "Reporter", "StepEvent", "WatchFailed", "redeploy", "rollback"]
