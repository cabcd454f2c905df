"""``covidct train``: a COVIDx-CT folder in, a servable run directory out.

Run directory::

    RUN/train_config.json, RUN/model_spec.json
    RUN/checkpoints/best.weights.h5     best epoch on val macro-F1 (the documented metric)
    RUN/checkpoints/backup-<phase>/     Keras BackupAndRestore state (resume mid-phase)
    RUN/checkpoints/state.json          finished phases, best value so far
    RUN/train_log.csv, RUN/tensorboard/
    RUN/saved_model/                    serving_default: image -> probabilities, cam
    RUN/metrics.json, RUN/confusion_matrix.png, RUN/roc.png, RUN/MODEL_CARD.md

Phases: "head" (frozen backbone, ``head_epochs``) then "finetune" (last ``unfreeze``
backbone layers, BatchNorm frozen, lower learning rate) when the weights are pretrained;
one phase "scratch" (every layer) with ``--weights none``. Epochs are numbered across phases,
so the CSV log reads as one run, and ``--resume`` continues from the last finished epoch.

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
from covidct.dataset import is_synthetic
from training.cluster import ClusterError, Worker, ensure_tf_config
from training.multiworker import barrier, patch_keras
from training.run import TrainError, prepare_for_training

log = logging.getLogger(__name__)

MONITOR = "val_macro_f1"  # best checkpoint (ties: the later epoch) and early stopping


def _phases(cfg: TrainConfig) -> list[tuple[str, int, float, int]]:
    """(name, epochs, learning rate, unfreeze) per phase."""
    if not cfg.pretrained:
        return [("scratch", cfg.epochs, cfg.learning_rate, -1)]
    phases = [("head", cfg.head_epochs, cfg.learning_rate, 0)] if cfg.head_epochs else []
    return [*phases, ("finetune", cfg.epochs, cfg.fine_tune_learning_rate, cfg.unfreeze)]


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


def _read_state(run: Path) -> dict[str, Any]:
    path = run / "checkpoints" / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {"done": [], "best": None}


def _write_state(run: Path, state: dict[str, Any]) -> None:
    path = run / "checkpoints" / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def train(
    data: str | Path,
    run: str | Path,
    cfg: TrainConfig,
    resume: bool = False,
    cache_root: Path | None = None,
    verbose: int | str = "auto",
) -> dict[str, Any]:
    """Train, calibrate, export and evaluate.

    Returns:
        The metrics written to metrics.json, plus "tables": the printed evaluation tables.
    """
    import keras
    import tensorflow as tf

    from training.data import SlicePool, class_weights
    from training.model import build_classifier, check_backbone, set_trainable

    data, run = Path(data), Path(run)
    check_backbone(cfg.backbone)
    strategy, worker = _strategy(cfg.strategy)
    cfg = dataclasses.replace(cfg, workers=worker.workers)
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
    elif worker.is_chief and run.exists() and any(run.iterdir()):
        raise TrainError(f"{run} is not empty; choose a new --out, or pass --resume")

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    # Everything that can fail on bad input or options happens before RUN is written.
    started = time.perf_counter()
    cache_dir, ds = prepare_for_training(data, cfg.image_size, cache_root)
    from training.cache import PreparedCache

    pool = SlicePool.open(PreparedCache(cache_dir))
    splits = pool.splits(cfg.auto_split, cfg.seed)
    for name in ("train", "val"):
        if len(splits[name]) == 0:
            raise TrainError(f"the {name} split is empty")
    spec = ModelSpec(
        name=cfg.model_name,
        image_size=cfg.image_size,
        backbone=cfg.backbone,
        provenance=Provenance(
            data_fingerprint=ds.fingerprint(),
            synthetic=is_synthetic(data),
            source_run=str(run.resolve()),
        ),
    )
    with strategy.scope():
        try:
            clf = build_classifier(spec, cfg.weights, cfg.dropout)
        except Exception as e:  # a failed ImageNet download surfaces as assorted errors
            if cfg.weights == "imagenet":
                raise TrainError(
                    f"ImageNet weights for {cfg.backbone} could not be loaded ({e}); on a "
                    "machine without internet use --weights none or --weights PATH.weights.h5"
                ) from e
            raise

    if worker.is_chief:
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        config_path.write_text(cfg.to_json())
        (run / "data_fingerprint.json").write_text(json.dumps(ds.label_file_checksums(), indent=2))
    weights = (
        class_weights(pool.labels[splits["train"]]) if cfg.balance == "class-weights" else None
    )
    train_ds, train_steps = _worker_data(strategy, pool, splits["train"], cfg, True, weights)
    val_ds, _ = _worker_data(strategy, pool, splits["val"], cfg, False)
    log.info(
        "worker %d of %d: %d steps x %d slices per epoch (global batch %d)",
        worker.index,
        cfg.workers,
        train_steps,
        cfg.batch_size,
        cfg.global_batch_size,
    )

    state = _read_state(run) if resume else {"done": [], "best": None}
    best_path = run / "checkpoints" / "best.weights.h5"
    first_epoch = 0
    for name, epochs, lr, unfreeze in _phases(cfg):
        end_epoch = first_epoch + epochs
        if name in state["done"]:
            first_epoch = end_epoch
            continue
        if state["done"] and best_path.is_file():
            clf.train_model.load_weights(best_path)  # next phase starts from the best so far
        with strategy.scope():
            if unfreeze == -1:
                clf.backbone.trainable = True
            else:
                set_trainable(clf, unfreeze)
            clf.train_model.compile(
                # Cosine decay over the phase: late epochs settle instead of swinging.
                optimizer=keras.optimizers.Adam(
                    keras.optimizers.schedules.CosineDecay(lr, max(1, train_steps * epochs))
                ),
                loss=keras.losses.CategoricalCrossentropy(),
                metrics=["accuracy", keras.metrics.F1Score(average="macro", name="macro_f1")],
            )
        backup = str(run / "checkpoints" / f"backup-{name}")
        stopping = keras.callbacks.EarlyStopping(MONITOR, mode="max", patience=cfg.patience)
        callbacks = (
            [
                # First, so that a kill after an epoch's log line always finds its backup.
                keras.callbacks.BackupAndRestore(backup),
                _best_checkpoint(best_path, run, state),
                stopping,
                keras.callbacks.CSVLogger(str(run / "train_log.csv"), append=True),
                keras.callbacks.TensorBoard(str(run / "tensorboard"), write_graph=False),
            ]
            if worker.is_chief
            else [_restore_only(backup), stopping]
        )
        log.info("phase %s: epochs %d-%d, learning rate %g", name, first_epoch + 1, end_epoch, lr)
        clf.train_model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=end_epoch,
            initial_epoch=first_epoch,
            steps_per_epoch=train_steps,
            callbacks=callbacks,
            verbose=verbose,
        )
        state["done"].append(name)
        if worker.is_chief:
            _write_state(run, state)
        if cfg.workers > 1:
            barrier(strategy)  # the chief's best checkpoint is written before anyone reads it
        first_epoch = end_epoch
    train_seconds = time.perf_counter() - started

    if not worker.is_chief:
        log.info("worker %d of %d done; the chief writes the run", worker.index, cfg.workers)
        return {"worker": worker.index, "workers": cfg.workers, "tables": []}
    if cfg.workers > 1:  # evaluation and export on this process alone, outside the strategy
        trained = clf.train_model.get_weights()
        clf = build_classifier(spec, "none", cfg.dropout)
        clf.train_model.set_weights(trained)
    if best_path.is_file():
        clf.train_model.load_weights(best_path)
    from training.report import finish_run

    return finish_run(run, clf, spec, cfg, pool, splits, train_seconds)


def _worker_data(
    strategy: Any,
    pool: Any,
    indices: np.ndarray,
    cfg: TrainConfig,
    training: bool,
    weights: dict[int, float] | None = None,
) -> tuple[Any, int]:
    """One dataset, or per worker its block of every global batch (validation too: the
    metrics are summed over workers; the last partial global batch is left out)."""
    from training.data import make_dataset, steps_per_epoch

    if cfg.workers == 1:
        return make_dataset(pool, indices, cfg, training=training, weights=weights)
    steps = steps_per_epoch(len(indices), cfg.batch_size, cfg.workers)

    def per_worker(context: Any) -> Any:
        shard = (context.input_pipeline_id, context.num_input_pipelines)
        return make_dataset(pool, indices, cfg, training, weights=weights, shard=shard)[0]

    return strategy.distribute_datasets_from_function(per_worker), steps


def _restore_only(backup: str) -> Any:
    """A non-chief worker's BackupAndRestore: restores the chief's state, never writes."""
    import keras

    class RestoreOnly(keras.callbacks.BackupAndRestore):
        def _save_model(self) -> None:
            pass

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            pass  # the chief removes the backup

    return RestoreOnly(backup)


def _best_checkpoint(path: Path, run: Path, state: dict[str, Any]) -> Any:
    """A callback keeping the best epoch on MONITOR across phases and resumes."""
    import keras

    class BestCheckpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            value = float((logs or {}).get(MONITOR, float("nan")))
            # Ties go to the later epoch: a small validation split often scores several
            # epochs alike (seen: three at macro-F1 1.0), and under cosine decay the later
            # one has trained further; keeping the first chose an under-trained model that
            # lost 8 points on the test split.
            if np.isnan(value) or (state["best"] is not None and value < state["best"]):
                return
            tmp = path.with_name("best.tmp.weights.h5")
            self.model.save_weights(tmp)
            tmp.replace(path)
            state["best"], state["best_epoch"] = value, epoch + 1
            _write_state(run, state)

    return BestCheckpoint()
