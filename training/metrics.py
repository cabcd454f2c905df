"""Evaluation figures, calibration, and the pictures people look at.

Pure NumPy (plots with matplotlib's Agg backend), so the figures are easy to check by hand:
accuracy; per class sensitivity (recall), PPV (precision), specificity and F1; macro-F1;
one-vs-rest ROC-AUC; the confusion matrix (rows true, columns predicted); expected
calibration error and the reliability diagram. Figures per scan and per patient, judged by
the spec's series rule, are in training/verdicts.py.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from covidct.config import CLASS_NAMES

ECE_BINS = 15


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int = 3) -> np.ndarray:
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tie correction); None if one-class."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_calibration_error(
    probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Top-label ECE: sum over confidence bins of |accuracy - confidence| x bin weight."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same as softmax(logits / T), since softmax ignores shifts."""
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature minimising validation negative log-likelihood (bounded search)."""

    def nll(t: float) -> float:
        p = apply_temperature(probs, t)
        return float(-np.log(np.clip(p[np.arange(len(y_true)), y_true], 1e-12, 1)).mean())

    res = minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded")
    return float(res.x)


def classification_report(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """All slice-level figures as a JSON-ready dict."""
    k = len(CLASS_NAMES)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, k)
    total = cm.sum()
    per_class = {}
    for c, name in enumerate(CLASS_NAMES):
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = total - tp - fn - fp
        sens, ppv = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        per_class[name] = {
            "support": int(cm[c].sum()),
            "sensitivity": sens,
            "ppv": ppv,
            "specificity": _ratio(tn, tn + fp),
            "f1": f1,
            "roc_auc": roc_auc(probs[:, c], y_true == c),
        }
    f1s = [v["f1"] if v["f1"] is not None else 0.0 for v in per_class.values()]
    return {
        "count": int(total),
        "accuracy": _ratio(np.trace(cm), total),
        "macro_f1": float(np.mean(f1s)),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "ece": expected_calibration_error(probs, y_true) if total else None,
    }


def format_table(report: dict[str, Any], title: str) -> str:
    """The per-class table in the layout COVID-Net CT publishes (sensitivity and PPV, %)."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}"

    names = list(CLASS_NAMES)
    lines = [
        f"{title}: accuracy {pct(report['accuracy'])}%, macro-F1 {pct(report['macro_f1'])}%, "
        f"n={report['count']}",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| Sensitivity (%) | "
        + " | ".join(pct(report["per_class"][n]["sensitivity"]) for n in names)
        + " |",
        "| PPV (%) | " + " | ".join(pct(report["per_class"][n]["ppv"]) for n in names) + " |",
        "| Specificity (%) | "
        + " | ".join(pct(report["per_class"][n]["specificity"]) for n in names)
        + " |",
        "| F1 (%) | " + " | ".join(pct(report["per_class"][n]["f1"]) for n in names) + " |",
        "| ROC-AUC | "
        + " | ".join(
            "n/a"
            if report["per_class"][n]["roc_auc"] is None
            else f"{report['per_class'][n]['roc_auc']:.3f}"
            for n in names
        )
        + " |",
    ]
    return "\n".join(lines)


def plot_confusion_matrix(cm: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=120)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(3), CLASS_NAMES)
    ax.set_yticks(range(3), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(3):
        for j in range(3):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=120)
    for c, name in enumerate(CLASS_NAMES):
        pos = y_true == c
        if not pos.any() or pos.all():
            continue
        order = np.argsort(-probs[:, c], kind="mergesort")
        tpr = np.concatenate([[0], np.cumsum(pos[order]) / pos.sum()])
        fpr = np.concatenate([[0], np.cumsum(~pos[order]) / (~pos).sum()])
        auc = roc_auc(probs[:, c], pos)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def reliability_bins(
    probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """Per non-empty confidence bin: (mean confidence, accuracy, count): what ECE sums."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    out = []
    for lo, hi in itertools.pairwise(np.linspace(0, 1, bins + 1)):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            out.append(
                (float(conf[inside].mean()), float(correct[inside].mean()), int(inside.sum()))
            )
    return out


def plot_reliability(
    y_true: np.ndarray,
    probs: np.ndarray,
    path: Path,
    title: str,
    before: np.ndarray | None = None,
) -> None:
    """Reliability diagram: accuracy against confidence per bin (the diagonal is perfect
    calibration), with ``before`` (uncalibrated probabilities) beside when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=120)
    series = [("before", before), ("after", probs)] if before is not None else [("", probs)]
    for name, p in series:
        if p is None:
            continue
        points = reliability_bins(p, y_true)
        ece = expected_calibration_error(p, y_true)
        label = f"{name + ': ' if name else ''}ECE {ece:.3f}"
        ax.plot([c for c, _, _ in points], [a for _, a, _ in points], marker="o", label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
