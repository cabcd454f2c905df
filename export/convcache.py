"""The conversion cache: a SavedModel's ONNX graph and its own answers on the reference slices,
kept by content.

Converting DenseNet121 with tf2onnx takes about 30 s and loading the SavedModel for the parity
check about 15 s; an export of a run already converted (another target, a rerun after a killed
export, a redeploy's retry, INT8 after fp32) reuses both. The key is the sha256 of every file of
the SavedModel, the ModelSpec, the opset, the converter's package versions and the reference
slices' bytes, so a changed model, spec, tool or slice converts again. The parity check itself
still runs on every export: ONNX Runtime on the staged copy against the SavedModel's recorded
answers.

Entries live in ``<cache root>/onnx/<key>/`` (``$COVIDCT_CACHE_DIR``, else
``~/.cache/covidct``), are written whole or not at all (a folder renamed into place), and the
oldest beyond ``KEEP`` are removed. Deleting the folder is always safe. A cache that cannot be
written (read-only, full disk) costs the time, never the export.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from covidct.config import ModelSpec
from covidct.files import sha256_file
from export.repository import sha256_tree

log = logging.getLogger(__name__)

#: Entries kept (the most recently used); one DenseNet121 entry is about 30 MB.
KEEP = 8
TOOLS = ("tensorflow-cpu", "tf2onnx", "onnx")


@dataclass(frozen=True)
class Entry:
    """A cached conversion: ``model.onnx`` and the SavedModel's outputs on the slices."""

    folder: Path

    @property
    def onnx(self) -> Path:
        return self.folder / "model.onnx"

    def reference(self) -> dict[str, np.ndarray]:
        with np.load(self.folder / "reference.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def cache_dir() -> Path:
    from training.run import default_cache_root

    return default_cache_root() / "onnx"


def conversion_key(saved_model: Path, spec: ModelSpec, opset: int, slices: Sequence[Path]) -> str:
    """What the conversion and the reference answers depend on, hashed: the slices are
    preprocessed by the spec, and the ONNX tensors named after it."""
    parts = {
        "spec": spec.to_dict(),
        "saved_model": sha256_tree(saved_model),
        "opset": opset,
        "tools": tool_versions(TOOLS),
        "slices": [sha256_file(p) for p in slices],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def tool_versions(packages: Sequence[str]) -> dict[str, str]:
    """Each installed package's version (``absent`` for one not installed)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def lookup(key: str, root: Path | None = None) -> Entry | None:
    """The entry for ``key`` if whole (its mark of use refreshed), else None."""
    entry = Entry((root or cache_dir()) / key)
    if not (entry.onnx.is_file() and (entry.folder / "reference.npz").is_file()):
        return None
    with contextlib.suppress(OSError):
        os.utime(entry.folder)
    return entry


def fetch(key: str, onnx_dest: Path, root: Path | None = None) -> dict[str, np.ndarray] | None:
    """Copy the cached graph to ``onnx_dest`` and return the SavedModel's recorded answers, or
    None: no entry, or one pruned or damaged meanwhile (then the caller converts again)."""
    entry = lookup(key, root)
    if entry is None:
        return None
    try:
        shutil.copyfile(entry.onnx, onnx_dest)
        return entry.reference()
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        log.warning("conversion cache entry %s unusable (%s): converting again", key, e)
        return None


def store(
    key: str, onnx_path: Path, reference: dict[str, np.ndarray], root: Path | None = None
) -> None:
    """Keep ``onnx_path`` and ``reference`` under ``key``; a failure is logged, not raised."""
    root = root or cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        try:
            shutil.copyfile(onnx_path, tmp / "model.onnx")
            np.savez(tmp / "reference.npz", **reference)
            tmp.rename(root / key)  # atomic; fails if another export stored it first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (root / key).is_dir():
                raise
        prune(root)
    except OSError as e:
        log.warning("conversion cache %s not written (%s): the next export converts again", root, e)


def prune(root: Path, keep: int = KEEP) -> None:
    """Remove the least recently used entries beyond ``keep``, and what a killed export left
    half-written more than an hour ago."""
    folders = [p for p in root.iterdir() if p.is_dir()]
    left = [p for p in folders if p.name.startswith(".tmp-")]
    for old in left:
        if time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)
    entries = sorted(
        (p for p in folders if p not in left), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
