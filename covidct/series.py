"""Series verdicts: how the slice probabilities of one CT series become one answer.

A rule is part of the ModelSpec (chosen on the validation split when the model is trained,
training/verdicts.py) and is applied wherever a series is summarised: the evaluation per scan
and per patient, the gateway's study summary and the DICOM node's report, which name it.

Kinds:

- ``mean``: per class, the mean of the slice probabilities; the verdict is its argmax.
- ``top-k-mean``: per class, the mean of its ``k`` highest slice probabilities (all slices
  when fewer): a lesion seen on a few slices is not averaged away by many clear ones.
- ``max``: per class, its highest slice probability (``top-k-mean`` with k = 1).
- ``count``: per class, the number of slices whose probability reaches ``threshold``; the
  series is Pneumonia or COVID-19 when that class has at least ``k`` such slices (the
  larger count wins, COVID-19 on a tie), else Normal.

NumPy only: the gateway imports this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from covidct.errors import CovidctError

SERIES_RULE_KINDS = ("mean", "top-k-mean", "max", "count")

#: Class index of Normal, the verdict of a ``count`` series without enough abnormal slices.
_NORMAL = 0


class SeriesRuleError(CovidctError, ValueError):
    """A series rule is invalid; the message says which field and why."""


@dataclass(frozen=True)
class SeriesRule:
    """One way to turn ``[n, classes]`` slice probabilities into a series verdict.

    Attributes:
        kind: one of SERIES_RULE_KINDS.
        k: ``top-k-mean``: slices averaged per class; ``count``: slices needed.
        threshold: ``count``: the probability a slice must reach to count.
    """

    kind: str = "mean"
    k: int = 1
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in SERIES_RULE_KINDS:
            raise SeriesRuleError(
                f"series rule kind {self.kind!r} must be one of {', '.join(SERIES_RULE_KINDS)}"
            )
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise SeriesRuleError(f"series rule k {self.k!r} must be an integer >= 1")
        if not 0.0 < self.threshold <= 1.0:
            raise SeriesRuleError(f"series rule threshold {self.threshold} must be in (0, 1]")

    @property
    def name(self) -> str:
        """A short identifier: ``mean``, ``top-5-mean``, ``max``, ``count-3@0.7``."""
        if self.kind == "top-k-mean":
            return f"top-{self.k}-mean"
        if self.kind == "count":
            return f"count-{self.k}@{self.threshold:g}"
        return self.kind

    def describe(self) -> str:
        """The rule in words, as answers and reports state it."""
        if self.kind == "mean":
            return "per class, the mean of the slice probabilities; the verdict is the largest"
        if self.kind == "top-k-mean":
            return (
                f"per class, the mean of its {self.k} highest slice probabilities (all slices "
                "when fewer); the verdict is the largest"
            )
        if self.kind == "max":
            return "per class, its highest slice probability; the verdict is the largest"
        return (
            f"per class, the slices with probability >= {self.threshold:g}; Pneumonia or "
            f"COVID-19 when that class has at least {self.k} such slices (the larger count "
            "wins, COVID-19 on a tie), else Normal"
        )

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """The per-class statistic the verdict is read from (``[classes]``).

        Raises:
            SeriesRuleError: no slices, or not a ``[n, classes]`` array.
        """
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] == 0:
            raise SeriesRuleError(f"a series needs [n, classes] probabilities, got {p.shape}")
        if self.kind == "mean":
            return p.mean(axis=0)
        if self.kind == "max":
            return p.max(axis=0)
        if self.kind == "top-k-mean":
            k = min(self.k, p.shape[0])
            return -np.sort(-p, axis=0)[:k].mean(axis=0)
        return (p >= self.threshold).sum(axis=0).astype(np.float64)

    def verdict(self, probs: np.ndarray) -> int:
        """The series' class index."""
        s = self.scores(probs)
        if self.kind != "count":
            return int(np.argmax(s))
        abnormal = [c for c in range(len(s)) if c != _NORMAL and s[c] >= self.k]
        if not abnormal:
            return _NORMAL
        return max(abnormal, key=lambda c: (s[c], c))

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "k": self.k, "threshold": self.threshold}


def verdicts(
    rule: SeriesRule, probs: np.ndarray, groups: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """The rule applied to every group of slices (a scan, a patient): the group ids in sorted
    order and their class indices."""
    ids = sorted(set(np.asarray(groups).tolist()))
    groups = np.asarray(groups)
    return ids, np.array([rule.verdict(probs[groups == g]) for g in ids], dtype=np.int64)
