"""``covidct bench quality``: training recipes measured on real CT, each over several seeds.

Every candidate recipe trains once per seed (``covidct train`` in its own process, so each
run starts with fresh memory and threads) into ``WORK/<recipe>/seed<k>``; a finished run is
reused, so an interrupted bench picks up where it stopped. Each run's SavedModel is then asked
for the val and test slices once (``predictions.npz`` beside it) and the figures are
computed from those probabilities (bench/qualityreport.py): slices, scans and patients,
every series rule, calibration before and after the temperature.

The runs are not in git, their figures are: a run recorded in the previous ``result.json`` of
the output folder (the same recipe options, the same seed) whose folder is gone is carried
into the new result as recorded (and named so), not trained again; a run whose folder is
there is always computed afresh.

Recipes differ from the reference (``BASE`` + ``baseline``: the product's defaults before
this benchmark, intensity augmentation 0.1 and class weights) in one choice each, so a row
reads as the effect of that choice; ``sampling-no-intensity`` joins the two choices that did
best alone (the product's defaults since). Every option a recipe depends on is written out, so a
later change of the product's defaults does not change what a recipe name means.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.sweep import BenchError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """One candidate: ``covidct train`` options on top of BASE.

    Attributes:
        name: folder and row name.
        what: the choice it makes, as the report says it.
        options: options replacing or adding to BASE.
    """

    name: str
    what: str
    options: tuple[str, ...] = ()

    def train_options(self) -> list[str]:
        """BASE with this recipe's options laid over it (a later option wins)."""
        merged: dict[str, str] = dict(zip(BASE[::2], BASE[1::2], strict=True))
        merged.update(zip(self.options[::2], self.options[1::2], strict=True))
        return [x for kv in merged.items() for x in kv]


#: What every recipe shares: DenseNet121 from scratch at 64x64 (the size 2 cores train in
#: about 50 s an epoch on 2,718 slices), every epoch run (no early stopping: the best epoch on
#: val macro-F1 is kept), intensity augmentation 0.1 and class weights (the product's defaults
#: when this benchmark was written), the product's defaults for everything else.
BASE: tuple[str, ...] = (
    "--backbone",
    "densenet121",
    "--image-size",
    "64",
    "--epochs",
    "10",
    "--weights",
    "none",
    "--patience",
    "20",
    "--brightness",
    "0.1",
    "--contrast",
    "0.1",
    "--balance",
    "class-weights",
)

RECIPES: tuple[Recipe, ...] = (
    Recipe("baseline", "reference: brightness/contrast augmentation 0.1, class weights"),
    Recipe(
        "no-intensity",
        "no brightness/contrast augmentation",
        ("--brightness", "0", "--contrast", "0"),
    ),
    Recipe(
        "sampling", "class-balanced sampling instead of class weights", ("--balance", "sampling")
    ),
    Recipe("no-balance", "no class balancing", ("--balance", "none")),
    Recipe(
        "sampling-no-intensity",
        "class-balanced sampling, no brightness/contrast augmentation",
        ("--balance", "sampling", "--brightness", "0", "--contrast", "0"),
    ),
    Recipe("epochs-20", "20 epochs (cosine schedule over 20)", ("--epochs", "20")),
    Recipe(
        "sampling-no-intensity-20",
        "class-balanced sampling, no brightness/contrast augmentation, 20 epochs",
        ("--balance", "sampling", "--brightness", "0", "--contrast", "0", "--epochs", "20"),
    ),
    Recipe("densenet201", "DenseNet201 backbone", ("--backbone", "densenet201")),
    Recipe("size-128", "input 128x128", ("--image-size", "128")),
)


def recipe_named(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        BenchError: no such recipe.
    """
    for recipe in RECIPES:
        if recipe.name == name:
            return recipe
    raise BenchError(f"unknown recipe {name!r}; choose from {', '.join(r.name for r in RECIPES)}")


def run_dir(work: Path, recipe: Recipe, seed: int) -> Path:
    return work / recipe.name / f"seed{seed}"


def is_finished(run: Path) -> bool:
    """A run is finished once its metrics are written (the last thing ``covidct train`` does)."""
    return (run / "metrics.json").is_file() and (run / "saved_model" / "saved_model.pb").is_file()


def schedule(recipes: Iterable[Recipe], seeds: Iterable[int]) -> list[tuple[Recipe, int]]:
    """Seed-major order: every recipe gets its first seed before any gets its second, so a
    bench stopped early still compares every recipe."""
    recipes = list(recipes)
    return [(r, s) for s in seeds for r in recipes]


def train_runs(
    data: Path,
    work: Path,
    plan: list[tuple[Recipe, int]],
    jobs: int = 1,
) -> list[Path]:
    """Train every (recipe, seed) of ``plan`` not finished yet, ``jobs`` at a time.

    With ``jobs`` > 1 each process gets ``cores / jobs`` TensorFlow threads: on 2 cores two
    one-thread trainings use the cores better than one two-thread training of small
    convolutions (DenseNet121 at 64x64 on an AVX-512 EPYC: 73-80 s an epoch each side by side,
    against 49 s for one run alone with both threads: 1.2-1.3x the work done).

    Raises:
        BenchError: a training run failed (its log is named).
    """
    pending = [(r, s) for r, s in plan if not is_finished(run_dir(work, r, s))]
    threads = max(1, (os.cpu_count() or 2) // max(1, jobs))
    running: list[tuple[subprocess.Popen[bytes], Path, float]] = []
    while pending or running:
        while pending and len(running) < jobs:
            recipe, seed = pending.pop(0)
            running.append(_start(data, run_dir(work, recipe, seed), recipe, seed, threads))
        time.sleep(2)
        for entry in list(running):
            proc, run, started = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            if proc.returncode != 0:
                for other, _, _ in running:
                    other.terminate()
                raise BenchError(f"training {run} failed; see {run.parent / (run.name + '.log')}")
            log.info("%s done in %.0f s", run, time.perf_counter() - started)
    return [run_dir(work, r, s) for r, s in plan]


def _start(
    data: Path, run: Path, recipe: Recipe, seed: int, threads: int
) -> tuple[subprocess.Popen[bytes], Path, float]:
    """Start ``covidct train`` for one run (resuming an interrupted one), logging to a file."""
    run.parent.mkdir(parents=True, exist_ok=True)
    resume = ["--resume"] if (run / "train_config.json").is_file() else []
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        *recipe.train_options(),
        "--seed",
        str(seed),
        *resume,
    ]
    env = {
        **os.environ,
        "TF_NUM_INTRAOP_THREADS": str(threads),
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": str(threads),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log.info("training %s (%s), seed %d, %d thread(s)", recipe.name, recipe.what, seed, threads)
    logfile = (run.parent / f"{run.name}.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env)
    return proc, run, time.perf_counter()


def predictions(run: Path, data: Path) -> dict[str, Any]:
    """The run's SavedModel on the val and test slices (cached in ``predictions.npz``):
    probabilities, labels, patient and scan ids, file names, and the run's temperature."""
    path = run / "predictions.npz"
    if not path.is_file():
        _write_predictions(run, data, path)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _write_predictions(run: Path, data: Path, path: Path) -> None:
    """For a run trained before ``covidct train`` wrote predictions itself."""
    from training.cache import PreparedCache
    from training.data import SlicePool
    from training.report import save_predictions
    from training.run import SAVED_MODEL, SavedModelRunner, load_spec, prepare_for_training

    spec = load_spec(run)
    cache_dir, _ = prepare_for_training(data, spec.image_size, None)
    pool = SlicePool.open(PreparedCache(cache_dir))
    runner = SavedModelRunner(run / SAVED_MODEL, spec)
    splits = {s: np.flatnonzero(pool.split_of == s) for s in ("val", "test")}
    probs = {s: runner(pool.gather(i))[spec.probabilities_name] for s, i in splits.items()}
    save_predictions(path, spec, pool, splits, probs)


def recorded_runs(out: Path, recipes: Iterable[Recipe]) -> dict[tuple[str, int], dict[str, Any]]:
    """The per-run figures of the previous ``out/result.json``, by (recipe, seed), for the
    recipes whose options are the same now (a changed recipe's record no longer says what it
    measures)."""
    path = out / "result.json"
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text())
        options = {n: r["options"] for n, r in previous["recipes"].items()}
        runs = previous["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s unreadable: no recorded runs carried", path)
        return {}
    same = {r.name for r in recipes if options.get(r.name) == r.train_options()}
    return {
        (name, int(f["seed"])): dict(f)
        for name, figures in runs.items()
        if name in same
        for f in figures
    }


def run_quality_bench(
    data: Path,
    work: Path,
    plan: list[tuple[Recipe, int]],
    out: Path,
    jobs: int = 1,
    train: bool = True,
) -> str:
    """Train what is missing of ``plan`` (or, with ``train=False``, take the finished runs
    only and name the missing ones), compute every figure, write the section, plots and
    results.

    Raises:
        BenchError: no run of the plan is finished (``train=False``).
    """
    from bench.qualityreport import best_recipe, quality_section, recipe_summary, run_figures
    from bench.sweep import save

    started = time.perf_counter()
    recorded = recorded_runs(out, dict.fromkeys(r for r, _ in plan))
    carried = [
        (r, s) for r, s in plan if not is_finished(run_dir(work, r, s)) and (r.name, s) in recorded
    ]
    missing: list[str] = []
    if train:
        train_runs(data, work, [rs for rs in plan if rs not in carried], jobs)
    else:
        missing = [
            f"{r.name} seed {s}"
            for r, s in plan
            if not is_finished(run_dir(work, r, s)) and (r, s) not in carried
        ]
        plan = [(r, s) for r, s in plan if is_finished(run_dir(work, r, s)) or (r, s) in carried]
        if not plan:
            raise BenchError(f"no finished run under {work}: run without --no-train first")
    figures: dict[str, list[dict[str, Any]]] = {}
    preds: dict[str, list[dict[str, Any]]] = {}
    for recipe, seed in sorted(
        plan, key=lambda rs: ([r.name for r in RECIPES].index(rs[0].name), rs[1])
    ):
        if (recipe, seed) in carried:
            f = recorded[(recipe.name, seed)] | {"seed": seed, "recorded": True}
        else:
            run = run_dir(work, recipe, seed)
            p = predictions(run, data)
            f = run_figures(p) | {"seed": seed, "train_seconds": _train_seconds(run)}
            preds.setdefault(recipe.name, []).append(p)
        figures.setdefault(recipe.name, []).append(f)
    summaries = {name: recipe_summary(runs) for name, runs in figures.items()}
    best = best_recipe(summaries)
    out.mkdir(parents=True, exist_ok=True)
    pictures = _pictures(out, best, preds.get(best, []), len(figures[best]))
    recipes = list(dict.fromkeys(r for r, _ in plan))
    section = quality_section(
        data, recipes, summaries, figures, best, pictures, BASE, missing,
        [f"{r.name} seed {s}" for r, s in carried],
    )  # fmt: skip
    save(
        out,
        "quality",
        section,
        {
            "data": str(data),
            "base": list(BASE),
            "recipes": {r.name: {"what": r.what, "options": r.train_options()} for r in recipes},
            "jobs": jobs,
            "not_run": missing,
            "carried": [f"{r.name} seed {s}" for r, s in carried],
            "best": best,
            "summaries": summaries,
            "runs": figures,
            "wall_seconds": round(time.perf_counter() - started, 1),  # this sitting's
            "train_seconds": _training_total(figures),
        },
    )
    return section


def _train_seconds(run: Path) -> float | None:
    """The run's training time, as ``covidct train`` wrote it in metrics.json."""
    seconds = json.loads((run / "metrics.json").read_text()).get("train_seconds")
    return float(seconds) if seconds is not None else None


def _training_total(figures: dict[str, list[dict[str, Any]]]) -> dict[str, float | int]:
    """Training time summed over the runs that recorded one (runs carried from a sitting
    before this figure was kept have none), and how many did."""
    seconds = [
        r["train_seconds"] for runs in figures.values() for r in runs if r.get("train_seconds")
    ]
    return {"total": round(sum(seconds), 1), "runs": len(seconds)}


def _pictures(out: Path, best: str, preds: list[dict[str, Any]], runs: int) -> list[Path]:
    """The best recipe's plots, drawn from its runs' predictions when every run is here;
    when some are only recorded, the plots of the sitting that had them all are kept."""
    from bench.qualityreport import plots

    kept = [out / f"{best}-{kind}.png" for kind in ("confusion", "roc", "reliability")]
    if len(preds) < runs and all(p.is_file() for p in kept):
        return kept
    if not preds:
        raise BenchError(f"no predictions of {best} to plot, and no plots of it kept in {out}")
    return plots(out, best, preds)
