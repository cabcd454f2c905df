"""``covidct export``: a training run in, a new verified version of a Triton model out."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from covidct.config import ModelSpec
from covidct.samples import reference_slices
from export import convcache
from export.onnx import (
    OPSET,
    ExportError,
    check_parity,
    convert,
    onnx_session,
    run_onnx,
    slice_images,
)
from export.quantize import GateError
from export.repository import (
    TritonOptions,
    publish_version,
    remove_staged,
    repository_lock,
    staged_version,
)

log = logging.getLogger(__name__)

BACKEND_MODEL = Path(__file__).parent / "python_backend" / "model.py"
OPENVINO_BACKEND_MODEL = Path(__file__).parent / "python_backend" / "openvino_model.py"


def _calibration_images(data: Path, spec: ModelSpec, limit: int = 64) -> np.ndarray:
    """Validation slices of a COVIDx-CT folder from its prepared cache (val, else any split)."""
    from training.cache import PreparedCache
    from training.data import SlicePool
    from training.run import prepare_for_training

    cache_dir, _ = prepare_for_training(data, spec.image_size)
    pool = SlicePool.open(PreparedCache(cache_dir))
    idx = np.flatnonzero(pool.split_of == "val")
    if len(idx) == 0:
        idx = np.arange(len(pool))
    rng = np.random.default_rng(0)
    return pool.gather(np.sort(rng.permutation(idx)[:limit]))


def _agreement_files(data: Path, limit: int = 256) -> list[Path]:
    """Slices that judge INT8 agreement: the test split of a COVIDx-CT folder (held out from
    calibration, which reads val), else every PNG in it; evenly spaced, at most ``limit``."""
    from covidct.dataset import label_file

    labels = label_file(data, "test")
    if labels.is_file():
        names = [line.split()[0] for line in labels.read_text().splitlines() if line.strip()]
        files = [data / "images" / n for n in names]
    else:
        files = sorted((data / "images").glob("*.png")) or sorted(data.glob("*.png"))
    step = max(1, len(files) // limit)
    return files[::step][:limit]


def _split_checksums(run: Path) -> dict[str, str]:
    path = run / "data_fingerprint.json"
    return dict(json.loads(path.read_text())) if path.is_file() else {}


#: Largest probability difference between the TensorRT FP16 engine and ONNX Runtime on the
#: packaged real slices that deploy/trt-build accepts: room for FP16's rounding, far short of
#: a changed answer (the builder logs the difference it measured beside the engine).
TRT_FP16_TOLERANCE = 0.02


def _tensorrt_build(
    spec: ModelSpec, serving: TritonOptions, stage: Path, images: np.ndarray, probabilities: Any
) -> dict[str, Any]:
    """What deploy/trt-build/build_engines.py needs to build and check ``model.plan`` on the
    serving GPU (engines are specific to the GPU model and TensorRT version, so they are made
    there): shapes, precision, and the packaged real slices with ONNX Runtime's answers."""
    s, mb = spec.image_size, serving.max_batch_size
    (stage / "parity").mkdir()
    (stage / "parity" / "input.bin").write_bytes(np.ascontiguousarray(images, np.uint8).tobytes())
    expected = np.asarray(probabilities, dtype=np.float64).round(7).tolist()
    (stage / "parity" / "expected.json").write_text(
        json.dumps({spec.probabilities_name: expected}) + "\n"
    )
    return {
        "input": spec.input_name,
        "min_shape": [1, s, s, 1],
        "opt_shape": [max(1, mb // 2), s, s, 1],
        "max_shape": [mb, s, s, 1],
        "precision": "fp16" if serving.fp16 else "fp32",
        "workspace_mb": serving.workspace_mb,
        "parity": {
            "input": "parity/input.bin",
            "shape": [int(n) for n in images.shape],
            "expected": "parity/expected.json",
            "output": spec.probabilities_name,
            "max_abs_diff": TRT_FP16_TOLERANCE,
        },
    }


def _openvino_version(
    spec: ModelSpec,
    serving: TritonOptions,
    stage: Path,
    fp32_path: Path,
    images: np.ndarray,
    ort: dict[str, np.ndarray],
    judged: np.ndarray,
) -> dict[str, Any]:
    """The openvino target's files and checks: OpenVINO fp32 (``fp32_path``) matches ONNX
    Runtime on the reference slices (parity), a reduced precision (bf16 of the same model, or
    int8 of the QDQ model.onnx) passes the gate against OpenVINO fp32 on ``judged``; its
    compiled model is cached in the version folder."""
    import openvino as ov

    from export.openvino import Engine, cpu_flags, engine_config, run_openvino, write_engine
    from export.quantize import judge_agreement

    cache = stage / "ov-cache"
    cache.mkdir()
    # The served precision compiled once, filling the cache the backend loads from, also when
    # the repository is mounted read-only; readable by the server's user like the model
    # (OpenVINO writes its blobs 0440, and a blob the backend cannot read fails its load).
    streams_from_batch = engine_config(serving.precision)["streams_from_batch"]
    served = Engine(stage / "model.onnx", serving.precision, streams_from_batch, cache_dir=cache)
    for blob in cache.iterdir():
        blob.chmod(0o644)
    fp32 = served if serving.precision == "fp32" else Engine(fp32_path, "fp32")
    figures: dict[str, Any] = {
        "precision": serving.precision,
        "streams_from_batch": streams_from_batch,
        "openvino": ov.get_version(),
        "cpu_flags": cpu_flags(),
        "parity_fp32_vs_onnxruntime": check_parity(
            ort, run_openvino(fp32, spec, images), spec, between="OpenVINO and ONNX Runtime"
        ),
    }
    if serving.precision != "fp32":
        figures["agreement"] = {
            "slices": len(judged),
            **judge_agreement(
                run_openvino(fp32, spec, judged)[spec.probabilities_name],
                run_openvino(served, spec, judged)[spec.probabilities_name],
                what=f"OpenVINO {serving.precision}",
            ),
        }
    shutil.copy(OPENVINO_BACKEND_MODEL, stage / "model.py")
    write_engine(stage, serving.precision)
    return figures


def export_run(
    run: Path,
    repository: Path,
    serving: TritonOptions,
    int8: bool = False,
    calibration_data: Path | None = None,
    agreement_data: Path | None = None,
    fallback_fp32: bool = False,
) -> dict[str, Any]:
    """Export ``run`` as the next version in ``repository``; returns the manifest.

    ``fallback_fp32``: an openvino bf16 version that fails its gate is written as fp32 instead
    (from the same converted model), its manifest's ``openvino.fallback`` saying why.

    Raises:
        ExportError: conversion, parity or INT8 agreement failed (repository untouched).
        RepositoryBusy: another export, redeploy or rollback holds the repository.
    """
    from training.run import SAVED_MODEL, load_spec

    spec = load_spec(run)
    if not (run / SAVED_MODEL / "saved_model.pb").is_file():
        raise ExportError(f"{run} has no SavedModel ({run / SAVED_MODEL}); train it first")
    if int8 and serving.target != "cpu":
        raise ExportError(
            "--int8 is for the cpu target (openvino: --precision int8); the GPU targets use "
            "TensorRT FP16"
        )
    if (int8 or serving.precision == "int8") and calibration_data is None:
        raise ExportError("int8 needs --calibration-data DIR (a COVIDx-CT folder)")
    if serving.target == "openvino":
        from export.openvino import check_precision

        check_precision(serving.precision)  # before the conversion: bf16 needs AMX/AVX512_BF16
    with repository_lock(repository, "covidct export"):
        remove_staged(repository / spec.name)  # leftovers of killed exports
        return _export(
            run, repository, serving, spec, int8, calibration_data, agreement_data, fallback_fp32
        )


def export_auto(
    run: Path,
    repository: Path,
    serving: TritonOptions,
    calibration_data: Path | None = None,
    agreement_data: Path | None = None,
    flags: list[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """``covidct export`` without ``--target``: the CPU target this machine's instruction sets
    call for (:func:`export.openvino.default_cpu_target`; ``serving.target`` is ignored).

    When the chosen reduced precision fails its agreement gate (or the gate cannot judge it,
    e.g. a model that hesitates on the real slices), the export falls back to OpenVINO fp32,
    which has ONNX Runtime fp32's answers (within ``export.onnx.PARITY_TOLERANCE``, checked by
    the export): a default never refuses a model that the explicit fp32 targets would serve. The
    fallback happens inside the one export (``fallback_fp32``): the model is converted and
    parity-checked once.

    Returns:
        the manifest, and the choice with the CPU flags (and the gate) that decided it.
    """
    from export.openvino import default_cpu_target

    target, precision, why = default_cpu_target(flags)
    chosen = replace(serving, target=target, precision=precision)
    manifest = export_run(
        run, repository, chosen, False, calibration_data, agreement_data, fallback_fp32=True
    )
    refused = manifest["openvino"].get("fallback")
    if refused:
        return manifest, f"{target} fp32: {precision} ({why}) failed its gate: {refused}"
    return manifest, f"{target} {precision}: {why}"


def _export(
    run: Path,
    repository: Path,
    serving: TritonOptions,
    spec: ModelSpec,
    int8: bool,
    calibration_data: Path | None,
    agreement_data: Path | None,
    fallback_fp32: bool = False,
) -> dict[str, Any]:
    """The export itself, with the repository held: convert and check, reduce the precision
    when asked, the target's files, then publish the staged folder as the next version."""
    from training.run import SAVED_MODEL

    started = time.perf_counter()
    manifest = _manifest(run, spec, serving)
    with staged_version(repository, spec.name) as stage:
        model = _convert_and_check(run / SAVED_MODEL, stage, spec, manifest)
        if int8 or serving.precision == "int8":  # one static QDQ model for both runtimes
            assert calibration_data is not None  # checked by export_run
            _quantize(model, stage, spec, calibration_data)
            agreement_data = agreement_data or calibration_data
        if agreement_data is not None and (int8 or serving.precision != "fp32"):
            model.judged = slice_images(_agreement_files(agreement_data), spec)
        serving = _target_files(model, stage, spec, serving, manifest, int8, fallback_fp32)
        if model.fp32 != model.onnx:  # int8: the fp32 model it was quantised from
            model.fp32.unlink()
        manifest["export_seconds"] = round(time.perf_counter() - started, 1)
        cam_hw = (int(manifest["cam_hw"][0]), int(manifest["cam_hw"][1]))
        version = publish_version(repository, spec, serving, stage, cam_hw, manifest)
    manifest["version"] = version
    log.info("exported %s version %d to %s", spec.name, version, repository)
    return manifest


@dataclass
class _Model:
    """The staged model and the slices it is checked on.

    Attributes:
        onnx: the served ``model.onnx``.
        fp32: the fp32 model (``onnx`` itself unless int8 quantised it).
        images: the real CT slices packaged with covidct, preprocessed (parity, bf16's gate).
        outputs: ONNX Runtime's answers on ``images``.
        judged: the slices a reduced precision is judged on (default: ``images``).
    """

    onnx: Path
    fp32: Path
    images: np.ndarray
    outputs: dict[str, np.ndarray]
    judged: np.ndarray


def _manifest(run: Path, spec: ModelSpec, serving: TritonOptions) -> dict[str, Any]:
    """The manifest's first fields: where the version comes from and what made it."""
    return {
        "source_run": str(run.resolve()),
        "model_spec": spec.to_dict(),
        "target": serving.target,
        # sha256 of each split's label file: a redeploy compares test splits with these.
        "data_splits": _split_checksums(run),
        "serving": asdict(serving),
        "tools": convcache.tool_versions((*convcache.TOOLS, "onnxruntime")),
    }


def _convert_and_check(
    saved_model: Path, stage: Path, spec: ModelSpec, manifest: dict[str, Any]
) -> _Model:
    """SavedModel to ``stage/model.onnx`` (or the conversion cached for the same SavedModel,
    export/convcache.py), then parity with the SavedModel on the real slices packaged with
    covidct (so it runs wherever export does); raises ExportError beyond it."""
    from training.run import SavedModelRunner

    onnx_path = stage / "model.onnx"
    t0 = time.perf_counter()
    files = reference_slices()
    images = slice_images(files, spec)
    key = convcache.conversion_key(saved_model, spec, OPSET, files)
    reference = convcache.fetch(key, onnx_path)  # converted before: its graph and its answers
    cached = reference is not None
    if reference is None:
        convert(saved_model, onnx_path, spec)
        reference = SavedModelRunner(saved_model, spec)(images)
        convcache.store(key, onnx_path, reference)
    manifest["onnx_seconds"] = round(time.perf_counter() - t0, 1)
    manifest["onnx_cached"] = cached
    outputs = run_onnx(onnx_session(onnx_path), spec, images)
    manifest["parity"] = {
        **check_parity(reference, outputs, spec),
        "slices": len(images),
        "slice_files": [f"covidct/reference_slices/{p.name}" for p in files],
    }
    manifest["cam_hw"] = [int(n) for n in outputs[spec.cam_name].shape[1:3]]
    return _Model(onnx_path, onnx_path, images, outputs, images)


def _quantize(model: _Model, stage: Path, spec: ModelSpec, calibration_data: Path) -> None:
    """The static QDQ model as ``model.onnx``, calibrated on the data's val slices; the fp32
    one it came from stays beside it (``model.fp32``) until the checks are done."""
    from export.quantize import quantize

    model.fp32 = stage / "model.fp32.onnx"
    model.onnx.rename(model.fp32)
    quantize(model.fp32, model.onnx, spec, _calibration_images(calibration_data, spec))


def _target_files(
    model: _Model,
    stage: Path,
    spec: ModelSpec,
    serving: TritonOptions,
    manifest: dict[str, Any],
    int8: bool,
    fallback_fp32: bool,
) -> TritonOptions:
    """The target's files and checks beside the model; returns how Triton serves it (the
    openvino bf16 -> fp32 fallback changes the precision)."""
    if serving.target == "cpu":
        if int8:
            from export.quantize import compare

            manifest["int8"] = compare(model.fp32, model.onnx, spec, model.judged)
        shutil.copy(BACKEND_MODEL, stage / "model.py")
    elif serving.target == "openvino":
        try:
            manifest["openvino"] = _openvino_version(
                spec, serving, stage, model.fp32, model.images, model.outputs, model.judged
            )
        except GateError as e:
            if not (fallback_fp32 and serving.precision == "bf16"):
                raise
            log.warning("openvino bf16 refused by its gate, falling back to fp32: %s", e)
            shutil.rmtree(stage / "ov-cache")  # bf16's compiled model
            serving = replace(serving, precision="fp32")
            manifest["serving"] = asdict(serving)
            manifest["openvino"] = {
                **_openvino_version(
                    spec, serving, stage, model.fp32, model.images, model.outputs, model.judged
                ),
                "fallback": str(e),
            }
    elif serving.target == "tensorrt-plan":
        manifest["tensorrt"] = _tensorrt_build(
            spec, serving, stage, model.images, model.outputs[spec.probabilities_name]
        )
    return serving
