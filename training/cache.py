"""The prepared cache: every slice preprocessed once into memory-mapped uint8 shards.

Training never decodes a PNG in its loop: ``covidct data prepare`` runs
:func:`covidct.preprocessing.preprocess_bytes` (with the label box) over a COVIDx-CT folder,
in parallel, into shards of ``[n, S, S, 1]`` uint8 ``.npy`` files plus, per split, an index
(file names, labels, boxes, patient ids) and a ``manifest.json``.

Resumable: a shard is written to a temporary name and renamed into place, then its sidecar
``.json`` (the commit marker) is written the same way. A rerun keeps every committed shard
whose content still matches the label files and rebuilds the rest; a half-written shard is
never used. The manifest is written last, so its presence means the cache is complete.

Layout::

    CACHE/params.json            what the cache was built from (size, recipe, label checksums)
    CACHE/train-00000.npy/.json  shard and its commit marker
    CACHE/train-index.npz        filenames, labels, boxes, patients in shard order
    CACHE/manifest.json          written last
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.config import CLASS_NAMES, INTERPOLATION, WINDOW_CENTRE_HU, WINDOW_WIDTH_HU
from covidct.dataset import Dataset, DatasetError, Sample, read_covidx
from covidct.errors import CovidctError
from covidct.files import atomic_write_text, sha256_file
from covidct.preprocessing import PreprocessingError, preprocess_bytes

CACHE_VERSION = 1
SHARD_SIZE = 512
MANIFEST = "manifest.json"
PARAMS = "params.json"


class CacheError(CovidctError):
    """The cache cannot be built or read; the message says why and what to do."""


@dataclass(frozen=True)
class _ShardJob:
    out: Path
    name: str
    paths: tuple[str, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    size: int
    content_hash: str


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _content_hash(samples: Sequence[Sample], size: int) -> str:
    text = "\n".join(f"{s.filename} {s.label} {' '.join(map(str, s.box))}" for s in samples)
    return hashlib.sha256(f"{size}\n{text}".encode()).hexdigest()


def _build_shard(job: _ShardJob) -> tuple[str, int, str, list[str]]:
    """Preprocess one shard; returns (name, count, sha256, errors). Commits only if no error."""
    final = job.out / f"{job.name}.npy"
    tmp = job.out / f".tmp-{job.name}.npy"
    arr = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(job.paths), job.size, job.size, 1)
    )
    errors = []
    for i, (path, box) in enumerate(zip(job.paths, job.boxes, strict=True)):
        try:
            arr[i] = preprocess_bytes(Path(path).read_bytes(), job.size, box=box).image
        except (PreprocessingError, OSError) as e:
            errors.append(f"{path}: {e}")
    arr.flush()
    del arr
    if errors:
        tmp.unlink(missing_ok=True)
        return job.name, 0, "", errors
    tmp.replace(final)
    digest = sha256_file(final)
    _write_json(
        job.out / f"{job.name}.json",
        {"count": len(job.paths), "content": job.content_hash, "sha256": digest},
    )
    return job.name, len(job.paths), digest, []


def _committed(out: Path, name: str, content_hash: str) -> dict[str, Any] | None:
    marker = out / f"{name}.json"
    if not (marker.is_file() and (out / f"{name}.npy").is_file()):
        return None
    try:
        meta: dict[str, Any] = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return meta if meta.get("content") == content_hash else None


def prepare_cache(
    data_dir: str | Path,
    out: str | Path,
    size: int,
    workers: int = 1,
    shard_size: int = SHARD_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Build (or finish, or reuse) the prepared cache of a COVIDx-CT folder.

    Args:
        data_dir: COVIDx-CT folder; it must pass :func:`covidct.dataset.read_covidx`.
        out: cache folder.
        size: model input size S.
        workers: processes preprocessing shards in parallel.
        shard_size: slices per shard.
        progress: called with (slices done, total slices) as shards finish.

    Returns:
        The manifest.

    Raises:
        DatasetError: the folder has problems (all listed).
        CacheError: ``out`` holds a cache built differently, or slices failed to preprocess.
    """
    # The label files alone decide whether a finished cache can be reused; the image
    # headers (slow for a full COVIDx-CT folder) are checked only when something must be built.
    ds = read_checked(data_dir, check_images=False)
    out = Path(out)
    params = _params(ds, size)
    finished = _reusable(out, params)
    if finished is not None:
        return finished
    ds = read_checked(data_dir, check_images=True)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / PARAMS).is_file():
        _write_json(out / PARAMS, params)
    for stale in out.glob(".tmp-*"):
        stale.unlink()  # a half-written shard from an interrupted run is never used

    started = time.perf_counter()
    plan = _plan_shards(ds, out, size, shard_size)
    total = sum(len(v) for v in ds.splits.values())
    shard_meta = _build_shards(plan, workers, total, progress)
    splits = _write_indexes(out, plan.shards, shard_meta)
    elapsed = time.perf_counter() - started
    reused = plan.reused
    built = total - reused
    manifest = {
        **params,
        "source": str(Path(data_dir).resolve()),
        "splits": splits,
        "build": {
            "workers": workers,
            "seconds": round(elapsed, 3),
            "slices_built": built,
            "slices_reused": reused,
            "slices_per_second": round(built / elapsed, 2) if built else None,
        },
    }
    _write_json(out / MANIFEST, manifest)
    return manifest


def read_checked(data_dir: str | Path, check_images: bool = True) -> Dataset:
    """Read a COVIDx-CT folder that must have no problems.

    Args:
        data_dir: the folder.
        check_images: also open every image's header (slow); the label files alone otherwise.

    Raises:
        DatasetError: the folder has problems (all listed).
    """
    ds = read_covidx(data_dir, check_images=check_images)
    if ds.problems:
        raise DatasetError(ds.root, ds.problems)
    return ds


def _params(ds: Dataset, size: int) -> dict[str, Any]:
    """What a cache is built from: a cache built from other parameters is never reused."""
    return {
        "cache_version": CACHE_VERSION,
        "size": size,
        "window": [WINDOW_CENTRE_HU, WINDOW_WIDTH_HU],
        "interpolation": INTERPOLATION,
        "crop": "label-box",
        "label_files": ds.label_file_checksums(),
        "data_fingerprint": ds.fingerprint(),
    }


def _reusable(out: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a finished cache built from ``params`` in ``out``, else None.

    Raises:
        CacheError: ``out`` holds a cache built from other parameters.
    """
    params_path, manifest_path = out / PARAMS, out / MANIFEST
    if not params_path.is_file():
        return None
    old = json.loads(params_path.read_text(encoding="utf-8"))
    if old != params:
        changed = sorted(k for k in params if old.get(k) != params[k])
        raise CacheError(
            f"{out} holds a cache built with different {', '.join(changed)}; "
            "use another --out or delete that folder"
        )
    if manifest_path.is_file():
        return dict(json.loads(manifest_path.read_text(encoding="utf-8")))
    return None


@dataclass
class _Plan:
    """The shards of every split, which of them are already committed, and what to build."""

    shards: dict[str, list[tuple[str, list[Sample]]]]
    committed: dict[str, dict[str, Any]]
    jobs: list[_ShardJob]
    reused: int = 0  # slices in committed shards


def _plan_shards(ds: Dataset, out: Path, size: int, shard_size: int) -> _Plan:
    """Cut every split into shards; keep the committed ones whose content still matches."""
    plan = _Plan({}, {}, [])
    for split, samples in ds.splits.items():
        plan.shards[split] = []
        for k in range(0, max(len(samples), 1), shard_size):
            chunk = samples[k : k + shard_size]
            if not chunk:
                continue
            name = f"{split}-{k // shard_size:05d}"
            plan.shards[split].append((name, chunk))
            content = _content_hash(chunk, size)
            meta = _committed(out, name, content)
            if meta is not None:
                plan.committed[name] = meta
                plan.reused += len(chunk)
                continue
            paths = tuple(str(ds.image_path(s)) for s in chunk)
            boxes = tuple(s.box for s in chunk)
            plan.jobs.append(_ShardJob(out, name, paths, boxes, size, content))
    return plan


def _build_shards(
    plan: _Plan,
    workers: int,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, dict[str, Any]]:
    """Build the planned shards (in ``workers`` processes); returns every shard's metadata.

    Raises:
        CacheError: slices failed to preprocess (every finished shard is kept).
    """
    shard_meta = dict(plan.committed)
    done = plan.reused
    if progress:
        progress(done, total)
    errors: list[str] = []

    def collect(results: Iterable[tuple[str, int, str, list[str]]]) -> None:
        nonlocal done
        for name, count, digest, errs in results:
            errors.extend(errs)
            if not errs:
                shard_meta[name] = {"count": count, "sha256": digest}
                done += count
            if progress:
                progress(done, total)

    jobs = plan.jobs
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: the caller may have TensorFlow's threads running.
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            collect(pool.imap_unordered(_build_shard, jobs))
    else:
        collect(map(_build_shard, jobs))
    if errors:
        raise CacheError(
            f"{len(errors)} slice(s) failed to preprocess (finished shards are kept):\n  "
            + "\n  ".join(errors[:50])
        )
    return shard_meta


def _write_indexes(
    out: Path,
    shards: dict[str, list[tuple[str, list[Sample]]]],
    shard_meta: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Write each split's index (atomically); returns the manifest's "splits"."""
    splits: dict[str, Any] = {}
    for split, chunks in shards.items():
        samples = [s for _, chunk in chunks for s in chunk]
        np.savez(
            out / f".tmp-{split}-index.npz",
            filenames=np.array([s.filename for s in samples], dtype=str),
            labels=np.array([s.label for s in samples], dtype=np.int8),
            boxes=np.array([s.box for s in samples], dtype=np.int32).reshape(-1, 4),
            patients=np.array([s.patient for s in samples], dtype=str),
        )
        (out / f".tmp-{split}-index.npz").replace(out / f"{split}-index.npz")
        counts = np.bincount([s.label for s in samples], minlength=len(CLASS_NAMES))
        splits[split] = {
            "count": len(samples),
            "class_counts": dict(zip(CLASS_NAMES, map(int, counts), strict=True)),
            "shards": [
                {"name": name, "count": len(chunk), "sha256": shard_meta[name]["sha256"]}
                for name, chunk in chunks
            ],
        }
    return splits


class PreparedCache:
    """Read access to a finished cache (memory-mapped, nothing loaded eagerly)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.manifest: dict[str, Any] = json.loads(
                (self.path / MANIFEST).read_text(encoding="utf-8")
            )
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(
                f"{self.path}: not a finished cache (no readable {MANIFEST}); "
                "run `covidct data prepare`"
            ) from e
        if self.manifest.get("cache_version") != CACHE_VERSION:
            raise CacheError(
                f"{self.path}: cache version {self.manifest.get('cache_version')} "
                f"is not {CACHE_VERSION}; prepare it again"
            )

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def shards(self, split: str) -> list[np.ndarray]:
        """The split's image shards as read-only memory maps ``[n, S, S, 1]`` uint8."""
        return [
            np.load(self.path / f"{s['name']}.npy", mmap_mode="r")
            for s in self.manifest["splits"][split]["shards"]
        ]

    def index(self, split: str) -> dict[str, np.ndarray]:
        """filenames, labels, boxes and patients of a split, in shard order."""
        with np.load(self.path / f"{split}-index.npz") as z:
            return {k: z[k] for k in z.files}

    def images(self, split: str) -> np.ndarray:
        """All images of a split in one array (copies: for small splits and tests)."""
        shards = self.shards(split)
        if not shards:
            return np.zeros((0, self.size, self.size, 1), np.uint8)
        return np.concatenate(shards)

    def verify(self) -> list[str]:
        """Re-hash every shard; return the names whose content changed since building."""
        return [
            s["name"]
            for split in self.splits
            for s in self.manifest["splits"][split]["shards"]
            if sha256_file(self.path / f"{s['name']}.npy") != s["sha256"]
        ]
