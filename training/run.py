"""A training run's folder: its spec, its SavedModel, and the prepared data it trains on.

What training, evaluation, export and the benchmarks share about a run lives here, so none
of them imports another to find it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from covidct.config import ModelSpec, SpecError
from covidct.dataset import Dataset
from covidct.errors import CovidctError

SAVED_MODEL = "saved_model"


class TrainError(CovidctError, RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


def default_cache_root() -> Path:
    """Where prepared caches live: ``$COVIDCT_CACHE_DIR``, else ``~/.cache/covidct``."""
    return Path(os.environ.get("COVIDCT_CACHE_DIR", Path.home() / ".cache" / "covidct"))


def cache_folder(ds: Dataset, size: int, cache_root: Path | None = None) -> Path:
    """Where training keeps (and looks for) the cache of ``ds`` at ``size``."""
    return (cache_root or default_cache_root()) / f"{ds.fingerprint()[:16]}-S{size}"


def prepare_for_training(
    data: Path, size: int, cache_root: Path | None = None, workers: int | None = None
) -> tuple[Path, Dataset]:
    """Prepare (or reuse) the cache of ``data`` at ``size``; keyed by the data fingerprint.

    Returns:
        The cache folder and the folder's labels (read once, images not opened).
    """
    from training.cache import prepare_cache, read_checked

    ds = read_checked(data, check_images=False)
    out = cache_folder(ds, size, cache_root)
    with contextlib.ExitStack() as stack:
        try:  # workers of one machine (--launch-local) prepare it once; the others reuse it
            out.parent.mkdir(parents=True, exist_ok=True)
            lock = stack.enter_context(open(out.parent / f"{out.name}.lock", "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            pass  # a read-only cache (mounted prepared): nothing to build, nothing to lock
        prepare_cache(data, out, size, workers=workers or (os.cpu_count() or 1))
    return out, ds


def load_spec(run: Path) -> ModelSpec:
    """The run's ``model_spec.json``.

    Raises:
        TrainError: the spec is missing or invalid (the message names the file).
    """
    try:
        return ModelSpec.load(run / "model_spec.json")
    except SpecError as e:
        raise TrainError(str(e)) from e


class SavedModelRunner:
    """Batched inference through a SavedModel's serving signature."""

    def __init__(self, path: Path, spec: ModelSpec) -> None:
        import tensorflow as tf

        self._tf = tf
        self.spec = spec
        self._loaded = tf.saved_model.load(str(path))
        self.signature = self._loaded.signatures["serving_default"]

    def __call__(self, images: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
        outs: dict[str, list[np.ndarray]] = {
            self.spec.probabilities_name: [],
            self.spec.cam_name: [],
        }
        for i in range(0, len(images), batch_size):
            batch = self._tf.constant(images[i : i + batch_size])
            result = self.signature(**{self.spec.input_name: batch})
            for key in outs:
                outs[key].append(result[key].numpy())
        return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in outs.items()}


def export_saved_model(serve_model: Any, path: Path) -> None:
    """Export atomically: a temporary folder beside ``path`` renamed into place."""
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    serve_model.export(str(tmp), format="tf_saved_model", verbose=False)
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
