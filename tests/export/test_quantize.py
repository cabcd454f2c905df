"""The INT8 gate: top-1 agreement with fp32 on the slices where fp32 has a clear answer."""

from __future__ import annotations

import numpy as np
import pytest

from export.onnx import ExportError
from export.quantize import NEAR_TIE_MARGIN, judge_agreement


def _probs(rows: list[tuple[float, float, float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


DECISIVE = [(0.8, 0.1, 0.1)] * 99  # 99 slices with a clear answer (class 0)


CLEAR, CLEAR_FLIPPED = (0.6, 0.3, 0.1), (0.3, 0.6, 0.1)
TIE, TIE_FLIPPED = (0.46, 0.45, 0.09), (0.45, 0.46, 0.09)


@pytest.mark.parametrize(
    ("fp32_extra", "int8_extra", "decisive_agreement"),
    [
        ([], [], 1.0),  # identical answers
        ([TIE], [TIE_FLIPPED], 1.0),  # a flip on a near tie is reported, not counted
        ([CLEAR], [CLEAR_FLIPPED], 0.99),  # one clear flip in 100: the boundary passes
        ([CLEAR, CLEAR], [CLEAR_FLIPPED, CLEAR_FLIPPED], None),  # 99/101: refused
        ([TIE, CLEAR, CLEAR], [TIE_FLIPPED, CLEAR_FLIPPED, CLEAR_FLIPPED], None),
    ],
)
def test_gate_table(fp32_extra, int8_extra, decisive_agreement: float | None) -> None:
    fp32, int8 = _probs([*DECISIVE, *fp32_extra]), _probs([*DECISIVE, *int8_extra])
    if decisive_agreement is None:
        with pytest.raises(ExportError, match="the version was not written"):
            judge_agreement(fp32, int8)
        return
    figures = judge_agreement(fp32, int8)
    assert figures["top1_agreement_decisive"] == pytest.approx(decisive_agreement)
    flips = int((fp32.argmax(1) != int8.argmax(1)).sum())
    assert figures["top1_agreement"] == pytest.approx(1 - flips / len(fp32))


def test_figures_report_every_slice() -> None:
    fp32 = _probs([*DECISIVE, (0.5, 0.49, 0.01)])
    int8 = _probs([*DECISIVE, (0.49, 0.5, 0.01)])
    figures = judge_agreement(fp32, int8)
    assert figures["top1_agreement"] == pytest.approx(99 / 100)
    assert figures["decisive_slices"] == 99 and figures["flips_near_tie"] == 1
    assert figures["max_abs_prob_diff"] == pytest.approx(0.01, abs=1e-6)


def test_a_model_without_clear_answers_cannot_be_judged() -> None:
    ties = _probs([(0.5, 0.5 - NEAR_TIE_MARGIN / 2, NEAR_TIE_MARGIN / 2)] * 10)
    with pytest.raises(ExportError, match="cannot be judged"):
        judge_agreement(ties, ties)
