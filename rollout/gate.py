"""The promotion gate of a redeploy: never serve a worse model by accident.

A candidate is promoted only when it was evaluated on the very split the production model is
judged on (the gate's split, test unless ``--gate-split val``; same label file, by sha256),
and its macro-F1, COVID-19 sensitivity and COVID-19 PPV are each no worse than production's
beyond a tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rollout.options import GateTolerances

COVID = "COVID-19"


@dataclass(frozen=True)
class GateDecision:
    """Promote or not, and the reason of every check."""

    promote: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """As written in the deployment log."""
        return {"promote": self.promote, "reasons": list(self.reasons)}


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The gated figures of a classification report (None, e.g. no prediction, counts 0)."""
    covid = report["per_class"][COVID]
    return {
        "macro_f1": float(report["macro_f1"] or 0.0),
        "covid_sensitivity": float(covid["sensitivity"] or 0.0),
        "covid_ppv": float(covid["ppv"] or 0.0),
        "accuracy": float(report["accuracy"] or 0.0),
        "count": int(report["count"]),
    }


LABELS = {
    "macro_f1": "macro-F1",
    "covid_sensitivity": "COVID-19 sensitivity",
    "covid_ppv": "COVID-19 PPV",
}


def decide(
    candidate: dict[str, float],
    production: dict[str, float],
    tolerances: GateTolerances,
    data_sha: str,
    production_sha: str | None,
    candidate_sha: str | None,
    split: str = "test",
) -> GateDecision:
    """Promote or not, with one reason per check (passed checks are listed too).

    Args:
        candidate / production: ``headline`` figures on the data's ``split``.
        data_sha: sha256 of the ``split`` label file both were evaluated on.
        production_sha: that split of production's data (None: unknown).
        candidate_sha: that split of the data the candidate was trained with.
        split: the gate's split, "test" or "val".
    """
    reasons, ok = [], True
    if production_sha is None:
        ok = False
        reasons.append(f"production's {split} split is unknown: figures cannot be compared")
    elif production_sha != data_sha:
        ok = False
        keep = "add new slices to train/val" if split == "test" else "add new slices to train"
        reasons.append(
            f"{split} split differs from production's ({data_sha[:12]} vs "
            f"{production_sha[:12]}): keep the {split} label file, {keep}"
        )
    else:
        reasons.append(f"{split} split matches production's ({data_sha[:12]})")
    if candidate_sha is not None and candidate_sha != data_sha:
        ok = False
        reasons.append(
            f"the candidate was trained on data with another {split} split "
            f"({candidate_sha[:12]}): it may have seen these {split} slices"
        )
    for key, label in LABELS.items():
        drop = production[key] - candidate[key]
        allowed = getattr(tolerances, key)
        verdict = "ok" if drop <= allowed + 1e-12 else "too low"
        ok = ok and verdict == "ok"
        reasons.append(
            f"{label} {candidate[key]:.3f} vs {production[key]:.3f} "
            f"(change {-drop:+.3f}, may drop {allowed:.3f}): {verdict}"
        )
    return GateDecision(ok, reasons)
