"""After training: calibrate, export the SavedModel, evaluate it, write figures and the card.

Evaluation runs the exported SavedModel's ``serving_default`` signature, the very artifact
that export and serving consume, so the published figures are the served model's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from covidct.config import (
    ModelSpec,
    TrainConfig,
)
from training.card import write_model_card
from training.metrics import (
    apply_temperature,
    classification_report,
    expected_calibration_error,
    fit_temperature,
    format_table,
    plot_confusion_matrix,
    plot_reliability,
    plot_roc,
)
from training.run import (
    SAVED_MODEL,
    SavedModelRunner,
    export_saved_model,
    load_spec,
    prepare_for_training,
)
from training.verdicts import choose_rule, scans_of, series_reports

log = logging.getLogger(__name__)


#: Per-slice answers of a run on val and test, for the quality bench and later analysis.
PREDICTIONS = "predictions.npz"


def evaluate_split(runner: SavedModelRunner, pool: Any, indices: np.ndarray) -> dict[str, Any]:
    """Slice-, scan- and patient-level report of one split (scans and patients judged by the
    spec's series rule), plus the raw probabilities."""
    probs = runner(pool.gather(indices))[runner.spec.probabilities_name]
    y = pool.labels[indices]
    report = classification_report(y, probs)
    report.update(
        series_reports(
            y, probs, pool.patients[indices], pool.filenames[indices], runner.spec.series_rule
        )
    )
    report["_probs"] = probs
    report["_labels"] = y
    return report


def save_predictions(
    path: Path, spec: ModelSpec, pool: Any, splits: dict[str, np.ndarray], probs: dict[str, Any]
) -> None:
    """``predictions.npz``: per split the probabilities, labels, patients, scans and file
    names, and the run's temperature; written atomically."""
    arrays: dict[str, np.ndarray] = {"temperature": np.array(spec.temperature)}
    for split, p in probs.items():
        idx = splits[split]
        arrays[f"{split}_probs"] = np.asarray(p, np.float32)
        arrays[f"{split}_labels"] = pool.labels[idx]
        arrays[f"{split}_patients"] = pool.patients[idx].astype(str)
        arrays[f"{split}_scans"] = scans_of(pool.filenames[idx])
        arrays[f"{split}_files"] = pool.filenames[idx].astype(str)
    tmp = path.with_name("predictions.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def write_figures(report: dict[str, Any], out: Path, split: str, spec: ModelSpec) -> str:
    """metrics.json, confusion_matrix.png and roc.png for one evaluated split; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    probs, y = report.pop("_probs"), report.pop("_labels")
    plot_confusion_matrix(
        np.array(report["confusion_matrix"]),
        out / "confusion_matrix.png",
        f"{spec.name}: {split} (n={len(y)})",
    )
    plot_roc(y, probs, out / "roc.png", f"{spec.name}: {split}, one-vs-rest ROC")
    plot_reliability(y, probs, out / "reliability.png", f"{spec.name}: {split}, calibration")
    table = format_table(report, f"{split} (slices)")
    for level, unit in (("scan_level", "scans"), ("patient_level", "patients")):
        if report.get(level):
            title = f"{split} ({unit}, rule {report[level]['rule']})"
            table += "\n\n" + format_table(report[level], title)
    return table


def finish_run(
    run: Path,
    clf: Any,
    spec: ModelSpec,
    cfg: TrainConfig,
    pool: Any,
    splits: dict[str, np.ndarray],
    train_seconds: float,
) -> dict[str, Any]:
    """Calibrate on val, export, check the export against Keras, evaluate test, write all."""
    import dataclasses

    val_images = pool.gather(splits["val"])
    val_probs = clf.train_model.predict(val_images, verbose=0)
    val_y = pool.labels[splits["val"]]
    calibration: dict[str, Any] = {"ece_before": expected_calibration_error(val_probs, val_y)}
    temperature = 1.0
    if cfg.calibrate:
        temperature = fit_temperature(val_probs, val_y)
        calibration["ece_after"] = expected_calibration_error(
            apply_temperature(val_probs, temperature), val_y
        )
    calibration["temperature"] = temperature
    clf.softmax.set_temperature(temperature)
    # The series rule is chosen on the calibrated val answers, as they will be served.
    rule, candidates = choose_rule(
        val_y, apply_temperature(val_probs, temperature), scans_of(pool.filenames[splits["val"]])
    )
    spec = dataclasses.replace(spec, temperature=temperature, series_rule=rule)

    export_saved_model(clf.serve_model, run / SAVED_MODEL)
    clf.serve_model.save(run / "model.keras")  # the same weights, for Keras users
    spec.save(run / "model_spec.json")
    runner = SavedModelRunner(run / SAVED_MODEL, spec)
    probe = val_images[: min(len(val_images), 16)]
    keras_out = clf.serve_model.predict(probe, verbose=0)
    exported = runner(probe)
    parity = float(
        np.abs(keras_out[spec.probabilities_name] - exported[spec.probabilities_name]).max()
    )

    results: dict[str, Any] = {
        "model": spec.name,
        "backbone": spec.backbone,
        "image_size": spec.image_size,
        "train_seconds": round(train_seconds, 1),
        "splits": {k: len(v) for k, v in splits.items()},
        "calibration": calibration,
        "series_rule": {
            **rule.to_dict(),
            "name": rule.name,
            "description": rule.describe(),
            "chosen_on": "val scans, best macro-F1 (then accuracy, then the simpler rule)",
            "candidates": candidates,
        },
        "saved_model_max_abs_diff": parity,
        "synthetic": spec.provenance.synthetic,
        "intended_use": spec.intended_use(),
    }
    tables, probs = [], {}
    for split in ("val", "test"):
        if len(splits[split]):
            report = evaluate_split(runner, pool, splits[split])
            probs[split] = report["_probs"]
            out = run if split == "test" else run / "val"
            tables.append(write_figures(report, out, split, spec))
            results[split] = report
    save_predictions(run / PREDICTIONS, spec, pool, splits, probs)
    (run / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    write_model_card(run, spec, cfg, results, tables)
    return {**results, "tables": tables}


def evaluate_run(
    run: Path, data: Path, split: str, out: Path | None = None, cache_root: Path | None = None
) -> str:
    """``covidct evaluate``: the run's SavedModel on one split of a folder; returns the table.

    The split is the folder's own, or, when the run was trained with ``--auto-split``, the
    same automatic split (same seed), so "test" means the slices the run never trained on.
    """
    from training.cache import PreparedCache
    from training.data import SlicePool

    spec = load_spec(run)
    cfg_path = run / "train_config.json"
    cfg = (
        TrainConfig.from_json(cfg_path.read_text())
        if cfg_path.is_file()
        else TrainConfig(image_size=spec.image_size)
    )
    cache_dir, ds = prepare_for_training(data, spec.image_size, cache_root)
    pool = SlicePool.open(PreparedCache(cache_dir))
    # Which labels were used: a redeploy compares evaluations only on the same split file.
    split_sha256 = ds.label_file_checksums().get(split) if cfg.auto_split == "none" else None
    if cfg.auto_split != "none":
        indices = pool.splits(cfg.auto_split, cfg.seed)[split]
    else:
        indices = np.flatnonzero(pool.split_of == split)
    if len(indices) == 0:
        raise ValueError(f"{data}: the {split} split is empty")
    runner = SavedModelRunner(run / SAVED_MODEL, spec)
    report = evaluate_split(runner, pool, indices)
    out = out or run / f"eval-{split}"
    table = write_figures(report, out, split, spec)
    payload = {
        "model": spec.name,
        "data": str(data),
        "split": split,
        "split_sha256": split_sha256,
        "intended_use": spec.intended_use(),
        split: report,
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    return table
