"""Per-scan and per-patient figures and the rule chosen on val, on hand-made series."""

from __future__ import annotations

import numpy as np

from covidct.dataset import patient_id, scan_id
from covidct.series import SeriesRule
from training.verdicts import CANDIDATES, choose_rule, group_report, scans_of, series_reports


def test_scan_and_patient_ids_from_cncb_names() -> None:
    assert scan_id("NCP_96_1328_0032.png") == "NCP_96_1328"
    assert patient_id("NCP_96_1328_0032.png") == "NCP_96"
    assert scan_id("COVIDCTMD-P001-IM0038.png") == "COVIDCTMD-P001"


def _series(pattern: list[tuple[str, int, list[int]]]) -> tuple[np.ndarray, ...]:
    """(scan, true class, per-slice predicted classes) -> labels, probs, files."""
    labels, probs, files = [], [], []
    for scan, truth, preds in pattern:
        for i, pred in enumerate(preds):
            p = np.full(3, 0.1)
            p[pred] = 0.8
            labels.append(truth)
            probs.append(p)
            files.append(f"{scan}_{i:04d}.png")
    return np.array(labels), np.array(probs), np.array(files)


# COVID-19 scans where most slices look Normal: the mean misses them, max and count find them.
VAL = [
    ("NCP_1_10", 2, [0, 0, 0, 2, 2]),
    ("NCP_2_20", 2, [0, 0, 0, 0, 2]),
    ("Normal_3_30", 0, [0, 0, 0, 0, 0]),
    ("Normal_4_40", 0, [0, 0, 0, 0]),
    ("CP_5_50", 1, [1, 1, 0, 1]),
]


def test_rule_chosen_on_val_finds_the_sparse_lesions() -> None:
    y, probs, files = _series(VAL)
    rule, table = choose_rule(y, probs, scans_of(files))
    assert len(table) == len(CANDIDATES) and table[0]["rule"] == "mean"
    assert table[0]["accuracy"] == 0.6  # the mean calls both COVID-19 scans Normal
    assert rule != SeriesRule("mean")
    best = group_report(y, probs, scans_of(files), rule)
    assert best is not None and best["accuracy"] == 1.0 and best["rule"] == rule.name


def test_ties_go_to_the_simpler_rule() -> None:
    y, probs, files = _series([("NCP_1_10", 2, [2, 2]), ("Normal_3_30", 0, [0, 0])])
    rule, _ = choose_rule(y, probs, scans_of(files))
    assert rule == SeriesRule("mean")


def test_scans_and_patients_are_different_groups() -> None:
    # Patient NCP_1 has two scans; one is called COVID-19, one Normal by the mean.
    y, probs, files = _series(
        [("NCP_1_10", 2, [2, 2]), ("NCP_1_11", 2, [0, 0, 0]), ("Normal_3_30", 0, [0, 0])]
    )
    patients = np.array([patient_id(f) for f in files])
    reports = series_reports(y, probs, patients, files, SeriesRule("mean"))
    assert reports["scan_level"]["count"] == 3 and reports["patient_level"]["count"] == 2
    assert reports["scan_level"]["accuracy"] == 2 / 3
    # Patient NCP_1's slices: 2 COVID-19, 3 Normal -> mean is Normal: wrong.
    assert reports["patient_level"]["accuracy"] == 0.5


def test_one_slice_per_group_has_no_group_report() -> None:
    y, probs, files = _series([("NCP_1_10", 2, [2]), ("NCP_2_20", 0, [0])])
    assert group_report(y, probs, scans_of(files), SeriesRule("mean")) is None
    assert choose_rule(y, probs, scans_of(files)) == (SeriesRule("mean"), [])
