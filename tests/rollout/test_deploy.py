"""Redeploy building blocks without servers: the gate, the deployment log and the journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.deploylog import TABLE_COLUMNS, DeploymentLog, Journal, table_rows
from rollout.gate import GateTolerances, decide, headline

PROD = {"macro_f1": 0.90, "covid_sensitivity": 0.90, "covid_ppv": 0.90}
SHA = "a" * 64


def _cand(**changes: float) -> dict[str, float]:
    return {**PROD, **changes}


@pytest.mark.parametrize(
    ("candidate", "prod_sha", "cand_sha", "promote", "why"),
    [
        (_cand(), SHA, SHA, True, "equal figures pass"),
        (_cand(macro_f1=0.95, covid_ppv=0.99), SHA, SHA, True, "better passes"),
        (_cand(macro_f1=0.891), SHA, SHA, True, "macro-F1 within 0.01"),
        (_cand(macro_f1=0.889), SHA, SHA, False, "macro-F1 beyond 0.01"),
        (_cand(covid_sensitivity=0.881), SHA, SHA, True, "sensitivity within 0.02"),
        (_cand(covid_sensitivity=0.879), SHA, SHA, False, "sensitivity beyond 0.02"),
        (_cand(covid_ppv=0.85), SHA, SHA, False, "PPV beyond 0.02"),
        (_cand(macro_f1=0.99), "b" * 64, SHA, False, "production judged on another test split"),
        (_cand(), None, SHA, False, "production's test split unknown"),
        (_cand(), SHA, "c" * 64, False, "candidate trained with another test split"),
        (_cand(), SHA, None, True, "candidate's split unrecorded: its figures are on ours"),
    ],
)
def test_gate(candidate, prod_sha, cand_sha, promote: bool, why: str) -> None:
    decision = decide(candidate, PROD, GateTolerances(), SHA, prod_sha, cand_sha)
    assert decision.promote is promote, (why, decision.reasons)
    assert len(decision.reasons) >= 4  # one line per check, passed ones included
    if not promote:
        assert any("too low" in r or "split" in r for r in decision.reasons)


def test_tolerances_are_overridable_and_checked() -> None:
    strict = GateTolerances(macro_f1=0.0)
    assert not decide(_cand(macro_f1=0.8999), PROD, strict, SHA, SHA, SHA).promote
    with pytest.raises(ValueError, match="macro_f1"):
        GateTolerances(macro_f1=-0.1)


def test_gate_on_the_val_split_names_it() -> None:
    decision = decide(_cand(), PROD, GateTolerances(), SHA, "b" * 64, SHA, split="val")
    assert not decision.promote
    assert any(
        r.startswith("val split differs") and "add new slices to train" in r
        for r in decision.reasons
    )
    assert decide(_cand(), PROD, GateTolerances(), SHA, SHA, SHA, split="val").promote


def test_gate_split_is_checked() -> None:
    from rollout.options import DeployOptions, OptionsError

    assert DeployOptions(repository=Path("r")).gate_split == "test"
    assert DeployOptions(repository=Path("r"), gate_split="val").gate_split == "val"
    with pytest.raises(OptionsError, match="--gate-split 'train'"):
        DeployOptions(repository=Path("r"), gate_split="train")


def test_split_figures_are_read_from_the_runs_own_split(tmp_path: Path) -> None:
    """A run that recorded val figures on the same val file gives them without evaluating."""
    import json

    from rollout.figures import candidate_figures, data_split_sha, run_split_sha

    data = tmp_path / "data"
    data.mkdir()
    (data / "val_COVIDx-CT.txt").write_text("a.png 0 0 0 8 8\n")
    sha = data_split_sha(data, "val")
    run = tmp_path / "run"
    run.mkdir()
    (run / "data_fingerprint.json").write_text(json.dumps({"val": sha, "test": "x"}))
    report = {
        "macro_f1": 0.7,
        "accuracy": 0.8,
        "count": 3,
        "per_class": {"COVID-19": {"sensitivity": 0.5, "ppv": 1.0}},
    }
    (run / "metrics.json").write_text(json.dumps({"val": report, "test": {}}))
    assert run_split_sha(run, "val") == sha
    figures, source = candidate_figures(run, data, sha, None, "val")
    assert figures["macro_f1"] == 0.7 and source == "stored with the run (same val split)"
    from rollout.control import DeployError

    with pytest.raises(DeployError, match="has no test split"):
        data_split_sha(data, "test")


def test_headline_reads_a_classification_report() -> None:
    report = {
        "macro_f1": 0.5,
        "accuracy": 0.6,
        "count": 10,
        "per_class": {"COVID-19": {"sensitivity": None, "ppv": 0.25}},
    }
    assert headline(report) == {
        "macro_f1": 0.5,
        "covid_sensitivity": 0.0,
        "covid_ppv": 0.25,
        "accuracy": 0.6,
        "count": 10,
    }


def test_log_appends_reads_and_tabulates(tmp_path: Path) -> None:
    log = DeploymentLog(tmp_path / "deployments.jsonl")
    assert log.read() == []
    log.append(
        {
            "time": "t1",
            "who": "ana",
            "action": "redeploy",
            "from_version": 1,
            "to_version": 2,
            "metrics": {"candidate": PROD, "production": _cand(macro_f1=0.8)},
            "gate": {"promote": True, "reasons": []},
            "outcome": "deployed",
            "source_run": "/runs/r7",
        }
    )
    with log.path.open("a") as f:
        f.write('{"cut short by a cra')  # a crash mid-line loses only that line
    log.append({"time": "t2", "action": "rollback", "outcome": "deployed", "to_version": 1})
    entries = log.read()
    assert [e["time"] for e in entries] == ["t1", "t2"]
    rows = table_rows(entries)
    assert len(rows[0]) == len(TABLE_COLUMNS)
    assert rows[0][3] == "1 -> 2" and rows[0][4] == "90.0 / 80.0" and rows[0][7] == "pass"
    assert rows[0][9] == "r7" and rows[1][7] == "-"


def test_journal_is_replaced_atomically(tmp_path: Path) -> None:
    journal = Journal(tmp_path / ".deploy-covidct.json")
    assert journal.load() is None
    journal.save({"step": "load", "done": ["train"]})
    journal.save({"step": "smoke", "done": ["train", "load"]})
    assert journal.load() == {"step": "smoke", "done": ["train", "load"]}
    assert [p.name for p in tmp_path.iterdir()] == [".deploy-covidct.json"]
    journal.clear()
    assert journal.load() is None
