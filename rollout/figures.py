"""Figures of the candidate and of production on one split, for the redeploy gate.

Both are judged on the gate's split (``--gate-split``: test by default, or val) of the folder
given to ``covidct redeploy``. The candidate's figures are reused when its run already holds
an evaluation of that very label file (by sha256), else ``covidct evaluate``'s code runs its
SavedModel. Production's come from the deployment log when a previous redeploy measured them
on the same file, else its served artifact (the version's model.onnx) runs on the prepared
cache of the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from covidct.config import ModelSpec
from covidct.dataset import label_file
from export.repository import read_manifest
from rollout.control import DeployError
from rollout.gate import headline

log = logging.getLogger(__name__)


def data_split_sha(data: Path, split: str = "test") -> str:
    """sha256 of ``data``'s label file of ``split``: the split the gate compares figures on.

    Raises:
        DeployError: ``data`` has no such split.
    """
    path = label_file(data, split)
    if not path.is_file():
        raise DeployError(f"{data} has no {split} split ({path.name}): the gate needs one")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_splits(run: Path) -> dict[str, str]:
    path = run / "data_fingerprint.json"
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def run_split_sha(run: Path, split: str = "test") -> str | None:
    """The ``split`` label file of the data a run was trained with (None when not recorded)."""
    return _run_splits(run).get(split)


def candidate_figures(
    run: Path, data: Path, data_sha: str, cache_root: Path | None, split: str = "test"
) -> tuple[dict[str, float], str]:
    """The candidate's gated figures on ``data``'s ``split``, and where they came from."""
    metrics = run / "metrics.json"
    if run_split_sha(run, split) == data_sha and metrics.is_file():
        report = json.loads(metrics.read_text()).get(split)
        if report:
            return headline(report), f"stored with the run (same {split} split)"
    stored = run / f"eval-{split}" / "metrics.json"
    if stored.is_file():
        payload = json.loads(stored.read_text())
        if payload.get("split_sha256") == data_sha:
            return headline(payload[split]), f"stored evaluation (same {split} split)"
    from training.report import evaluate_run

    evaluate_run(run, data, split, cache_root=cache_root)
    return headline(json.loads(stored.read_text())[split]), "evaluated now"


def production_split_sha(model_dir: Path, version: int, split: str = "test") -> str | None:
    """The ``split`` label file of production's data: its manifest, else its source run."""
    manifest = read_manifest(model_dir, version)
    sha = (manifest.get("data_splits") or {}).get(split)
    if sha:
        return str(sha)
    source = manifest.get("source_run")
    return run_split_sha(Path(source), split) if source else None


def evaluate_version(
    model_dir: Path, version: int, data: Path, cache_root: Path | None, split: str = "test"
) -> dict[str, Any]:
    """Classification report of a served version's model.onnx on ``data``'s ``split``."""
    import numpy as np

    from export.onnx import onnx_session, run_onnx
    from training.cache import PreparedCache
    from training.metrics import classification_report
    from training.run import prepare_for_training

    spec = ModelSpec.from_dict(read_manifest(model_dir, version)["model_spec"])
    cache_dir, _ = prepare_for_training(data, spec.image_size, cache_root)
    cache = PreparedCache(cache_dir)
    images = cache.images(split)
    labels = cache.index(split)["labels"].astype(np.int64)
    session = onnx_session(model_dir / str(version) / "model.onnx")
    probs = np.concatenate(
        [
            run_onnx(session, spec, images[i : i + 32])[spec.probabilities_name]
            for i in range(0, len(images), 32)
        ]
    )
    return classification_report(labels, probs)


def production_figures(
    model_dir: Path,
    version: int,
    data: Path,
    data_sha: str,
    history: list[dict[str, Any]],
    cache_root: Path | None,
    split: str = "test",
) -> tuple[dict[str, float], str]:
    """Production's gated figures on ``data``'s ``split``, and where they came from."""
    for entry in reversed(history):
        if (
            entry.get("outcome") == "deployed"
            and str(entry.get("to_version")) == str(version)
            and entry.get("gate_split", "test") == split
            and entry.get(f"{split}_split_sha256") == data_sha
            and (entry.get("metrics") or {}).get("candidate")
        ):
            return dict(entry["metrics"]["candidate"]), f"deployment log (same {split} split)"
    report = evaluate_version(model_dir, version, data, cache_root, split)
    return headline(report), "evaluated now"
