"""The tf.data pipeline over the prepared cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidct.config import TrainConfig
from training.cache import PreparedCache, prepare_cache
from training.data import SlicePool, SplitError, class_weights, make_dataset, steps_per_epoch


@pytest.fixture(scope="module")
def pool(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SlicePool:
    out = tmp_path_factory.mktemp("cache")
    prepare_cache(synth_dir, out, size=48, shard_size=7)
    return SlicePool.open(PreparedCache(out))


def test_gather_across_shards_matches_the_cache(pool: SlicePool) -> None:
    cache = pool.cache
    every = np.concatenate([cache.images(s) for s in cache.splits])
    idx = np.array([0, 6, 7, 13, len(pool) - 1, 3])
    assert np.array_equal(pool.gather(idx), every[idx])


def test_eval_batches_are_in_order_and_unaugmented(pool: SlicePool) -> None:
    idx = pool.splits()["val"]
    ds, steps = make_dataset(pool, idx, TrainConfig(batch_size=4), training=False)
    images = np.concatenate([x.numpy() for x, _ in ds])
    labels = np.concatenate([y.numpy() for _, y in ds])
    assert images.dtype == np.uint8 and images.shape[1:] == (48, 48, 1)
    assert np.array_equal(images, pool.gather(idx))
    assert np.array_equal(labels.argmax(1), pool.labels[idx])
    assert steps == int(np.ceil(len(idx) / 4))


def test_training_batches_are_augmented_uint8_and_deterministic(pool: SlicePool) -> None:
    idx = pool.splits()["train"]
    cfg = TrainConfig(batch_size=len(idx), seed=3)
    first = next(iter(make_dataset(pool, idx, cfg, training=True)[0]))[0].numpy()
    again = next(iter(make_dataset(pool, idx, cfg, training=True)[0]))[0].numpy()
    plain = next(
        iter(
            make_dataset(
                pool, idx, TrainConfig(batch_size=len(idx), seed=3, augment=False), training=True
            )[0]
        )
    )
    assert first.dtype == np.uint8
    assert np.array_equal(first, again)  # same seed, same augmented batch
    assert not np.array_equal(np.sort(first.ravel()), np.sort(plain[0].numpy().ravel()))


def test_balanced_sampling_draws_classes_equally(pool: SlicePool) -> None:
    idx = pool.splits()["train"]
    lab = pool.labels[idx]
    skewed = np.concatenate([idx[lab == 2], idx[lab == 0][:1], idx[lab == 1][:2]])
    counts = np.zeros(3)
    for seed in range(20):
        cfg = TrainConfig(batch_size=4, balance="sampling", augment=False, seed=seed)
        ds, _ = make_dataset(pool, skewed, cfg, training=True)
        for _, y in ds:
            counts += y.numpy().sum(0)
    # Without balancing the draw would follow the skew (9:1:2 here).
    assert counts.min() / counts.max() > 0.6, counts


def test_class_weights_equalise_classes() -> None:
    w = class_weights(np.array([0] * 6 + [1] * 3 + [2] * 1))
    assert w == pytest.approx({0: 10 / 18, 1: 10 / 9, 2: 10 / 3})


def test_missing_splits_explain_what_to_do(fixtures: Path, tmp_path: Path) -> None:
    prepare_cache(fixtures / "covidxct-real", tmp_path / "c", size=32)
    mini = SlicePool.open(PreparedCache(tmp_path / "c"))
    with pytest.raises(SplitError, match="--auto-split patient"):
        mini.splits()
    with pytest.raises(SplitError, match="at least 3 are needed"):
        mini.splits("patient")
    by_slice = mini.splits("slice")
    assert sum(len(v) for v in by_slice.values()) == 5


def test_auto_split_by_patient_is_patient_disjoint(pool: SlicePool) -> None:
    splits = pool.splits("patient", seed=4)
    owners = {s: set(pool.patients[v]) for s, v in splits.items()}
    assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
    assert sum(len(v) for v in splits.values()) == len(pool)


@pytest.mark.parametrize("balance", ["class-weights", "sampling"])
def test_workers_read_disjoint_blocks_of_each_global_batch(pool: SlicePool, balance: str) -> None:
    """Sharding for multi-worker training: counted per worker, no example twice per epoch,
    and each step's blocks together are the global batch one worker would have drawn."""
    idx = pool.splits()["train"]
    cfg = TrainConfig(batch_size=3, augment=False, balance=balance)
    workers = 2
    seen: list[list[np.ndarray]] = []
    for i in range(workers):
        ds, steps = make_dataset(pool, idx, cfg, training=True, shard=(i, workers))
        batches = [x.numpy() for x, _ in ds]
        assert len(batches) == steps == len(idx) // (workers * cfg.batch_size)
        assert all(len(b) == cfg.batch_size for b in batches)
        seen.append(batches)
    per_worker = [np.concatenate(b) for b in seen]
    print(f"\nexamples per worker per epoch ({balance}): {[len(w) for w in per_worker]}")
    assert [len(w) for w in per_worker] == [steps * cfg.batch_size] * workers
    whole = TrainConfig(batch_size=cfg.batch_size * workers, augment=False, balance=balance)
    single = [x.numpy() for x, _ in make_dataset(pool, idx, whole, training=True)[0]]
    for step in range(steps):  # worker i's step = block i of the single worker's batch
        np.testing.assert_array_equal(np.concatenate([w[step] for w in seen]), single[step])
    if balance != "sampling":  # sampling draws with replacement by design
        flat = np.concatenate(per_worker).reshape(len(np.concatenate(per_worker)), -1)
        assert len({row.tobytes() for row in flat}) == len(flat)  # every slice once at most


def test_sample_weights_follow_the_class_weights(pool: SlicePool) -> None:
    idx = pool.splits()["train"]
    weights = class_weights(pool.labels[idx])
    ds, _ = make_dataset(pool, idx, TrainConfig(batch_size=4), training=False, weights=weights)
    for _, onehot, sample in ds:
        expected = [weights[int(c)] for c in onehot.numpy().argmax(1)]
        np.testing.assert_allclose(sample.numpy(), expected, rtol=1e-6)


def test_a_split_smaller_than_one_global_batch_is_refused(pool: SlicePool) -> None:
    idx = pool.splits()["val"][:5]
    with pytest.raises(SplitError, match="fewer than one global batch"):
        make_dataset(pool, idx, TrainConfig(batch_size=4), training=True, shard=(0, 2))


@pytest.mark.parametrize(
    ("count", "batch", "workers", "steps"),
    [(10, 4, None, 3), (3, 8, None, 1), (17, 4, 2, 2), (16, 4, 2, 2), (8, 4, 2, 1)],
)
def test_steps_per_epoch_match_the_dataset(
    pool: SlicePool, count: int, batch: int, workers: int | None, steps: int
) -> None:
    assert steps_per_epoch(count, batch, workers) == steps
    idx = np.arange(min(count, pool.cache.size))
    if len(idx) == count:  # the dataset the trainer builds runs exactly that many steps
        shard = None if workers is None else (0, workers)
        ds, n = make_dataset(pool, idx, TrainConfig(batch_size=batch), False, shard=shard)
        assert n == steps == sum(1 for _ in ds)
