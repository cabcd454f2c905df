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
#: A slice whose fp32 top-two probabilities are closer than this has no top-1 answer worth
#: preserving: INT8 moves probabilities by a few thousandths on average (0.002-0.007 over
#: ten CI-sized models, max 0.03-0.4), so its top-1 there is a coin toss whose outcome
#: changes with the CPU and the training seed (flips measured at fp32 margins of 0.001 and
#: 0.016). The gate counts agreement on the decisive slices and reports the rest.
NEAR_TIE_MARGIN = 0.05


class GateError(ExportError):
    """A reduced precision failed its agreement gate (or the gate could not judge it)."""


class _Reader:
    """onnxruntime CalibrationDataReader over an array of model inputs."""

    def __init__(self, name: str, images: np.ndarray, batch: int = 8) -> None:
        self._batches = iter([{name: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(fp32: Path, out: Path, spec: ModelSpec, calibration: np.ndarray) -> None:
    """Write a static QDQ INT8 model calibrated on ``calibration`` (uint8 model inputs)."""
    import onnx
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
        convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
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
            # The first convolution stays in float, as is usual for INT8 CNNs: it sees the
            # raw slice, has 3 input channels and a few percent of the FLOPs. Measured on a
            # CI-sized model: mean probability change 0.012 -> 0.007, 2 -> 1 top-1 flips
            # in 123 real slices.
            nodes_to_exclude=convs[:1],
        )


def compare(
    fp32: Path, int8: Path, spec: ModelSpec, images: np.ndarray, threads: int = 2, rounds: int = 3
) -> dict[str, Any]:
    """Top-1 agreement on ``images`` and single-process throughput of both models.

    Raises:
        ExportError: the INT8 model fails :func:`judge_agreement`.
    """
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
    figures.update(judge_agreement(preds["fp32"], preds["int8"]))
    return figures


def judge_agreement(fp32: np.ndarray, int8: np.ndarray, what: str = "INT8") -> dict[str, Any]:
    """The gate of a reduced precision (``what``: INT8, bf16) on the probabilities
    ``[N, classes]`` of both models for the same slices.

    Returns:
        top-1 agreement on all slices and on the decisive ones (fp32's top-two margin at
        least ``NEAR_TIE_MARGIN``), flips on near ties, max and mean probability differences.

    Raises:
        GateError: agreement on the decisive slices below ``MIN_AGREEMENT``, or fewer than
            half of the slices decisive (the gate could not judge).
    """
    same = fp32.argmax(1) == int8.argmax(1)
    top2 = np.sort(fp32, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) >= NEAR_TIE_MARGIN
    if 2 * decisive.sum() < len(fp32):
        raise GateError(
            f"fp32 hesitates between two classes (top-two margin < {NEAR_TIE_MARGIN}) on "
            f"{len(fp32) - int(decisive.sum())} of {len(fp32)} real slices: {what} agreement "
            "cannot be judged; the version was not written"
        )
    change = np.abs(fp32 - int8)
    figures: dict[str, Any] = {
        "top1_agreement": float(same.mean()),
        "decisive_slices": int(decisive.sum()),
        "top1_agreement_decisive": float(same[decisive].mean()),
        "flips_near_tie": int((~same & ~decisive).sum()),
        "max_abs_prob_diff": float(change.max()),
        "mean_abs_prob_diff": float(change.mean()),
    }
    if figures["top1_agreement_decisive"] < MIN_AGREEMENT:
        raise GateError(
            f"{what} top-1 agreement with fp32 is "
            f"{100 * figures['top1_agreement_decisive']:.1f}% (< {100 * MIN_AGREEMENT:.0f}%) on "
            f"the {figures['decisive_slices']} of {len(fp32)} real slices where fp32's top two "
            f"classes are {NEAR_TIE_MARGIN} or more apart; the version was not written"
        )
    return figures
