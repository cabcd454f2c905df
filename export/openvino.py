"""The ``openvino`` CPU target: the version's model.onnx compiled by OpenVINO's CPU plugin.

Served by the Python backend like the ``cpu`` target (``python_backend/openvino_model.py``,
copied as the version's ``model.py``), so ONNX Runtime and OpenVINO versions of one model sit
side by side. How a version runs is in its ``engine.json``: precision (``fp32``, ``bf16``
where the CPU has AMX or AVX512_BF16, or ``int8``), and from which batch size the backend splits
a batch over OpenVINO's THROUGHPUT streams (:data:`STREAMS_FROM_BATCH`; below it, LATENCY). ``int8``
runs the same static QDQ model as the cpu target's ``--int8`` (``export/quantize.py``,
calibrated on the validation split): OpenVINO executes its quantised convolutions with int8
kernels (VNNI or AMX where present), so one calibration serves both runtimes. Export checks
fp32 against ONNX Runtime (parity) and bf16 or int8 against OpenVINO fp32 (the INT8 gate:
top-1 agreement on the decisive real slices), and writes no version that fails.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    model: Path | Any,
    precision: str,
    hint: str = "LATENCY",
    threads: int = 0,
    cache_dir: Path | None = None,
) -> Any:
    """OpenVINO's compiled model on the CPU for ``model``: an ONNX file, or one already read
    (:func:`read_model`; a caller compiling it twice reads it once).

    Compiled from the read model, not from the path: with a ``cache_dir`` OpenVINO keys a
    path's blob by the path itself, so the blob export compiles in its staging folder would
    never be found again once the version is published (or mounted elsewhere, as in the
    Triton container); a model's blob is keyed by its content, wherever it is read from.
    """
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
    return core.compile_model(
        read_model(model) if isinstance(model, Path) else model, "CPU", config
    )


def read_model(onnx_path: Path) -> Any:
    """The ONNX file as OpenVINO's model, ready to compile."""
    import openvino as ov

    return ov.Core().read_model(str(onnx_path))


#: Batches of at least this many slices are split over OpenVINO's THROUGHPUT streams (one
#: request per stream, run at once); smaller ones run as one LATENCY request on all the
#: instance's threads (a lone slice on one stream would get one core). Per precision, from
#: the batch where ``covidct bench engines`` finds THROUGHPUT even with or faster than
#: LATENCY (BENCHMARKS.md, bench engines: the PERFORMANCE_HINT ratios): bf16 from batch 4;
#: fp32 gains too little and too unevenly, and int8 is not measured: both stay on LATENCY.
STREAMS_FROM_BATCH = {"bf16": 4}


class Engine:
    """A version's model as the openvino backend runs it: one LATENCY request, and where
    ``streams_from_batch`` is set, a THROUGHPUT model whose streams share batches of that size
    or more (``python_backend/openvino_model.py`` repeats this: it is copied alone into each
    version). Export gates it, ``covidct bench`` measures it in process beside the served one.
    """

    def __init__(
        self,
        onnx_path: Path,
        precision: str,
        streams_from_batch: int = 0,
        threads: int = 0,
        cache_dir: Path | None = None,
    ) -> None:
        model = read_model(onnx_path)  # read once, compiled once or twice
        compiled = compile_model(model, precision, "LATENCY", threads, cache_dir)
        self.request = compiled.create_infer_request()
        self.streams_from_batch = streams_from_batch
        self.queue: Any = None
        self.jobs = 1
        if streams_from_batch:
            from openvino import AsyncInferQueue

            streams = compile_model(model, precision, "THROUGHPUT", threads, cache_dir)
            self.jobs = int(streams.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self.queue = AsyncInferQueue(streams, self.jobs)

    def __call__(
        self, images: np.ndarray, input_name: str, names: Sequence[str]
    ) -> list[np.ndarray]:
        """The outputs ``names`` (float32) for one batch, as the served version computes them."""
        if self.queue is None or len(images) < self.streams_from_batch:
            result = self.request.infer({input_name: images})
            return [np.array(result[n], dtype=np.float32) for n in names]
        parts: dict[int, list[np.ndarray]] = {}

        def done(request: Any, index: int) -> None:
            parts[index] = [np.array(request.get_tensor(n).data, dtype=np.float32) for n in names]

        self.queue.set_callback(done)
        chunks = np.array_split(images, min(self.jobs, len(images)))
        for i, chunk in enumerate(chunks):
            self.queue.start_async({input_name: chunk}, i)
        self.queue.wait_all()
        return [
            np.concatenate([parts[i][k] for i in range(len(chunks))]) for k in range(len(names))
        ]


def run_openvino(engine: Engine, spec: ModelSpec, images: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities and CAM for a uint8 batch, in batches of at most 8."""
    names = (spec.probabilities_name, spec.cam_name)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(images), 8):
        for n, out in zip(names, engine(images[i : i + 8], spec.input_name, names), strict=True):
            parts[n].append(out)
    return {n: np.concatenate(parts[n]) for n in names}


def engine_config(precision: str) -> dict[str, Any]:
    """What the backend reads from ``engine.json``."""
    return {
        "engine": "openvino",
        "precision": precision,
        "performance_hint": "LATENCY",
        "streams_from_batch": STREAMS_FROM_BATCH.get(precision, 0),
    }


def write_engine(stage: Path, precision: str) -> None:
    """The version's ``engine.json``: how the openvino backend runs it."""
    (stage / ENGINE_FILE).write_text(json.dumps(engine_config(precision), indent=2) + "\n")


def read_engine(version_dir: Path) -> dict[str, Any]:
    """A version's ``engine.json`` (versions written before ``streams_from_batch``: 0)."""
    engine: dict[str, Any] = json.loads((version_dir / ENGINE_FILE).read_text())
    return {"streams_from_batch": 0, **engine}


def default_cpu_target(flags: list[str] | None = None) -> tuple[str, str, str]:
    """The CPU target for this machine: ``(target, precision, why)``.

    The rule (from the in-process figures of ``covidct bench engines``; BENCHMARKS.md, bench
    engines, has them per CPU):

    - AMX or AVX512_BF16: OpenVINO bf16, the fastest engine on both kinds of CPU measured
      (an AMD EPYC with AVX512_BF16, a Xeon with AMX); the export still gates it against fp32;
    - otherwise OpenVINO fp32: never slower than ONNX Runtime fp32 where measured, and the
      same answers within ``export.onnx.PARITY_TOLERANCE`` (export checks it).

    INT8 (``--target cpu --int8``) is not chosen by default: it needs calibration data.
    """
    flags = cpu_flags() if flags is None else flags
    shown = ", ".join(flags) or "none of " + ", ".join(RELEVANT_FLAGS)
    if {"amx_bf16", "avx512_bf16"} & set(flags):
        return "openvino", "bf16", f"the CPU has bf16 (flags: {shown})"
    return "openvino", "fp32", f"the CPU has no bf16 (flags: {shown})"
