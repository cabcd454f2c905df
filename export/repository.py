"""The Triton model repository: ``config.pbtxt`` generated from a ModelSpec, atomic versions.

Layout::

    REPO/<model>/config.pbtxt      generated here, never hand-written
    REPO/<model>/labels.txt        class names, for Triton's classification extension
    REPO/<model>/<version>/        model.onnx (+ model.py for the CPU target), manifest.json

A new version is assembled in ``REPO/<model>/.tmp-<random>/`` (Triton ignores folders whose
name is not a number) and renamed into place in one step, so a failed or interrupted export
leaves the repository as it was. Versions only increase.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct.config import ModelSpec
from training.cache import sha256_file

TARGETS = ("cpu", "onnx-trt", "tensorrt-plan")
SPEC_PARAMETER = "covidct_model_spec"
LABELS_FILE = "labels.txt"
MANIFEST = "manifest.json"


class RepositoryError(RuntimeError):
    """The repository or a version cannot be written; the message says why."""


@dataclass(frozen=True)
class ServingConfig:
    """How Triton serves the model (everything in config.pbtxt that is not the ModelSpec).

    Attributes:
        target: cpu (Python backend running ONNX Runtime), onnx-trt (ONNX Runtime backend
            with the TensorRT accelerator) or tensorrt-plan (a TensorRT engine).
        max_batch_size: largest batch Triton forms.
        dynamic_batching: let Triton group concurrent requests into one execution.
        max_queue_delay_us: how long the dynamic batcher waits to fill a batch.
        instance_count: model instances (CPU: processes; GPU: per device).
        versions_kept: version_policy latest N.
        pinned_versions: when set, version_policy specific (exactly these versions): what a
            redeploy writes, so that the repository on disk says what Triton serves.
        fp16: TensorRT precision for the GPU targets.
        workspace_mb: TensorRT workspace.
        trt_cache_path: where ONNX Runtime keeps built TensorRT engines (onnx-trt).
    """

    target: str = "cpu"
    max_batch_size: int = 8
    dynamic_batching: bool = True
    max_queue_delay_us: int = 2000
    instance_count: int = 1
    versions_kept: int = 2
    fp16: bool = True
    workspace_mb: int = 2048
    trt_cache_path: str = "/tmp/covidct-trt-cache"
    pinned_versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # manifest.json gives a list; keep the dataclass hashable.
        object.__setattr__(self, "pinned_versions", tuple(sorted(set(self.pinned_versions))))
        if self.target not in TARGETS:
            raise RepositoryError(f"target {self.target!r} must be one of {', '.join(TARGETS)}")
        if not 1 <= self.max_batch_size <= 1024:
            raise RepositoryError(f"max_batch_size {self.max_batch_size} must be in [1, 1024]")
        if self.max_queue_delay_us < 0 or self.instance_count < 1 or self.versions_kept < 1:
            raise RepositoryError("queue delay must be >= 0, instance and version counts >= 1")

    @property
    def gpu(self) -> bool:
        return self.target != "cpu"

    def preferred_batch_sizes(self) -> list[int]:
        sizes, b = [], 2
        while b <= self.max_batch_size:
            sizes.append(b)
            b *= 2
        return sizes or [self.max_batch_size]


def _dims(values: tuple[int, ...] | list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid protobuf text string


def _version_policy(serving: ServingConfig) -> str:
    if serving.pinned_versions:
        return f"version_policy: {{ specific: {{ versions: {_dims(serving.pinned_versions)} }} }}"
    return f"version_policy: {{ latest: {{ num_versions: {serving.versions_kept} }} }}"


def render_config(spec: ModelSpec, serving: ServingConfig, cam_hw: tuple[int, int]) -> str:
    """config.pbtxt for one model: deterministic text, so golden tests can pin it."""
    s = spec.image_size
    image_dims = [s, s, 1]
    lines = [f"name: {_quote(spec.name)}"]
    if serving.target == "cpu":
        lines.append('backend: "python"')
    elif serving.target == "onnx-trt":
        lines.append('platform: "onnxruntime_onnx"')
    else:
        lines.append('platform: "tensorrt_plan"')
    lines += [
        f"max_batch_size: {serving.max_batch_size}",
        _version_policy(serving),
        "input [",
        "  {",
        f"    name: {_quote(spec.input_name)}",
        "    data_type: TYPE_UINT8",
        f"    dims: {_dims(image_dims)}",
        "  }",
        "]",
        "output [",
        "  {",
        f"    name: {_quote(spec.probabilities_name)}",
        f"    data_type: TYPE_{spec.output_dtype}",
        f"    dims: {_dims([spec.num_classes])}",
        f"    label_filename: {_quote(LABELS_FILE)}",
        "  },",
        "  {",
        f"    name: {_quote(spec.cam_name)}",
        f"    data_type: TYPE_{spec.output_dtype}",
        f"    dims: {_dims([cam_hw[0], cam_hw[1], spec.num_classes])}",
        "  }",
        "]",
    ]
    if serving.dynamic_batching:
        lines += [
            "dynamic_batching {",
            f"  preferred_batch_size: {_dims(serving.preferred_batch_sizes())}",
            f"  max_queue_delay_microseconds: {serving.max_queue_delay_us}",
            "}",
        ]
    lines += [
        "instance_group [",
        "  {",
        f"    count: {serving.instance_count}",
        f"    kind: {'KIND_GPU' if serving.gpu else 'KIND_CPU'}",
        "  }",
        "]",
        "model_warmup [",
        "  {",
        '    name: "zeros"',
        "    batch_size: 1",
        "    inputs {",
        f"      key: {_quote(spec.input_name)}",
        "      value {",
        "        data_type: TYPE_UINT8",
        f"        dims: {_dims(image_dims)}",
        "        zero_data: true",
        "      }",
        "    }",
        "  }",
        "]",
    ]
    if serving.target == "onnx-trt":
        precision = "FP16" if serving.fp16 else "FP32"
        lines += [
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator: [",
            "      {",
            '        name: "tensorrt"',
            f'        parameters {{ key: "precision_mode" value: "{precision}" }}',
            f'        parameters {{ key: "max_workspace_size_bytes" value: '
            f'"{serving.workspace_mb * 1024 * 1024}" }}',
            '        parameters { key: "trt_engine_cache_enable" value: "1" }',
            f'        parameters {{ key: "trt_engine_cache_path" value: '
            f"{_quote(serving.trt_cache_path)} }}",
            "      }",
            "    ]",
            "  }",
            "}",
        ]
    lines += [
        "parameters {",
        f"  key: {_quote(SPEC_PARAMETER)}",
        f"  value: {{ string_value: {_quote(json.dumps(spec.to_dict(), sort_keys=True))} }}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def spec_from_config(text: str) -> ModelSpec:
    """Read the ModelSpec back from a config.pbtxt (what a client does with the server's)."""
    marker = f"key: {_quote(SPEC_PARAMETER)}"
    at = text.find(marker)
    if at < 0:
        raise RepositoryError(f"config has no {SPEC_PARAMETER} parameter")
    start = text.index("string_value:", at) + len("string_value:")
    decoder = json.JSONDecoder()
    value, _ = decoder.raw_decode(text[start:].lstrip())
    return ModelSpec.from_dict(json.loads(value))


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): sha256_file(path)
        for path in sorted(p for p in root.rglob("*") if p.is_file())
    }


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from a server running as another user
    os.replace(tmp, path)


@contextmanager
def staged_version(repository: Path, model: str) -> Iterator[Path]:
    """A temporary version folder inside the model folder; removed unless published."""
    model_dir = repository / model
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=model_dir, prefix=".tmp-version-"))
    tmp.chmod(0o755)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_version(
    repository: Path,
    spec: ModelSpec,
    serving: ServingConfig,
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
        _atomic_write(labels, "\n".join(spec.class_names) + "\n")
    fd, config_tmp = tempfile.mkstemp(dir=model_dir, prefix=".tmp-config-")
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
    path = model_dir / str(version) / MANIFEST
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise RepositoryError(f"{path}: cannot read the version's manifest: {e}") from e


def _cam_hw_of(text: str, spec: ModelSpec) -> tuple[int, int]:
    at = text.index(f"name: {_quote(spec.cam_name)}")
    start = text.index("dims: [", at) + len("dims: [")
    dims = [int(v) for v in text[start : text.index("]", start)].split(",")]
    return dims[0], dims[1]


def pinned_config(model_dir: Path, spec_version: int, served: list[int]) -> str:
    """config.pbtxt serving exactly ``served``, with the ModelSpec of ``spec_version``.

    The spec and serving settings come from that version's manifest, so a rollback puts
    back the old version's own spec. Every version named must take the same tensors.
    """
    manifest = read_manifest(model_dir, spec_version)
    spec = ModelSpec.from_dict(manifest["model_spec"])
    serving = ServingConfig(**{**manifest["serving"], "pinned_versions": tuple(served)})
    return render_config(spec, serving, version_cam_hw(model_dir, manifest, spec))


def version_cam_hw(model_dir: Path, manifest: dict[str, Any], spec: ModelSpec) -> tuple[int, int]:
    """The CAM's height and width of the version whose ``manifest`` this is."""
    if "cam_hw" in manifest:
        return int(manifest["cam_hw"][0]), int(manifest["cam_hw"][1])
    # versions exported before cam_hw was recorded share the current config's
    return _cam_hw_of((model_dir / "config.pbtxt").read_text(), spec)


def write_config(model_dir: Path, text: str) -> None:
    """Replace config.pbtxt atomically."""
    _atomic_write(model_dir / "config.pbtxt", text)


def remove_staged(model_dir: Path) -> list[str]:
    """Delete what an interrupted export left (``.tmp-*``); returns the names removed."""
    removed = []
    for stale in model_dir.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
        removed.append(stale.name)
    return removed
