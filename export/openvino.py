"""The ``openvino`` CPU target: the version's model.onnx compiled by OpenVINO's CPU plugin.

Served by the Python backend like the ``cpu`` target (``python_backend/openvino_model.py``,
copied as the version's ``model.py``), so ONNX Runtime and OpenVINO versions of one model sit
side by side. How a version runs is in its ``engine.json``: precision (``fp32``, ``bf16``
where the CPU has AMX or AVX512_BF16, or ``int8``) and OpenVINO's performance hint. ``int8``
runs the same static QDQ model as the cpu target's ``--int8`` (``export/quantize.py``,
calibrated on the validation split): OpenVINO executes its quantised convolutions with int8
kernels (VNNI or AMX where present), so one calibration serves both runtimes. Export checks
fp32 against ONNX Runtime (parity) and bf16 or int8 against OpenVINO fp32 (the INT8 gate:
top-1 agreement on the decisive real slices), and writes no version that fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from covidct.config import ModelSpec
from export.onnx import ExportError

PRECISIONS = ("fp32", "bf16", "int8")
#: OpenVINO's inference precision per ours (int8: the QDQ nodes decide; the rest in f32).
OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
ENGINE_FILE = "engine.json"
#: The CPU flags that decide the CPU targets (reported with every choice).
RELEVANT_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_flags() -> list[str]:
    """The relevant flags of this machine's CPU (from /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    have = set(line.partition(":")[2].split())
    return [f for f in RELEVANT_FLAGS if f in have]


def supports(precision: str) -> bool:
    """Whether OpenVINO's CPU plugin runs ``precision`` natively here."""
    if precision in ("fp32", "int8"):  # int8 kernels exist for every x86-64 CPU it runs on
        return True
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return precision.upper() in capabilities


def check_precision(precision: str) -> None:
    """Refuse a precision this CPU cannot run natively (OpenVINO would emulate it slowly
    or silently run fp32).

    Raises:
        ExportError: unknown precision, or bf16 on a CPU without AMX or AVX512_BF16.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"--precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    if not supports(precision):
        flags = ", ".join(cpu_flags()) or "none of the relevant ones"
        raise ExportError(
            f"{precision} needs a CPU with AMX or AVX512_BF16; this one has {flags}: "
            "export fp32 (or the cpu target with --int8) here"
        )


def compile_model(
    onnx_path: Path,
    precision: str,
    hint: str = "LATENCY",
    threads: int = 0,
    cache_dir: Path | None = None,
) -> Any:
    """OpenVINO's compiled model for ``onnx_path`` on the CPU."""
    import openvino as ov

    core = ov.Core()
    if cache_dir is not None:
        core.set_property({"CACHE_DIR": str(cache_dir)})
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
        "PERFORMANCE_HINT": hint,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(str(onnx_path), "CPU", config)


def run_openvino(compiled: Any, spec: ModelSpec, images: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities and CAM for a uint8 batch, in batches of at most 8."""
    request = compiled.create_infer_request()
    names = (spec.probabilities_name, spec.cam_name)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(images), 8):
        result = request.infer({spec.input_name: images[i : i + 8]})
        for n in names:
            parts[n].append(np.asarray(result[n], dtype=np.float32))
    return {n: np.concatenate(parts[n]) for n in names}


def engine_config(precision: str, hint: str = "LATENCY") -> dict[str, Any]:
    """What the backend reads from ``engine.json``."""
    return {"engine": "openvino", "precision": precision, "performance_hint": hint}


def write_engine(stage: Path, precision: str, hint: str = "LATENCY") -> None:
    (stage / ENGINE_FILE).write_text(json.dumps(engine_config(precision, hint), indent=2) + "\n")


def default_cpu_target(flags: list[str] | None = None) -> tuple[str, str, str]:
    """The CPU target for this machine: ``(target, precision, why)``.

    The rule (in-process figures of ``covidct bench engines``, DenseNet201 224²):

    - AMX or AVX512_BF16: OpenVINO bf16 (2.1x ONNX Runtime fp32 on an AMD EPYC with
      AVX512_BF16, 5.2x on a Xeon with AMX); the export still gates it against fp32;
    - otherwise OpenVINO fp32 (1.1x on the EPYC, 1.3x on the Xeon): never slower than ONNX
      Runtime fp32 where measured, and the same answers within 1e-4.

    INT8 (``--target cpu --int8``) is not chosen by default: it needs calibration data.
    """
    flags = cpu_flags() if flags is None else flags
    shown = ", ".join(flags) or "none of " + ", ".join(RELEVANT_FLAGS)
    if {"amx_bf16", "avx512_bf16"} & set(flags):
        return "openvino", "bf16", f"the CPU has bf16 (flags: {shown})"
    return "openvino", "fp32", f"the CPU has no bf16 (flags: {shown})"
