"""Static INT8 (QDQ) quantisation for the CPU target, calibrated on prepared slices.

Dynamic quantisation is 3-5x slower than fp32 on these CPUs (ConvInteger kernels), so only
static QDQ is offered: activations calibrated on real preprocessed slices, weights per channel.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from covidct.config import ModelSpec
from export.onnx import ExportError, onnx_session, run_onnx

MIN_AGREEMENT = 0.99


class _Reader:
    """onnxruntime CalibrationDataReader over an array of model inputs."""

    def __init__(self, name: str, images: np.ndarray, batch: int = 8) -> None:
        self._batches = iter([{name: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(fp32: Path, out: Path, spec: ModelSpec, calibration: np.ndarray) -> None:
    """Write a static QDQ INT8 model calibrated on ``calibration`` (uint8 model inputs)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ExportError("INT8 calibration needs at least one slice")

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Reader(spec.input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # Convolutions carry nearly all the FLOPs; the small head (pooling, matmul,
            # einsum, softmax) stays in float, which keeps the answer close to fp32.
            op_types_to_quantize=["Conv"],
        )


def compare(
    fp32: Path, int8: Path, spec: ModelSpec, images: np.ndarray, threads: int = 2, rounds: int = 3
) -> dict[str, Any]:
    """Top-1 agreement on ``images`` and single-process throughput of both models."""
    figures: dict[str, Any] = {"slices": len(images)}
    preds = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = onnx_session(path, threads)
        preds[name] = run_onnx(session, spec, images)[spec.probabilities_name]
        rates = []
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(0, len(images), 8):
                run_onnx(session, spec, images[i : i + 8])
            rates.append(len(images) / (time.perf_counter() - start))
        figures[f"{name}_images_per_s"] = round(statistics.median(rates), 2)
    figures["top1_agreement"] = float((preds["fp32"].argmax(1) == preds["int8"].argmax(1)).mean())
    figures["max_abs_prob_diff"] = float(np.abs(preds["fp32"] - preds["int8"]).max())
    if figures["top1_agreement"] < MIN_AGREEMENT:
        raise ExportError(
            f"INT8 top-1 agreement with fp32 is {100 * figures['top1_agreement']:.1f}% "
            f"(< {100 * MIN_AGREEMENT:.0f}%) on {len(images)} real slices; the version was "
            "not written"
        )
    return figures
