"""Series verdicts measured: per scan and per patient, and the rule chosen on val.

A COVIDx-CT slice name carries its patient and, for CNCB names, its scan
(``NCP_96_1328_0032``: patient ``NCP_96``, scan 1328). A *scan* is one CT series (what the
DICOM node sees); a *patient* may have several scans. The rule (covidct/series.py) is applied
to every group's slices; a group's true class is its slices' majority class (in COVIDx-CT
all slices of a patient carry one class).

The rule is chosen on the validation scans, by macro-F1 (then accuracy, then the order of
CANDIDATES, simplest first): the test split never takes part in the choice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from covidct.config import CLASS_NAMES
from covidct.dataset import scan_id
from covidct.series import SeriesRule, verdicts
from training.metrics import classification_report

#: The rules tried on val, simplest first (the first of equals wins).
CANDIDATES: tuple[SeriesRule, ...] = (
    SeriesRule("mean"),
    *(SeriesRule("top-k-mean", k) for k in (3, 5, 10)),
    SeriesRule("max"),
    *(SeriesRule("count", k, t) for k in (1, 2, 3, 5) for t in (0.5, 0.7, 0.9)),
)


def group_report(
    y_true: np.ndarray, probs: np.ndarray, groups: np.ndarray, rule: SeriesRule
) -> dict[str, Any] | None:
    """The classification report over groups (scans or patients), each judged by ``rule``;
    None when every slice is its own group (nothing to summarise)."""
    groups = np.asarray(groups)
    ids = sorted(set(groups.tolist()))
    if not ids or len(ids) == len(groups):
        return None
    _, predicted = verdicts(rule, probs, groups)
    truth = np.array(
        [np.bincount(y_true[groups == g], minlength=len(CLASS_NAMES)).argmax() for g in ids]
    )
    # classification_report reads a label from argmax: one-hot verdicts carry them exactly.
    report = classification_report(truth, np.eye(len(CLASS_NAMES))[predicted])
    report["rule"] = rule.name
    # Verdicts are labels, not probabilities: no AUC or calibration to speak of.
    report["ece"] = None
    for figures in report["per_class"].values():
        figures["roc_auc"] = None
    return report


def scans_of(filenames: np.ndarray) -> np.ndarray:
    return np.array([scan_id(str(f)) for f in filenames])


def choose_rule(
    y_true: np.ndarray, probs: np.ndarray, scans: np.ndarray
) -> tuple[SeriesRule, list[dict[str, Any]]]:
    """The candidate with the best validation macro-F1 over scans, and every candidate's
    figures (name, macro-F1, accuracy) in CANDIDATES order."""
    table = []
    for rule in CANDIDATES:
        report = group_report(y_true, probs, scans, rule)
        if report is None:  # one slice per scan: every rule is the slice's own answer
            return SeriesRule(), []
        table.append(
            {"rule": rule.name, "macro_f1": report["macro_f1"], "accuracy": report["accuracy"]}
        )
    best = max(
        range(len(CANDIDATES)),
        key=lambda i: (round(table[i]["macro_f1"], 9), round(table[i]["accuracy"], 9), -i),
    )
    return CANDIDATES[best], table


def series_reports(
    y_true: np.ndarray,
    probs: np.ndarray,
    patients: np.ndarray,
    filenames: np.ndarray,
    rule: SeriesRule,
) -> dict[str, Any]:
    """``scan_level`` and ``patient_level`` reports under ``rule`` (None where not defined)."""
    return {
        "scan_level": group_report(y_true, probs, scans_of(filenames), rule),
        "patient_level": group_report(y_true, probs, patients, rule),
    }
