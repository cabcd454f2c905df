"""The epochs of a training run: its phases, each compiled and fitted, resumable.

Phases: "head" (frozen backbone, ``head_epochs``) then "finetune" (last ``unfreeze``
backbone layers, BatchNorm frozen, lower learning rate) when the weights are pretrained;
one phase "scratch" (every layer) with ``--weights none``. Epochs are numbered across phases,
so the CSV log reads as one run. ``RUN/checkpoints/state.json`` records the finished phases
and the best value so far; Keras's BackupAndRestore (one folder per phase) continues a phase
cut short, so ``--resume`` picks up after the last finished epoch.

Only the chief writes RUN; the other workers of a multi-worker run restore from the chief's
backups and read its best checkpoint between phases, after a barrier.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from covidct.config import TrainConfig
from training.cluster import Worker
from training.multiworker import barrier

log = logging.getLogger(__name__)

MONITOR = "val_macro_f1"  # best checkpoint (ties: the later epoch) and early stopping


@dataclass(frozen=True)
class Job:
    """This process's part of a training run: what every phase reads.

    Attributes:
        run: the run directory (written by the chief only).
        cfg: the run's options, ``workers`` filled in from the cluster.
        strategy: the ``tf.distribute`` strategy the model was built under.
        worker: this process's place in the cluster.
        verbose: Keras ``fit`` verbosity.
    """

    run: Path
    cfg: TrainConfig
    strategy: Any
    worker: Worker
    verbose: int | str = "auto"

    @property
    def best_path(self) -> Path:
        """The best epoch's weights on MONITOR, across phases and resumes."""
        return self.run / "checkpoints" / "best.weights.h5"


@dataclass(frozen=True)
class Feed:
    """The training and validation datasets of this process and the steps in one epoch."""

    train: Any
    steps: int
    val: Any


class Phase(NamedTuple):
    name: str
    epochs: int
    learning_rate: float
    unfreeze: int  # backbone layers to train from the end; -1: every layer, BatchNorm too


def phases(cfg: TrainConfig) -> list[Phase]:
    """The phases ``cfg`` asks for, in order."""
    if not cfg.pretrained:
        return [Phase("scratch", cfg.epochs, cfg.learning_rate, -1)]
    head = [Phase("head", cfg.head_epochs, cfg.learning_rate, 0)] if cfg.head_epochs else []
    return [*head, Phase("finetune", cfg.epochs, cfg.fine_tune_learning_rate, cfg.unfreeze)]


def read_state(run: Path) -> dict[str, Any]:
    """The finished phases and best value of an interrupted run (none for a fresh one)."""
    path = run / "checkpoints" / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {"done": [], "best": None}


def write_state(run: Path, state: dict[str, Any]) -> None:
    """Write ``state.json`` atomically: a kill never leaves half of it."""
    path = run / "checkpoints" / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def fit_phases(job: Job, clf: Any, feed: Feed, state: dict[str, Any]) -> None:
    """Fit every phase not yet in ``state["done"]``, each from the best weights so far."""
    first_epoch = 0
    for phase in phases(job.cfg):
        if phase.name not in state["done"]:
            _fit_phase(job, clf, feed, state, phase, first_epoch)
        first_epoch += phase.epochs


def _fit_phase(
    job: Job, clf: Any, feed: Feed, state: dict[str, Any], phase: Phase, first_epoch: int
) -> None:
    """One phase: trainable layers, a fresh optimizer, its callbacks, its epochs."""
    end_epoch = first_epoch + phase.epochs
    if state["done"] and job.best_path.is_file():
        clf.train_model.load_weights(job.best_path)  # next phase starts from the best so far
    _compile(job, clf, phase, feed.steps)
    callbacks = _callbacks(job, phase, state)
    log.info(
        "phase %s: epochs %d-%d, learning rate %g",
        phase.name,
        first_epoch + 1,
        end_epoch,
        phase.learning_rate,
    )
    clf.train_model.fit(
        feed.train,
        validation_data=feed.val,
        epochs=end_epoch,
        initial_epoch=first_epoch,
        steps_per_epoch=feed.steps,
        callbacks=callbacks,
        verbose=job.verbose,
    )
    state["done"].append(phase.name)
    if job.worker.is_chief:
        write_state(job.run, state)
    if job.cfg.workers > 1:
        barrier(job.strategy)  # the chief's best checkpoint is written before anyone reads it


def _compile(job: Job, clf: Any, phase: Phase, steps: int) -> None:
    """Set the phase's trainable layers and compile with its learning rate schedule."""
    import keras

    from training.model import set_trainable

    with job.strategy.scope():
        if phase.unfreeze == -1:
            clf.backbone.trainable = True
        else:
            set_trainable(clf, phase.unfreeze)
        clf.train_model.compile(
            # Cosine decay over the phase: late epochs settle instead of swinging.
            optimizer=keras.optimizers.Adam(
                keras.optimizers.schedules.CosineDecay(
                    phase.learning_rate, max(1, steps * phase.epochs)
                )
            ),
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=["accuracy", keras.metrics.F1Score(average="macro", name="macro_f1")],
        )


def _callbacks(job: Job, phase: Phase, state: dict[str, Any]) -> list[Any]:
    """The chief's backups, best checkpoint and logs; another worker's restore only."""
    import keras

    run = job.run
    backup = str(run / "checkpoints" / f"backup-{phase.name}")
    stopping = keras.callbacks.EarlyStopping(MONITOR, mode="max", patience=job.cfg.patience)
    if not job.worker.is_chief:
        return [_restore_only(backup), stopping]
    return [
        # First, so that a kill after an epoch's log line always finds its backup.
        keras.callbacks.BackupAndRestore(backup),
        _best_checkpoint(job.best_path, run, state),
        stopping,
        keras.callbacks.CSVLogger(str(run / "train_log.csv"), append=True),
        keras.callbacks.TensorBoard(str(run / "tensorboard"), write_graph=False),
    ]


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
            # epochs alike, and under cosine decay the later one has trained further;
            # keeping the first one chose under-trained models.
            if np.isnan(value) or (state["best"] is not None and value < state["best"]):
                return
            tmp = path.with_name("best.tmp.weights.h5")
            self.model.save_weights(tmp)
            tmp.replace(path)
            state["best"], state["best_epoch"] = value, epoch + 1
            write_state(run, state)

    return BestCheckpoint()
