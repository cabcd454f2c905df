"""The Triton model repository: ``config.pbtxt`` generated from a ModelSpec, atomic versions.

Layout::

    REPO/<model>/config.pbtxt      generated here, never hand-written
    REPO/<model>/labels.txt        class names, for Triton's classification extension
    REPO/<model>/<version>/        model.onnx (+ model.py for the CPU target), manifest.json

A new version is assembled in ``REPO/<model>/.tmp-version-<pid>-<random>/`` (Triton ignores
folders whose name is not a number) and renamed into place in one step, so a failed or
interrupted export leaves the repository as it was. Versions only increase.

One writer at a time: export, redeploy and rollback hold ``repository_lock`` (an exclusive
``flock`` on ``REPO/.covidct.lock``); a second one is refused at once, naming the holder.
Leftovers are removed only when the process that staged them is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from covidct.config import ModelSpec
from covidct.files import atomic_write_text, sha256_file
from export.tritonconfig import (
    LABELS_FILE,
    RepositoryError,
    TritonOptions,
    cam_hw_of,
    render_config,
    spec_from_config,
)

MANIFEST = "manifest.json"
LOCK_FILE = ".covidct.lock"
_STAGED_PID = re.compile(r"^\.tmp-[a-z]+-(\d+)-")
_held: dict[Path, int] = {}  # repositories this process holds, with nesting depth


class RepositoryBusy(RepositoryError):
    """Another export, redeploy or rollback is changing the repository."""


@contextmanager
def repository_lock(repository: Path, what: str) -> Iterator[None]:
    """Hold the repository for one writer (``what``: the command, named to whoever waits).

    Re-entrant within a process (a redeploy exports while holding it). The lock is an
    ``flock``: the kernel releases it when its holder dies, so a killed writer never leaves
    the repository locked.

    Raises:
        RepositoryBusy: another process holds it; nothing was changed.
    """
    key = repository.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    repository.mkdir(parents=True, exist_ok=True)
    fd = os.open(repository / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise RepositoryBusy(
                f"{repository} is being changed by {holder}: try again when it has finished "
                "(nothing was changed)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})".encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def versions(model_dir: Path) -> list[int]:
    """The model's published versions, oldest first (staged folders are not numbers)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def sha256_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(path.relative_to(root)): sha256_file(path)
        for path in sorted(p for p in root.rglob("*") if p.is_file())
    }


@contextmanager
def staged_version(repository: Path, model: str) -> Iterator[Path]:
    """A temporary version folder inside the model folder; removed unless published."""
    model_dir = repository / model
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".tmp-version-{os.getpid()}-"))
    tmp.chmod(0o755)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_version(
    repository: Path,
    spec: ModelSpec,
    serving: TritonOptions,
    staged: Path,
    cam_hw: tuple[int, int],
    manifest: dict[str, Any],
    before_rename: Callable[[], None] | None = None,
) -> int:
    """Move a staged version into place as the next version number, then its config.

    Everything is written beside its final place first; then two renames publish it: the
    version folder, then config.pbtxt. Until the first rename the repository is unchanged.
    Both names are checked to take the same input shape, so an old config never meets a new
    version's tensors.

    Returns:
        The new version number.
    """
    model_dir = repository / spec.name
    existing = versions(model_dir)
    version = (max(existing) + 1) if existing else 1
    current = model_dir / "config.pbtxt"
    if existing and current.is_file():
        old = spec_from_config(current.read_text())
        if old.image_size != spec.image_size or old.class_names != spec.class_names:
            raise RepositoryError(
                f"{model_dir}: served versions take {old.image_size}x{old.image_size} input; "
                f"the new model takes {spec.image_size}x{spec.image_size}. Export it under "
                "another --name, or remove the old versions first"
            )
    files = sha256_tree(staged)
    (staged / MANIFEST).write_text(
        json.dumps({**manifest, "version": version, "files": files}, indent=2) + "\n"
    )
    labels = model_dir / LABELS_FILE
    if not labels.is_file():
        atomic_write_text(labels, "\n".join(spec.class_names) + "\n")
    fd, config_tmp = tempfile.mkstemp(dir=model_dir, prefix=f".tmp-config-{os.getpid()}-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render_config(spec, serving, cam_hw))
    os.chmod(config_tmp, 0o644)
    try:
        if before_rename is not None:
            before_rename()
        staged.rename(model_dir / str(version))
        os.replace(config_tmp, current)
    finally:
        Path(config_tmp).unlink(missing_ok=True)
    return version


def read_manifest(model_dir: Path, version: int) -> dict[str, Any]:
    """A version's ``manifest.json``.

    Raises:
        RepositoryError: missing or not JSON, naming the file.
    """
    path = model_dir / str(version) / MANIFEST
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise RepositoryError(f"{path}: cannot read the version's manifest: {e}") from e


def pinned_config(model_dir: Path, spec_version: int, served: list[int]) -> str:
    """config.pbtxt serving exactly ``served``, with the ModelSpec of ``spec_version``.

    The spec and serving settings come from that version's manifest, so a rollback puts
    back the old version's own spec. Every version named must take the same tensors.
    """
    manifest = read_manifest(model_dir, spec_version)
    spec = ModelSpec.from_dict(manifest["model_spec"])
    serving = TritonOptions(**{**manifest["serving"], "pinned_versions": tuple(served)})
    return render_config(spec, serving, version_cam_hw(model_dir, manifest, spec))


def version_cam_hw(model_dir: Path, manifest: dict[str, Any], spec: ModelSpec) -> tuple[int, int]:
    """The CAM's height and width of the version whose ``manifest`` this is."""
    if "cam_hw" in manifest:
        return int(manifest["cam_hw"][0]), int(manifest["cam_hw"][1])
    # versions exported before cam_hw was recorded share the current config's
    return cam_hw_of((model_dir / "config.pbtxt").read_text(), spec)


def write_config(model_dir: Path, text: str) -> None:
    """Replace config.pbtxt atomically."""
    atomic_write_text(model_dir / "config.pbtxt", text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_staged(model_dir: Path) -> list[str]:
    """Delete what interrupted exports left (``.tmp-*`` of processes that are gone, or of no
    recorded process); a live process's staging stays. Returns the names removed."""
    removed = []
    for stale in model_dir.glob(".tmp-*"):
        owner = _STAGED_PID.match(stale.name)
        if owner and int(owner.group(1)) != os.getpid() and _alive(int(owner.group(1))):
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
        removed.append(stale.name)
    return removed
