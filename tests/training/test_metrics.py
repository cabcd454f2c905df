"""Evaluation figures against a confusion matrix computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import (
    apply_temperature,
    classification_report,
    expected_calibration_error,
    fit_temperature,
    format_table,
    reliability_bins,
    roc_auc,
)


def _probs_for(pred: list[int], confidence: float = 0.8) -> np.ndarray:
    p = np.full((len(pred), 3), (1 - confidence) / 2)
    p[np.arange(len(pred)), pred] = confidence
    return p


def test_report_matches_hand_computed_confusion_matrix() -> None:
    # true:  Normal x4, Pneumonia x3, COVID-19 x3
    # hand-made confusion matrix (rows true, columns predicted):
    #   Normal    [3, 1, 0]
    #   Pneumonia [0, 2, 1]
    #   COVID-19  [1, 0, 2]
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    pred = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
    r = classification_report(y, _probs_for(pred))
    assert r["confusion_matrix"] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert r["accuracy"] == pytest.approx(7 / 10)
    n, p, c = (r["per_class"][k] for k in ("Normal", "Pneumonia", "COVID-19"))
    # Normal: TP 3, FN 1, FP 1, TN 5
    assert n["sensitivity"] == pytest.approx(3 / 4)
    assert n["ppv"] == pytest.approx(3 / 4)
    assert n["specificity"] == pytest.approx(5 / 6)
    assert n["f1"] == pytest.approx(0.75)
    # Pneumonia: TP 2, FN 1, FP 1, TN 6
    assert p["sensitivity"] == pytest.approx(2 / 3)
    assert p["ppv"] == pytest.approx(2 / 3)
    assert p["specificity"] == pytest.approx(6 / 7)
    # COVID-19: TP 2, FN 1, FP 1, TN 6
    assert c["sensitivity"] == pytest.approx(2 / 3)
    assert c["ppv"] == pytest.approx(2 / 3)
    assert c["f1"] == pytest.approx(2 / 3)
    assert r["macro_f1"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)
    assert n["support"] == 4 and r["count"] == 10


def test_undefined_ratios_are_none_not_zero() -> None:
    y = np.array([0, 0, 1, 1])
    r = classification_report(y, _probs_for([0, 0, 0, 1]))
    covid = r["per_class"]["COVID-19"]
    assert covid["sensitivity"] is None and covid["ppv"] is None and covid["roc_auc"] is None
    assert "n/a" in format_table(r, "test")


def test_roc_auc_against_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(bool)
    scores = np.round(rng.random(200) + 0.3 * y, 2)  # rounding makes ties
    assert roc_auc(scores, y) == pytest.approx(roc_auc_score(y, scores))
    assert roc_auc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0


def test_reliability_bins_are_what_ece_sums() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    probs = rng.dirichlet([1, 1, 1], 300)
    bins = reliability_bins(probs, y)
    assert sum(n for _, _, n in bins) == 300
    ece = sum(n / 300 * abs(acc - conf) for conf, acc, n in bins)
    assert ece == pytest.approx(expected_calibration_error(probs, y))


def test_temperature_scaling_reduces_overconfidence() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    # Overconfident: right 70% of the time with confidence 0.98.
    pred = np.where(rng.random(600) < 0.7, y, (y + 1) % 3)
    probs = _probs_for(pred.tolist(), 0.98)
    t = fit_temperature(probs, y)
    assert t > 1.5
    before = expected_calibration_error(probs, y)
    after = expected_calibration_error(apply_temperature(probs, t), y)
    assert after < before / 3
    assert (apply_temperature(probs, t).argmax(1) == probs.argmax(1)).all()
