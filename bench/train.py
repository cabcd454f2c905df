"""``covidct bench train``: the input pipeline against the training step, in one process."""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bench.data import ROUNDS, row


def run_train_bench(
    backbone: str = "densenet201", size: int = 224, batch_size: int = 8, steps: int = 6
) -> str:
    """Input pipeline vs training step, side by side in one process.

    The pipeline (cache gather + augmentation, as in training) is timed alone over many
    batches; the step is ``train_on_batch`` on the same batches after a first, separately
    timed call that builds the graph. Peak memory is the process's maximum resident size.
    """
    import resource

    import keras

    from covidct.config import ModelSpec, TrainConfig
    from training.cache import PreparedCache, prepare_cache
    from training.data import SlicePool, make_dataset
    from training.model import build_classifier, set_trainable
    from training.synth import synthesize

    cfg = TrainConfig(backbone=backbone, image_size=size, batch_size=batch_size, weights="none")
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        synthesize(data, 12, 10, seed=0, workers=os.cpu_count() or 1)
        prepare_cache(data, cache, size, workers=os.cpu_count() or 1)
        pool = SlicePool.open(PreparedCache(cache))
        train_idx = pool.splits()["train"]
        ds, _ = make_dataset(pool, train_idx, cfg, training=True)
        ds = ds.repeat()
        it = iter(ds)
        next(it)  # warm the pipeline
        n_batches = 60
        rates = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for _ in range(n_batches):
                next(it)
            rates.append(n_batches * batch_size / (time.perf_counter() - start))
        pipeline = (statistics.median(rates), min(rates), max(rates))

        keras.utils.set_random_seed(0)
        clf = build_classifier(ModelSpec(image_size=size, backbone=backbone), weights=None)
        step_rows = []
        for label, unfreeze in (
            ("fine-tune: last 30 backbone layers", 30),
            ("whole backbone (--unfreeze -1)", -1),
        ):
            set_trainable(clf, unfreeze)
            clf.train_model.compile(
                optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy"
            )
            x, y = next(it)
            start = time.perf_counter()
            clf.train_model.train_on_batch(x, y)
            build_s = time.perf_counter() - start
            step_rates = []
            for _ in range(steps):
                x, y = next(it)
                start = time.perf_counter()
                clf.train_model.train_on_batch(x, y)
                step_rates.append(batch_size / (time.perf_counter() - start))
            step = (statistics.median(step_rates), min(step_rates), max(step_rates))
            step_rows.append(
                row(
                    f"training step, {label}",
                    step,
                    f"first step (graph build) {build_s:.1f} s; pipeline is "
                    f"{pipeline[0] / step[0]:,.0f}x faster",
                )
            )
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return "\n".join(
        [
            f"## covidct bench train ({backbone}, S={size}, batch {batch_size})",
            "",
            f"{platform.machine()}, {os.cpu_count()} cores; pipeline: cache gather + augmentation, "
            f"{n_batches} batches x {ROUNDS} rounds; steps: `train_on_batch`, median of {steps} "
            "after the graph-building first one.",
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
