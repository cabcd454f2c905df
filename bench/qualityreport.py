"""``covidct bench quality``'s figures: per run, per recipe over seeds, and the report.

Per run (its val and test probabilities, bench/quality.py): slice figures on val and test;
the series rule chosen on the val scans (training/verdicts.py) and, under it, the test
figures per scan (one CT series) and per patient (all of a patient's scans); every candidate
rule's figures on val and test; ECE before and after the run's temperature (fitted on val).
Per recipe: the median and range over seeds. The recipe named best is the one with the best
median val macro-F1: test figures never choose anything.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidct.config import CLASS_NAMES
from training.metrics import (
    apply_temperature,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    plot_confusion_matrix,
    plot_reliability,
    plot_roc,
)
from training.verdicts import CANDIDATES, choose_rule, group_report

#: The figures of the recipe table: (key in a run's figures, column heading).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("test_accuracy", "slice acc."),
    ("test_macro_f1", "macro-F1"),
    ("test_covid_sensitivity", "COVID-19 sens."),
    ("test_covid_ppv", "COVID-19 PPV"),
    ("test_pneumonia_sensitivity", "Pneum. sens."),
    ("test_pneumonia_ppv", "Pneum. PPV"),
    ("test_scan_accuracy", "scan acc."),
    ("test_patient_accuracy", "patient acc."),
    ("val_macro_f1", "val macro-F1"),
)

#: The issue's goals on the test split, median over seeds (figure key, goal).
GOALS: tuple[tuple[str, float], ...] = (
    ("test_accuracy", 0.92),
    ("test_covid_sensitivity", 0.90),
    ("test_covid_ppv", 0.85),
    ("test_scan_accuracy", 0.90),
    ("test_patient_accuracy", 0.90),
)


def _split(preds: dict[str, Any], split: str) -> tuple[np.ndarray, ...]:
    return tuple(preds[f"{split}_{k}"] for k in ("probs", "labels", "scans", "patients"))


def run_figures(preds: dict[str, Any]) -> dict[str, Any]:
    """Every figure of one run from its val and test predictions (calibrated, as served)."""
    temperature = float(preds["temperature"])
    val_p, val_y, val_scans, val_patients = _split(preds, "val")
    test_p, test_y, test_scans, test_patients = _split(preds, "test")
    rule, _ = choose_rule(val_y, val_p, val_scans)
    val, test = classification_report(val_y, val_p), classification_report(test_y, test_p)
    scans = group_report(test_y, test_p, test_scans, rule)
    patients = group_report(test_y, test_p, test_patients, rule)
    covid, pneumonia = test["per_class"][CLASS_NAMES[2]], test["per_class"][CLASS_NAMES[1]]
    rules = {}
    for candidate in CANDIDATES:
        row = {}
        for split, (p, y, s, pt) in (
            ("val", (val_p, val_y, val_scans, val_patients)),
            ("test", (test_p, test_y, test_scans, test_patients)),
        ):
            sr, pr = group_report(y, p, s, candidate), group_report(y, p, pt, candidate)
            row[f"{split}_scan_macro_f1"] = sr["macro_f1"] if sr else None
            row[f"{split}_scan_accuracy"] = sr["accuracy"] if sr else None
            row[f"{split}_patient_accuracy"] = pr["accuracy"] if pr else None
        rules[candidate.name] = row
    # The served probabilities are calibrated; softmax(log p x T) undoes the temperature.
    return {
        "temperature": temperature,
        "rule": rule.name,
        "val_accuracy": val["accuracy"],
        "val_macro_f1": val["macro_f1"],
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_covid_sensitivity": covid["sensitivity"],
        "test_covid_ppv": covid["ppv"],
        "test_pneumonia_sensitivity": pneumonia["sensitivity"],
        "test_pneumonia_ppv": pneumonia["ppv"],
        "test_normal_sensitivity": test["per_class"][CLASS_NAMES[0]]["sensitivity"],
        "test_normal_ppv": test["per_class"][CLASS_NAMES[0]]["ppv"],
        "test_scan_accuracy": scans["accuracy"] if scans else None,
        "test_scan_macro_f1": scans["macro_f1"] if scans else None,
        "test_scan_covid_ppv": scans["per_class"][CLASS_NAMES[2]]["ppv"] if scans else None,
        "test_patient_accuracy": patients["accuracy"] if patients else None,
        "test_scans": scans["count"] if scans else 0,
        "test_patients": patients["count"] if patients else 0,
        "val_ece_before": expected_calibration_error(
            apply_temperature(val_p, 1 / temperature), val_y
        ),
        "val_ece_after": expected_calibration_error(val_p, val_y),
        "test_ece_before": expected_calibration_error(
            apply_temperature(test_p, 1 / temperature), test_y
        ),
        "test_ece_after": expected_calibration_error(test_p, test_y),
        "test_confusion": confusion_matrix(test_y, test_p.argmax(axis=1)).tolist(),
        "rules": rules,
    }


def spread(values: Sequence[float | None]) -> dict[str, float] | None:
    """Median, minimum and maximum of the values that exist."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def recipe_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range over seeds of every figure of the recipe table and ECE."""
    keys = [k for k, _ in COLUMNS] + [
        "test_ece_before",
        "test_ece_after",
        "val_ece_before",
        "val_ece_after",
        "test_scan_covid_ppv",
        "train_seconds",
    ]
    return {k: spread([r.get(k) for r in runs]) for k in keys} | {
        "rules_chosen": [r["rule"] for r in runs],
        "seeds": [r["seed"] for r in runs],
    }


def best_recipe(summaries: dict[str, dict[str, Any]]) -> str:
    """The recipe with the best median val macro-F1 (3 seeds or more preferred)."""
    full = {n: s for n, s in summaries.items() if (s["val_macro_f1"] or {}).get("n", 0) >= 3}
    pool = full or summaries
    return max(pool, key=lambda n: (pool[n]["val_macro_f1"] or {}).get("median", -1.0))


def _pct(s: dict[str, float] | None) -> str:
    if s is None:
        return "-"
    if s["n"] == 1:
        return f"{100 * s['median']:.1f}"
    return f"{100 * s['median']:.1f} ({100 * s['min']:.1f}-{100 * s['max']:.1f})"


def recipe_table(summaries: dict[str, dict[str, Any]], what: dict[str, str]) -> list[str]:
    heads = " | ".join(h for _, h in COLUMNS)
    lines = [
        f"| recipe | seeds | {heads} | ECE before -> after |",
        "|---|---:|" + "---:|" * (len(COLUMNS) + 1),
    ]
    for name, s in summaries.items():
        ece = (
            f"{s['test_ece_before']['median']:.3f} -> {s['test_ece_after']['median']:.3f}"
            if s["test_ece_before"] and s["test_ece_after"]
            else "-"
        )
        cells = " | ".join(_pct(s[k]) for k, _ in COLUMNS)
        lines.append(f"| {name}: {what.get(name, '')} | {len(s['seeds'])} | {cells} | {ece} |")
    return lines


def rule_table(runs: list[dict[str, Any]]) -> list[str]:
    """Every candidate rule, median over the recipe's seeds, val beside test."""
    cols = (
        ("val_scan_macro_f1", "val scans macro-F1"),
        ("val_scan_accuracy", "val scans acc."),
        ("val_patient_accuracy", "val patients acc."),
        ("test_scan_accuracy", "test scans acc."),
        ("test_patient_accuracy", "test patients acc."),
    )
    lines = [
        "| rule | " + " | ".join(h for _, h in cols) + " | chosen (seeds) |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for rule in CANDIDATES:
        cells = [_pct(spread([r["rules"][rule.name][k] for r in runs])) for k, _ in cols]
        chosen = sum(r["rule"] == rule.name for r in runs)
        lines.append(f"| {rule.name} | " + " | ".join(cells) + f" | {chosen or ''} |")
    return lines


def goal_lines(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| goal (test split, median over seeds) | needed | measured | met |",
        "|---|---:|---:|---|",
    ]
    names = dict(COLUMNS)
    for key, goal in GOALS:
        s = summary.get(key)
        met = "-" if s is None else ("yes" if s["median"] >= goal else "**no**")
        lines.append(f"| {names[key]} | {100 * goal:.0f}% | {_pct(s)} | {met} |")
    return lines


def plots(out: Path, name: str, preds: list[dict[str, Any]]) -> list[Path]:
    """Confusion matrix, per-class ROC and reliability diagram (before and after the
    temperature) of one recipe, the test slices of all its seeds pooled."""
    y = np.concatenate([p["test_labels"] for p in preds])
    probs = np.concatenate([p["test_probs"] for p in preds])
    before = np.concatenate(
        [apply_temperature(p["test_probs"], 1 / float(p["temperature"])) for p in preds]
    )
    n = len(preds)
    paths = [
        out / f"{name}-confusion.png",
        out / f"{name}-roc.png",
        out / f"{name}-reliability.png",
    ]
    cm = confusion_matrix(y, probs.argmax(axis=1))
    plot_confusion_matrix(cm, paths[0], f"{name}: test slices, {n} seeds pooled")
    plot_roc(y, probs, paths[1], f"{name}: test, one-vs-rest ROC ({n} seeds)")
    plot_reliability(y, probs, paths[2], f"{name}: test calibration ({n} seeds)", before=before)
    return paths


def quality_section(
    data: Path,
    recipes: Sequence[Any],
    summaries: dict[str, dict[str, Any]],
    runs: dict[str, list[dict[str, Any]]],
    best: str,
    pictures: Sequence[Path],
    base: Sequence[str],
    missing: Sequence[str] = (),
    carried: Sequence[str] = (),
) -> str:
    """The BENCHMARKS.md section: what the data is, the recipes (each ``base`` plus its own
    options), the goals, the rules."""
    from bench.sweep import rel

    what = {r.name: r.what for r in recipes}
    b = summaries[best]
    lines = [
        "## covidct bench quality (real CT, 128x128, 208 patients)",
        "",
        f"Data: `{data.name}`, real COVIDx-CT v1 slices of the CNCB collection downscaled to "
        "128x128 (body box stretched to a square), split by patient: train 2,718 slices / 144 "
        "patients, val 330 / 32, test 573 / 32 (5 Normal, 18 Pneumonia, 9 COVID-19 patients). "
        "**Not comparable with published COVIDx-CT figures**, which use 512x512 inputs on the "
        "official test split and many more patients; with 32 test patients one patient moves "
        "patient accuracy by 3 points.",
        "",
        f"Every recipe: `covidct train {' '.join(base)}` plus its own options, one process per "
        "run on this machine's CPU (see the top), two at a time with one thread each (the "
        "epoch times of each sitting are in its reading below; no training times are tabled, "
        "since runs shared the cores with other work); the table gives the median over seeds and, "
        "in brackets, the range. Test figures are the calibrated model's (as served); ECE is "
        "top-label ECE on the test slices before -> after the temperature fitted on val. The "
        "series rule of each run is chosen on its val scans; scan = one CT series, patient = "
        "all of a patient's scans, both judged by that rule.",
        "",
        *recipe_table(summaries, what),
        "",
        f"**Best on val (median val macro-F1): `{best}`** ({what.get(best, '')}); rules "
        f"chosen on val per seed: {', '.join(b['rules_chosen'])}.",
        "",
        *goal_lines(b),
        "",
        f"Series rules for `{best}` (median over its seeds; 'chosen' counts the seeds whose "
        "val scans chose the rule):",
        "",
        *rule_table(runs[best]),
        "",
        "Pictures (test slices of every seed pooled): "
        + ", ".join(f"[{p.name}]({rel(p)})" for p in pictures)
        + ".",
        "",
    ]
    if carried:
        lines += [
            "Carried as recorded from an earlier sitting (their run folders are not kept; the "
            f"figures are that sitting's): {', '.join(carried)}.",
            "",
        ]
    if missing:
        lines += [
            f"Not run in this sitting (the plan's runs that had not finished): "
            f"{', '.join(missing)}.",
            "",
        ]
    return "\n".join(lines)
