"""``covidct train``: a COVIDx-CT folder in, a servable run directory out.

Run directory::

    RUN/train_config.json, RUN/model_spec.json
    RUN/checkpoints/best.weights.h5     best epoch on val macro-F1 (the documented metric)
    RUN/checkpoints/backup-<phase>/     Keras BackupAndRestore state (resume mid-phase)
    RUN/checkpoints/state.json          finished phases, best value so far
    RUN/train_log.csv, RUN/tensorboard/
    RUN/saved_model/                    serving_default: image -> probabilities, cam
    RUN/metrics.json, RUN/confusion_matrix.png, RUN/roc.png, RUN/MODEL_CARD.md

:func:`train` runs in named steps: check the output folder, seed, prepare the data and the
spec, build the model, write the run's start, build the datasets, fit the phases
(training/fit.py: "head" then "finetune", or "scratch"), then, on the chief, finish the run
(training/report.py: calibrate, export, evaluate, write the card). ``--resume`` continues
from the last finished epoch.

Multi-worker (``--strategy multiworker``, training/cluster.py): every worker trains on its
block of each global batch (training/data.py); only the chief (worker 0) writes RUN. The
others read it: the chief's resume state and backups on ``--resume``, its best checkpoint
between phases (after a barrier). After the last phase the chief alone evaluates, calibrates
and exports from a fresh single-process copy of the model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from covidct.config import ModelSpec, Provenance, TrainConfig
from covidct.dataset import Dataset, is_synthetic
from training.cluster import ClusterError, Worker, ensure_tf_config
from training.fit import Feed, Job, fit_phases, read_state
from training.multiworker import patch_keras
from training.run import TrainError, prepare_for_training

log = logging.getLogger(__name__)


def train(
    data: str | Path,
    run: str | Path,
    cfg: TrainConfig,
    resume: bool = False,
    cache_root: Path | None = None,
    verbose: int | str = "auto",
) -> dict[str, Any]:
    """Train, calibrate, export and evaluate.

    Args:
        data: COVIDx-CT folder (its cache is prepared or reused).
        run: the run directory to write (the chief's; other workers only read it).
        cfg: the options of ``covidct train``.
        resume: continue an interrupted run in ``run`` with the same options.
        cache_root: where prepared caches live (default: training.run.default_cache_root).
        verbose: Keras ``fit`` verbosity.

    Returns:
        The metrics written to metrics.json, plus "tables": the printed evaluation tables;
        on a non-chief worker, only its place ("worker", "workers") and no tables.
    """
    from training.model import check_backbone

    data, run = Path(data), Path(run)
    check_backbone(cfg.backbone)
    strategy, worker = _strategy(cfg.strategy)
    job = Job(run, dataclasses.replace(cfg, workers=worker.workers), strategy, worker, verbose)
    _check_out(job, resume)
    _seed(job.cfg)
    # Everything that can fail on bad input or options happens before RUN is written.
    started = time.perf_counter()
    pool, splits, ds = _prepare_data(data, job.cfg, cache_root)
    spec = _spec(job, data, ds)
    clf = _build_model(job, spec)
    if worker.is_chief:
        _write_start(job, ds)
    feed = _feed(job, pool, splits)
    fit_phases(job, clf, feed, read_state(run) if resume else {"done": [], "best": None})
    train_seconds = time.perf_counter() - started

    if not worker.is_chief:
        log.info("worker %d of %d done; the chief writes the run", worker.index, worker.workers)
        return {"worker": worker.index, "workers": worker.workers, "tables": []}
    from training.report import finish_run

    clf = _trained_model(job, clf, spec)
    return finish_run(run, clf, spec, job.cfg, pool, splits, train_seconds)


def _strategy(name: str) -> tuple[Any, Worker]:
    """The strategy and this process's place; created before any other TensorFlow call
    (collective ops must be configured at program start)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy(), Worker()
    if name == "multiworker":
        try:
            worker = ensure_tf_config()
        except ClusterError as e:
            raise TrainError(str(e)) from e
        patch_keras()
        return tf.distribute.MultiWorkerMirroredStrategy(), worker
    return tf.distribute.get_strategy(), Worker()


def _check_out(job: Job, resume: bool) -> None:
    """Refuse to overwrite a run, or to resume one with other options.

    Raises:
        TrainError: ``--resume`` without a saved config or with other options, or a
            non-empty run directory without ``--resume``.
    """
    run, cfg = job.run, job.cfg
    config_path = run / "train_config.json"
    if resume:
        if not config_path.is_file():
            raise TrainError(f"--resume: {run} holds no train_config.json to resume from")
        saved = TrainConfig.from_json(config_path.read_text())
        if saved != cfg:
            diff = sorted(k for k, v in vars(cfg).items() if getattr(saved, k) != v)
            raise TrainError(
                f"--resume: options differ from the interrupted run ({', '.join(diff)})"
                f"; resume with the same options as {config_path}"
            )
    elif job.worker.is_chief and run.exists() and any(run.iterdir()):
        raise TrainError(f"{run} is not empty; choose a new --out, or pass --resume")


def _seed(cfg: TrainConfig) -> None:
    """Seed every generator and ask for deterministic kernels (same seed, same model on CPU)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")


def _prepare_data(
    data: Path, cfg: TrainConfig, cache_root: Path | None
) -> tuple[Any, dict[str, np.ndarray], Dataset]:
    """The prepared cache's slices, the train/val/test indices and the folder's labels.

    Raises:
        TrainError: the train or val split is empty.
    """
    from training.cache import PreparedCache
    from training.data import SlicePool

    cache_dir, ds = prepare_for_training(data, cfg.image_size, cache_root)
    pool = SlicePool.open(PreparedCache(cache_dir))
    splits = pool.splits(cfg.auto_split, cfg.seed)
    for name in ("train", "val"):
        if len(splits[name]) == 0:
            raise TrainError(f"the {name} split is empty")
    return pool, splits, ds


def _spec(job: Job, data: Path, ds: Dataset) -> ModelSpec:
    """The run's ModelSpec, with where its data and the run came from."""
    cfg = job.cfg
    return ModelSpec(
        name=cfg.model_name,
        image_size=cfg.image_size,
        backbone=cfg.backbone,
        provenance=Provenance(
            data_fingerprint=ds.fingerprint(),
            synthetic=is_synthetic(data),
            source_run=str(job.run.resolve()),
        ),
    )


def _build_model(job: Job, spec: ModelSpec) -> Any:
    """The classifier under the job's strategy.

    Raises:
        TrainError: the ImageNet weights could not be loaded (no internet, most often).
    """
    from training.model import build_classifier

    cfg = job.cfg
    with job.strategy.scope():
        try:
            return build_classifier(spec, cfg.weights, cfg.dropout)
        except Exception as e:  # a failed ImageNet download surfaces as assorted errors
            if cfg.weights == "imagenet":
                raise TrainError(
                    f"ImageNet weights for {cfg.backbone} could not be loaded ({e}); on a "
                    "machine without internet use --weights none or --weights PATH.weights.h5"
                ) from e
            raise


def _write_start(job: Job, ds: Dataset) -> None:
    """The chief's first files in RUN: the options and the label files' checksums."""
    run = job.run
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "train_config.json").write_text(job.cfg.to_json())
    (run / "data_fingerprint.json").write_text(json.dumps(ds.label_file_checksums(), indent=2))


def _feed(job: Job, pool: Any, splits: dict[str, np.ndarray]) -> Feed:
    """This process's training and validation datasets (class weights when asked for)."""
    from training.data import class_weights

    cfg = job.cfg
    weights = (
        class_weights(pool.labels[splits["train"]]) if cfg.balance == "class-weights" else None
    )
    train_ds, train_steps = _worker_data(job, pool, splits["train"], True, weights)
    val_ds, _ = _worker_data(job, pool, splits["val"], False)
    log.info(
        "worker %d of %d: %d steps x %d slices per epoch (global batch %d)",
        job.worker.index,
        cfg.workers,
        train_steps,
        cfg.batch_size,
        cfg.global_batch_size,
    )
    return Feed(train_ds, train_steps, val_ds)


def _worker_data(
    job: Job,
    pool: Any,
    indices: np.ndarray,
    training: bool,
    weights: dict[int, float] | None = None,
) -> tuple[Any, int]:
    """One dataset, or per worker its block of every global batch (validation too: the
    metrics are summed over workers; the last partial global batch is left out)."""
    from training.data import make_dataset, steps_per_epoch

    cfg = job.cfg
    if cfg.workers == 1:
        return make_dataset(pool, indices, cfg, training=training, weights=weights)
    steps = steps_per_epoch(len(indices), cfg.batch_size, cfg.workers)

    def per_worker(context: Any) -> Any:
        shard = (context.input_pipeline_id, context.num_input_pipelines)
        return make_dataset(pool, indices, cfg, training, weights=weights, shard=shard)[0]

    return job.strategy.distribute_datasets_from_function(per_worker), steps


def _trained_model(job: Job, clf: Any, spec: ModelSpec) -> Any:
    """The chief's model to evaluate and export: the best epoch's weights, and after a
    multi-worker run a fresh single-process copy outside the strategy."""
    from training.model import build_classifier

    if job.cfg.workers > 1:
        trained = clf.train_model.get_weights()
        clf = build_classifier(spec, "none", job.cfg.dropout)
        clf.train_model.set_weights(trained)
    if job.best_path.is_file():
        clf.train_model.load_weights(job.best_path)
    return clf
