"""What ``MultiWorkerMirroredStrategy`` needs from Keras and tf.data here.

Keras 3.15's TensorFlow trainer breaks on that strategy in two places (both private, both
reached by every ``fit``): it all-reduces the first data batch with ``axis=None`` to build
the model symbolically, and it reduces scalar per-replica logs (the loss) with ``axis=0``.
Each fails on a cross-worker value ("Attempt to convert a value (PerReplica...)", "Invalid
reduction dimension 0 for input with 0 dimensions"). :func:`patch_keras` replaces the two
with versions that take the local batch for the symbolic build (only shapes matter there)
and reduce scalars without an axis. Applied only by multi-worker training; the pinned Keras
version is checked so that an upgrade revisits it.
"""

from __future__ import annotations

from typing import Any

KERAS_VERSION = "3.15.1"
_patched = False


def patch_keras() -> None:
    """Make ``Model.fit`` work under MultiWorkerMirroredStrategy (idempotent)."""
    global _patched
    if _patched:
        return
    import keras
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if keras.__version__ != KERAS_VERSION:
        raise RuntimeError(
            f"training/multiworker.py patches Keras {KERAS_VERSION}, found {keras.__version__}: "
            "check whether the upgrade fixed MultiWorkerMirroredStrategy and adapt the patch"
        )

    def _local(strategy: Any, value: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def _maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda v: _local(self.distribute_strategy, v), batch
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    original_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if not (
            trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean")
        ):
            return original_reduce(values, strategy, reduction)

        def _mean(v: Any) -> Any:
            if not trainer._is_per_replica_instance(v):
                return v
            axis = 0 if _local(strategy, v).shape.rank else None
            return strategy.reduce("MEAN", v, axis=axis)

        return tree.map_structure(_mean, values)

    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    _patched = True


def barrier(strategy: Any) -> None:
    """Wait until every worker gets here (one all-reduce of a scalar)."""
    import tensorflow as tf

    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
