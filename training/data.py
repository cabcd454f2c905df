"""The training input pipeline: tf.data over the prepared cache (never decodes a PNG).

A :class:`SlicePool` holds every cached slice of a folder (all splits) behind one index;
train/val/test are index arrays into it, either the folder's own splits or, for a folder
with only some splits, an automatic split by patient or by slice. Batches are gathered from
the memory-mapped shards, augmented (training only) and prefetched.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from covidct.config import CLASS_NAMES, TrainConfig
from covidct.dataset import SPLITS
from covidct.errors import CovidctError
from training.cache import PreparedCache

log = logging.getLogger(__name__)

#: train, val and test shares of an automatic split (``--auto-split``), per class.
AUTO_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


class SplitError(CovidctError, ValueError):
    """The folder's splits cannot be used for training; the message says what to do."""


@dataclass
class SlicePool:
    """All slices of a prepared cache, addressable by one global index."""

    cache: PreparedCache
    labels: np.ndarray
    patients: np.ndarray
    filenames: np.ndarray
    split_of: np.ndarray
    _shards: list[np.ndarray]
    _starts: np.ndarray

    @classmethod
    def open(cls, cache: PreparedCache) -> SlicePool:
        labels, patients, names, split_of, shards = [], [], [], [], []
        for split in cache.splits:
            index = cache.index(split)
            labels.append(index["labels"].astype(np.int64))
            patients.append(index["patients"])
            names.append(index["filenames"])
            split_of.append(np.full(len(index["labels"]), split))
            shards.extend(cache.shards(split))
        sizes = [len(s) for s in shards]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        cat = lambda a: np.concatenate(a) if a else np.zeros(0)  # noqa: E731
        return cls(cache, cat(labels), cat(patients), cat(names), cat(split_of), shards, starts)

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Images ``[len(indices), S, S, 1]`` uint8 for global indices."""
        shard = np.searchsorted(self._starts, indices, side="right") - 1
        out = np.empty((len(indices), self.cache.size, self.cache.size, 1), np.uint8)
        for i, (s, g) in enumerate(zip(shard, indices, strict=True)):
            out[i] = self._shards[s][g - self._starts[s]]
        return out

    def splits(self, auto_split: str = "none", seed: int = 0) -> dict[str, np.ndarray]:
        """train/val/test index arrays: the folder's own, or an automatic split.

        Raises:
            SplitError: train or val is missing and no automatic split was asked for, or an
                automatic split by patient cannot give every split every class.
        """
        if auto_split == "none":
            own = {s: np.flatnonzero(self.split_of == s) for s in SPLITS}
            missing = [s for s in ("train", "val") if len(own[s]) == 0]
            if missing:
                raise SplitError(
                    f"the folder has no {' or '.join(missing)} split (label files "
                    f"{', '.join(f'{s}_COVIDx-CT.txt' for s in missing)}). Add them, or pass "
                    "--auto-split patient (patient-disjoint 70/15/15 of all slices) or "
                    "--auto-split slice (by slice: slices of one patient land in several "
                    "splits, so figures are optimistic; for smoke tests only)"
                )
            return own
        rng = np.random.default_rng(seed)
        out: dict[str, list[int]] = {s: [] for s in SPLITS}
        for label in range(len(CLASS_NAMES)):
            members = np.flatnonzero(self.labels == label)
            if auto_split == "slice":
                units = [np.array([m]) for m in rng.permutation(members)]
            else:
                pts = sorted(set(self.patients[members]))
                if 0 < len(pts) < 3:
                    raise SplitError(
                        f"--auto-split patient: class {CLASS_NAMES[label]} has {len(pts)} "
                        "patient(s); at least 3 are needed so that train, val and test each "
                        "get one. Use --auto-split slice for a smoke test."
                    )
                units = [members[self.patients[members] == p] for p in rng.permutation(pts)]
            n = len(units)
            n_val = max(1, round(n * AUTO_SPLIT_FRACTIONS[1])) if n >= 3 else 0
            n_test = max(1, round(n * AUTO_SPLIT_FRACTIONS[2])) if n >= 3 else 0
            for k, unit in enumerate(units):
                split = "val" if k < n_val else "test" if k < n_val + n_test else "train"
                out[split].extend(unit.tolist())
        return {s: np.array(sorted(v), dtype=np.int64) for s, v in out.items()}


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """n / (k * count_c): every class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    n, k = len(labels), len(CLASS_NAMES)
    return {c: (n / (k * counts[c]) if counts[c] else 0.0) for c in range(k)}


def augmenter(cfg: TrainConfig) -> keras.Sequential | None:
    """Keras preprocessing layers for the training split; None when augmentation is off."""

    if not cfg.augment:
        return None
    steps: list[keras.layers.Layer] = []
    seed = cfg.seed
    if cfg.flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if cfg.rotation_degrees > 0:
        steps.append(
            keras.layers.RandomRotation(
                cfg.rotation_degrees / 360.0, fill_mode="constant", seed=seed + 1
            )
        )
    if cfg.zoom > 0:
        steps.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=seed + 2))
    if cfg.shift > 0:
        steps.append(
            keras.layers.RandomTranslation(
                cfg.shift, cfg.shift, fill_mode="constant", seed=seed + 3
            )
        )
    if cfg.brightness > 0:
        steps.append(
            keras.layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed + 4)
        )
    if cfg.contrast > 0:
        steps.append(keras.layers.RandomContrast(cfg.contrast, seed=seed + 5))
    return keras.Sequential(steps, name="augmentation") if steps else None


def steps_per_epoch(count: int, batch: int, workers: int | None = None) -> int:
    """Steps in one epoch over ``count`` slices: batches of ``batch`` (the last one partial),
    or with ``workers`` (multi-worker) whole global batches of ``workers x batch`` only.

    Raises:
        SplitError: multi-worker, and fewer slices than one global batch.
    """
    if workers is None:
        return max(1, math.ceil(count / batch))
    steps = count // (workers * batch)
    if steps == 0:
        raise SplitError(
            f"{count} slices are fewer than one global batch ({workers} workers x {batch}); "
            "lower --batch-size"
        )
    return steps


def make_dataset(
    pool: SlicePool,
    indices: np.ndarray,
    cfg: TrainConfig,
    training: bool,
    weights: dict[int, float] | None = None,
    shard: tuple[int, int] | None = None,
) -> tuple[tf.data.Dataset, int]:
    """Batches of (uint8 images ``[B, S, S, 1]``, one-hot labels ``[B, 3]``[, weights ``[B]``]).

    Training: shuffled each epoch; with ``balance="sampling"`` classes are drawn with equal
    probability; augmented. Evaluation: in order, no augmentation. ``weights`` (class ->
    weight) adds per-example loss weights, as Keras's ``class_weight`` would.

    ``shard=(i, n)``: worker i of n in multi-worker training. Every worker draws the same
    index stream (same seed), cuts it into global batches of ``n x batch_size`` (the last
    partial one dropped, so every worker runs the same number of steps) and keeps block i of
    each: the workers read disjoint slices of the index, no example twice in an epoch, and one
    step over all workers sees the examples a single worker with the global batch would. The
    dataset carries ``AutoShardPolicy.OFF``: tf.data must not shard it again.

    Returns:
        The dataset and the number of steps in one epoch.

    Raises:
        SplitError: the split is smaller than one global batch.
    """
    size, k = pool.cache.size, len(CLASS_NAMES)
    index, workers = shard or (0, 1)
    batch, global_batch = cfg.batch_size, cfg.batch_size * workers
    steps = steps_per_epoch(len(indices), batch, None if shard is None else workers)
    if training and cfg.balance == "sampling":
        per_class = [indices[pool.labels[indices] == c] for c in range(k)]
        per_class = [p for p in per_class if len(p)]
        streams = [
            tf.data.Dataset.from_tensor_slices(p).shuffle(len(p), seed=cfg.seed + i).repeat()
            for i, p in enumerate(per_class)
        ]
        ds = tf.data.Dataset.sample_from_datasets(streams, seed=cfg.seed).take(steps * global_batch)
    else:
        ds = tf.data.Dataset.from_tensor_slices(indices)
        if training:
            ds = ds.shuffle(len(indices), seed=cfg.seed, reshuffle_each_iteration=True)
    if shard is None:
        ds = ds.batch(batch)
    else:
        ds = ds.batch(global_batch, drop_remainder=True).map(
            lambda ids: ids[index * batch : (index + 1) * batch]
        )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
    table = np.array([(weights or {}).get(c, 1.0) for c in range(k)], np.float32)

    def load(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        labels = pool.labels[idx]
        return pool.gather(idx), np.eye(k, dtype=np.float32)[labels], table[labels]

    def fetch(idx: tf.Tensor) -> tuple[tf.Tensor, ...]:
        images, onehot, sample = tf.numpy_function(load, [idx], [tf.uint8, tf.float32, tf.float32])
        images.set_shape([None, size, size, 1])
        onehot.set_shape([None, k])
        sample.set_shape([None])
        return (images, onehot, sample) if weights is not None else (images, onehot)

    ds = ds.map(fetch, num_parallel_calls=tf.data.AUTOTUNE)
    aug = augmenter(cfg) if training else None
    if aug is not None:

        def augment(images: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
            out = aug(tf.cast(images, tf.float32), training=True)
            return (tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8), *rest)

        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE), steps
