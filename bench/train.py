"""``covidct bench train``: the input pipeline against the training step, in one process."""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.data import ROUNDS, row
from covidct.config import DEFAULT_IMAGE_SIZE, ModelSpec, TrainConfig

#: Batches drawn per timed round of the input pipeline.
PIPELINE_BATCHES = 60
#: The two training steps timed: (what the row says, ``--unfreeze``).
STEPS = (("fine-tune: last 30 backbone layers", 30), ("whole backbone (--unfreeze -1)", -1))

Rate = tuple[float, float, float]


def run_train_bench(
    backbone: str = "densenet201",
    size: int = DEFAULT_IMAGE_SIZE,
    batch_size: int = 8,
    steps: int = 6,
) -> str:
    """Input pipeline vs training step, side by side in one process.

    The pipeline (cache gather + augmentation, as in training) is timed alone over many
    batches; the step is ``train_on_batch`` on the same batches after a first, separately
    timed call that builds the graph. Peak memory is the process's maximum resident size.
    """
    import resource

    cfg = TrainConfig(backbone=backbone, image_size=size, batch_size=batch_size, weights="none")
    with tempfile.TemporaryDirectory() as tmp:
        batches = training_batches(Path(tmp), cfg)
        pipeline = pipeline_rate(batches, batch_size)
        step_rows = training_step_rows(batches, cfg, steps, pipeline)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return "\n".join(
        [
            f"## covidct bench train ({backbone}, S={size}, batch {batch_size})",
            "",
            f"{platform.machine()}, {os.cpu_count()} cores; pipeline: cache gather + augmentation, "
            f"{PIPELINE_BATCHES} batches x {ROUNDS} rounds; steps: `train_on_batch`, median of "
            f"{steps} after the graph-building first one.",
            "",
            "| what | images/s (median) | range | note |",
            "|---|---:|---:|---|",
            row("input pipeline from the prepared cache", pipeline, "gather + augment, uint8"),
            *step_rows,
            "",
            f"Peak resident memory of the whole run: {peak_gib:.1f} GiB.",
            "",
        ]
    )


def training_batches(tmp: Path, cfg: TrainConfig) -> Iterator[Any]:
    """Training batches as ``covidct train`` draws them, endless, from a prepared cache of
    synthetic data under ``tmp``; the pipeline is warmed by one batch."""
    from training.cache import PreparedCache, prepare_cache
    from training.data import SlicePool, make_dataset
    from training.synth import synthesize

    data, cache = tmp / "data", tmp / "cache"
    synthesize(data, 12, 10, seed=0, workers=os.cpu_count() or 1)
    prepare_cache(data, cache, cfg.image_size, workers=os.cpu_count() or 1)
    pool = SlicePool.open(PreparedCache(cache))
    ds, _ = make_dataset(pool, pool.splits()["train"], cfg, training=True)
    batches = iter(ds.repeat())
    next(batches)  # warm the pipeline
    return batches


def pipeline_rate(batches: Iterator[Any], batch_size: int) -> Rate:
    """Images/s of the input pipeline alone: median, min and max over ``ROUNDS`` rounds."""
    rates = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(PIPELINE_BATCHES):
            next(batches)
        rates.append(PIPELINE_BATCHES * batch_size / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def training_step_rows(
    batches: Iterator[Any], cfg: TrainConfig, steps: int, pipeline: Rate
) -> list[str]:
    """One row per entry of ``STEPS``: images/s of ``train_on_batch`` (median of ``steps``
    after the graph-building first call, timed apart), against the pipeline's rate."""
    import keras

    from training.model import build_classifier, set_trainable

    keras.utils.set_random_seed(0)
    spec = ModelSpec(image_size=cfg.image_size, backbone=cfg.backbone)
    clf = build_classifier(spec, weights=None)
    rows = []
    for label, unfreeze in STEPS:
        set_trainable(clf, unfreeze)
        clf.train_model.compile(
            optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy"
        )
        x, y = next(batches)
        start = time.perf_counter()
        clf.train_model.train_on_batch(x, y)
        build_s = time.perf_counter() - start
        step_rates = []
        for _ in range(steps):
            x, y = next(batches)
            start = time.perf_counter()
            clf.train_model.train_on_batch(x, y)
            step_rates.append(cfg.batch_size / (time.perf_counter() - start))
        step = (statistics.median(step_rates), min(step_rates), max(step_rates))
        rows.append(
            row(
                f"training step, {label}",
                step,
                f"first step (graph build) {build_s:.1f} s; pipeline is "
                f"{pipeline[0] / step[0]:,.0f}x faster",
            )
        )
    return rows
