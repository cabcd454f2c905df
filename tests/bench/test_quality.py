"""covidct bench quality without training: recipes, the plan, and every figure from
hand-made predictions (the training itself is what `covidct train`'s own tests cover)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.quality import BASE, RECIPES, Recipe, is_finished, recipe_named, schedule
from bench.qualityreport import (
    best_recipe,
    plots,
    quality_section,
    recipe_summary,
    run_figures,
    spread,
)
from bench.sweep import BenchError
from training.metrics import apply_temperature


def test_recipe_options_lay_over_the_base() -> None:
    opts = recipe_named("size-128").train_options()
    assert opts[opts.index("--image-size") + 1] == "128"
    assert opts.count("--image-size") == 1 and len(opts) == len(BASE)
    assert Recipe("x", "y").train_options() == list(BASE)
    with pytest.raises(BenchError, match="unknown recipe 'nope'"):
        recipe_named("nope")
    assert len({r.name for r in RECIPES}) == len(RECIPES)


def test_schedule_gives_every_recipe_its_first_seed_first() -> None:
    a, b = RECIPES[:2]
    assert schedule([a, b], [0, 1]) == [(a, 0), (b, 0), (a, 1), (b, 1)]


def test_a_run_is_finished_only_with_metrics_and_model(tmp_path: Path) -> None:
    assert not is_finished(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    assert not is_finished(tmp_path)
    (tmp_path / "saved_model").mkdir()
    (tmp_path / "saved_model" / "saved_model.pb").write_bytes(b"")
    assert is_finished(tmp_path)


def _split(rng: np.random.Generator, scans: int, right: float) -> dict[str, np.ndarray]:
    """Scans of 6 slices; each slice right with probability ``right``."""
    labels, probs, names = [], [], []
    for s in range(scans):
        truth = s % 3
        for i in range(6):
            pred = truth if rng.random() < right else (truth + 1) % 3
            p = np.full(3, 0.05)
            p[pred] = 0.9
            labels.append(truth)
            probs.append(p)
            names.append(f"NCP_{s // 2}_{s}_{i:04d}")
    return {
        "probs": np.array(probs, np.float32),
        "labels": np.array(labels),
        "scans": np.array([n.rsplit("_", 1)[0] for n in names]),
        "patients": np.array(["_".join(n.split("_")[:2]) for n in names]),
    }


def _preds(seed: int, right: float, temperature: float = 2.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {"temperature": np.array(temperature)}
    for split in ("val", "test"):
        for k, v in _split(rng, 12, right).items():
            out[f"{split}_{k}"] = v
    return out


def test_run_figures_by_hand_on_a_perfect_model() -> None:
    f = run_figures(_preds(0, 1.0))
    assert f["test_accuracy"] == 1.0 and f["test_covid_ppv"] == 1.0
    assert f["test_scan_accuracy"] == 1.0 and f["test_patient_accuracy"] == 1.0
    assert f["test_scans"] == 12 and f["test_patients"] == 6
    assert f["rule"] == "mean"  # every rule is perfect: the simplest wins
    assert sum(map(sum, f["test_confusion"])) == 72
    # ECE before: the uncalibrated probabilities are the served ones with T undone.
    assert f["test_ece_after"] == pytest.approx(0.1, abs=1e-6)  # confident 0.9, always right
    before = apply_temperature(np.array([[0.05, 0.05, 0.9]]), 0.5).max()
    assert f["test_ece_before"] == pytest.approx(1 - before, abs=1e-6)


def test_summary_spread_best_and_section(tmp_path: Path) -> None:
    good = [run_figures(_preds(s, 0.9)) | {"seed": s} for s in range(3)]
    bad = [run_figures(_preds(s, 0.5)) | {"seed": s} for s in range(3)]
    one = [run_figures(_preds(9, 1.0)) | {"seed": 0}]
    summaries = {
        "good": recipe_summary(good),
        "bad": recipe_summary(bad),
        "one": recipe_summary(one),
    }
    s = summaries["good"]["test_accuracy"]
    values = [r["test_accuracy"] for r in good]
    assert s == {"median": sorted(values)[1], "min": min(values), "max": max(values), "n": 3}
    # "one" is perfect on val but has a single seed: recipes with 3 seeds are preferred.
    assert best_recipe(summaries) == "good"
    assert spread([None, None]) is None
    pictures = plots(tmp_path, "good", [_preds(s, 0.9) for s in range(3)])
    assert all(p.stat().st_size > 1000 for p in pictures)
    text = quality_section(
        tmp_path / "covidxct-128",
        [Recipe("good", "a good one"), Recipe("bad", "a bad one"), Recipe("one", "single")],
        summaries,
        {"good": good, "bad": bad, "one": one},
        "good",
        pictures,
        BASE,
    )
    assert "Not comparable" in text and "**Best on val (median val macro-F1): `good`**" in text
    assert "| good: a good one | 3 |" in text and "| one: single | 1 |" in text
    assert "| mean |" in text and "count-5@0.9" in text


def test_report_judges_the_quality_goals_of_the_best_recipe(tmp_path: Path) -> None:
    import json

    from bench.report import targets

    figures = {"median": 0.93, "min": 0.9, "max": 0.95, "n": 3}
    low = {"median": 0.5, "min": 0.4, "max": 0.6, "n": 3}
    summary = {
        "test_accuracy": figures,
        "test_covid_sensitivity": figures,
        "test_covid_ppv": low,
        "test_scan_accuracy": figures,
        "test_patient_accuracy": None,
    }
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / "result.json").write_text(
        json.dumps({"best": "good", "summaries": {"good": summary}})
    )
    rows = [t for t in targets(tmp_path) if t.what.startswith("Real CT")]
    assert [t.met for t in rows] == [True, True, False, True, None]
    assert rows[0].measured == "93.0%" and "`good`" in rows[0].what and "3 seeds" in rows[0].what


def _finished(run: Path, preds: dict[str, np.ndarray]) -> None:
    """A run folder that counts as finished, with its predictions written."""
    (run / "saved_model").mkdir(parents=True)
    (run / "saved_model" / "saved_model.pb").write_bytes(b"")
    (run / "metrics.json").write_text('{"train_seconds": 812.5}')
    np.savez(run / "predictions.npz", **preds)


def test_recorded_runs_are_carried_when_their_folders_are_gone(tmp_path: Path) -> None:
    import json

    from bench.quality import run_dir, run_quality_bench

    work, out = tmp_path / "runs", tmp_path / "out"
    baseline, nointensity, sampling = (
        recipe_named(n) for n in ("baseline", "no-intensity", "sampling")
    )
    out.mkdir()
    previous = {
        "recipes": {
            "baseline": {"options": baseline.train_options()},
            "sampling": {"options": ["--balance", "something else then"]},
        },
        "runs": {
            "baseline": [run_figures(_preds(s, 0.9)) | {"seed": s} for s in range(3)],
            "sampling": [run_figures(_preds(0, 0.9)) | {"seed": 0}],
        },
    }
    (out / "result.json").write_text(json.dumps(previous))
    _finished(run_dir(work, nointensity, 0), _preds(5, 0.8))
    plan = [(baseline, s) for s in range(3)] + [(nointensity, 0), (sampling, 0)]
    with pytest.raises(BenchError, match="no predictions of baseline"):
        run_quality_bench(tmp_path / "covidxct-128", work, plan, out, train=False)

    for kind in ("confusion", "roc", "reliability"):  # the sitting that had them drew these
        (out / f"baseline-{kind}.png").write_bytes(b"\x89PNG kept")
    (out / "result.json").write_text(json.dumps(previous))
    text = run_quality_bench(tmp_path / "covidxct-128", work, plan, out, train=False)
    result = json.loads((out / "result.json").read_text())
    assert result["carried"] == ["baseline seed 0", "baseline seed 1", "baseline seed 2"]
    assert result["not_run"] == ["sampling seed 0"]  # its options changed: not carried
    assert [r["seed"] for r in result["runs"]["baseline"]] == [0, 1, 2]
    assert all(r["recorded"] for r in result["runs"]["baseline"])
    assert "recorded" not in result["runs"]["no-intensity"][0]
    assert result["runs"]["no-intensity"][0]["train_seconds"] == 812.5
    assert result["train_seconds"] == {"total": 812.5, "runs": 1}  # carried runs have none
    assert result["best"] == "baseline"
    assert (out / "baseline-roc.png").read_bytes() == b"\x89PNG kept"
    assert "Carried as recorded from an earlier sitting" in text
