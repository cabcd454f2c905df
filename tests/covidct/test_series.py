"""Series rules worked by hand: each kind's scores and verdict, the count rule's tie order,
bad rules refused, and the rule's round trip through a ModelSpec."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.config import ModelSpec, SpecError
from covidct.series import SeriesRule, SeriesRuleError, verdicts

# Ten slices of a COVID-19 scan: eight look Normal, two show the lesion clearly.
SCAN = np.array([[0.8, 0.1, 0.1]] * 8 + [[0.05, 0.05, 0.9], [0.1, 0.1, 0.8]])


@pytest.mark.parametrize(
    ("rule", "scores", "verdict"),
    [
        (SeriesRule("mean"), [0.655, 0.095, 0.25], 0),
        (SeriesRule("top-k-mean", 2), [0.8, 0.1, 0.85], 2),
        (SeriesRule("top-k-mean", 3), [0.8, 0.1, 0.6], 0),
        (SeriesRule("max"), [0.8, 0.1, 0.9], 2),
        (SeriesRule("count", 2, 0.8), [8, 0, 2], 2),
        (SeriesRule("count", 3, 0.8), [8, 0, 2], 0),
        (SeriesRule("count", 2, 0.85), [0, 0, 1], 0),
    ],
)
def test_scores_and_verdict_by_hand(rule: SeriesRule, scores: list[float], verdict: int) -> None:
    assert rule.scores(SCAN) == pytest.approx(scores)
    assert rule.verdict(SCAN) == verdict


def test_top_k_with_fewer_slices_averages_them_all() -> None:
    two = SCAN[-2:]
    assert SeriesRule("top-k-mean", 10).scores(two) == pytest.approx(two.mean(axis=0))


def test_count_rule_larger_count_wins_and_covid_on_a_tie() -> None:
    p = np.array([[0.1, 0.9, 0.0], [0.1, 0.9, 0.0], [0.1, 0.0, 0.9], [0.1, 0.0, 0.9]])
    assert SeriesRule("count", 1, 0.5).verdict(p) == 2  # 2 vs 2: COVID-19
    assert SeriesRule("count", 1, 0.5).verdict(p[:3]) == 1  # 2 Pneumonia vs 1 COVID-19


def test_verdicts_per_group_in_sorted_order() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7]])
    ids, v = verdicts(SeriesRule("mean"), probs, np.array(["b", "a", "a"]))
    assert ids == ["a", "b"] and v.tolist() == [2, 0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "median"},
        {"kind": "count", "k": 0},
        {"kind": "count", "threshold": 0.0},
        {"kind": "mean", "k": True},
        {"kind": "count", "threshold": 1.5},
    ],
)
def test_bad_rules_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(SeriesRuleError):
        SeriesRule(**kwargs)  # type: ignore[arg-type]


def test_no_slices_is_an_error_not_a_nan() -> None:
    with pytest.raises(SeriesRuleError, match="series needs"):
        SeriesRule("mean").verdict(np.zeros((0, 3)))


def test_names_and_descriptions() -> None:
    assert SeriesRule("top-k-mean", 5).name == "top-5-mean"
    assert SeriesRule("count", 3, 0.7).name == "count-3@0.7"
    assert "at least 3" in SeriesRule("count", 3, 0.7).describe()


def test_rule_round_trips_through_the_spec_and_old_specs_read_as_mean() -> None:
    spec = ModelSpec(series_rule=SeriesRule("count", 3, 0.7))
    assert ModelSpec.from_json(spec.to_json()) == spec
    old = spec.to_dict()
    del old["series_rule"]
    assert ModelSpec.from_dict(old).series_rule == SeriesRule("mean")
    with pytest.raises(SpecError, match="unknown series_rule field"):
        ModelSpec.from_dict({**spec.to_dict(), "series_rule": {"kind": "mean", "q": 1}})
    with pytest.raises(SpecError, match="series rule kind"):
        ModelSpec.from_dict({**spec.to_dict(), "series_rule": {"kind": "vote"}})
