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
from covidct.errors import CovidctError
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
    Reporter,
    StepEvent,
    WatchFailed,
    recover,
    remove_orphans,
)
from rollout.figures import (
    candidate_figures,
    data_split_sha,
    production_figures,
    production_split_sha,
    run_split_sha,
)
from rollout.gate import decide
from rollout.options import DeployOptions
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
    """A new run trained with ``--train-config`` on ``--data``, under ``--runs-dir``."""
    from training.train import train

    assert opts.train_config is not None and opts.data is not None
    try:
        cfg = TrainConfig.from_json(opts.train_config.read_text())
    except (OSError, ValueError) as e:
        raise DeployError(f"{opts.train_config}: not a usable train config: {e}") from e
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


@contextmanager
def _as_deploy_error() -> Iterator[None]:
    """Whatever ends a deployment ends it as a DeployError (the command line exits 1): the
    project's errors from the code it drives (training, evaluation, export) and a file that
    cannot be read or parsed, each with its own message."""
    try:
        yield
    except DeployError:
        raise
    except (CovidctError, ValueError, OSError) as e:
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
    with _as_deploy_error():
        if opts.dry_run:
            return _redeploy(opts, report, exporter)
        with _holding(opts, "covidct redeploy"):
            return _redeploy(opts, report, exporter)


def _redeploy(opts: DeployOptions, report: Reporter, exporter: Exporter) -> dict[str, Any]:
    """The redeploy's phases: recover, train, evaluate, gate, export-load-smoke, switch."""
    assert opts.data is not None  # checked by redeploy()
    recovered = None if opts.dry_run else recover(opts, report)
    if recovered and recovered["outcome"].startswith("interrupted after the switch"):
        same = opts.run is not None and recovered.get("source_run") == str(opts.run.resolve())
        if same:
            return recovered  # the interrupted redeploy of this run is now complete
    newest = max(versions(opts.model_dir) or [0])
    state = Deployment.new_state("redeploy", data=str(opts.data.resolve()), newest_before=newest)
    d = Deployment(opts, report, state)
    candidate = _train_step(d)
    state["source_run"] = str(candidate.resolve())
    state["from_version"] = _serving_version(d)
    split = opts.gate_split
    sha = data_split_sha(opts.data, split)
    state["gate_split"] = split
    state[f"{split}_split_sha256"] = sha
    _evaluate_step(d, candidate, opts.data, sha)
    if not _gate_step(d, candidate, sha):
        return d.finish("rejected")
    if opts.dry_run:
        return d.finish("dry-run: would promote")
    _export_load_smoke(d, candidate, exporter)
    return _switch_and_settle(d)


def _logged_step(d: Deployment, name: str, fn: Callable[[], str]) -> None:
    """``d.step``, for a step before anything changed: a failure ends the log entry."""
    try:
        d.step(name, fn)
    except Exception as e:  # logged, then reported by the caller
        d.finish(f"failed: {e}")
        raise


def _train_step(d: Deployment) -> Path:
    """Step ``train``: the candidate run, trained now (``--train-config``) or a finished one."""
    run = d.opts.run

    def train_step() -> str:
        nonlocal run
        if run is None:
            run = _train(d.opts)
            return f"trained {run}"
        if not (run / "saved_model" / "saved_model.pb").is_file():
            raise DeployError(f"{run} has no SavedModel: not a finished run")
        return f"finished run {run}"

    _logged_step(d, "train", train_step)
    assert run is not None
    return run


def _evaluate_step(d: Deployment, candidate: Path, data: Path, sha: str) -> None:
    """Step ``evaluate``: candidate's and production's figures on the gate's split ``sha``."""
    opts = d.opts
    split = opts.gate_split

    def evaluate_step() -> str:
        cand, cand_src = candidate_figures(candidate, data, sha, opts.cache_root, split)
        history = opts.deployment_log.read()
        prod, prod_src = production_figures(
            opts.model_dir, d.old, data, sha, history, opts.cache_root, split
        )
        d.state["metrics"] = {"candidate": cand, "production": prod}
        return f"candidate: {cand_src}; production v{d.old}: {prod_src}"

    _logged_step(d, "evaluate", evaluate_step)


def _gate_step(d: Deployment, candidate: Path, sha: str) -> bool:
    """Step ``gate``: whether the candidate may replace production (every reason logged)."""
    decision = decide(
        d.state["metrics"]["candidate"],
        d.state["metrics"]["production"],
        d.opts.tolerances,
        sha,
        production_split_sha(d.opts.model_dir, d.old, d.opts.gate_split),
        run_split_sha(candidate, d.opts.gate_split),
        d.opts.gate_split,
    )
    d.state["gate"] = decision.to_dict()

    def gate_step() -> str:
        if not decision.promote:
            failed = [r for r in decision.reasons if not r.endswith(": ok") and "matches" not in r]
            raise DeployError("gate rejected the candidate: " + "; ".join(failed))
        return "promote: no figure worse beyond its tolerance"

    try:
        d.step("gate", gate_step)
    except DeployError:
        return False
    return True


def _export_load_smoke(d: Deployment, candidate: Path, exporter: Exporter) -> None:
    """Steps ``export``, ``load`` and ``smoke``: the candidate as the next version, served
    beside the old one and checked through Triton. On a failure the new version is unloaded
    and removed, and the old one serves alone as before."""
    opts, state = d.opts, d.state

    def export_step() -> str:
        remove_orphans(opts.model_dir, state["newest_before"])
        serving = TritonOptions(**read_manifest(opts.model_dir, d.old).get("serving", {}))
        try:
            manifest = exporter(candidate, opts.repository, serving)
        except CovidctError as e:  # the export's own refusal: the repository is untouched
            raise DeployError(f"export failed: {e}") from e
        state["to_version"] = int(manifest["version"])
        state["created_version"] = True
        return f"version {manifest['version']} written to {opts.model_dir}"

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
    """Switch back to ``to`` (default: the version the last redeploy replaced).

    Raises:
        DeployError: a step failed (the entry was logged and the serving version still
            serves), or another export, redeploy or rollback holds the repository.
    """
    with _as_deploy_error(), _holding(opts, "covidct rollback"):
        return _rollback(opts, report, to)


def _rollback(opts: DeployOptions, report: Reporter, to: int | None) -> dict[str, Any]:
    """The rollback's phases: recover, choose the version, load, smoke, switch."""
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
