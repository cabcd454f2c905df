"""SavedModel to ONNX with tf2onnx, and the parity check that guards every export.

The ONNX graph keeps the ModelSpec's tensor names (``image`` in; ``probabilities`` and
``cam`` out) with a named dynamic batch dimension ``batch``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from covidct.config import ModelSpec
from covidct.errors import CovidctError

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(CovidctError, RuntimeError):
    """The export failed or did not pass its checks; the repository is untouched."""


def convert(saved_model: Path, out: Path, spec: ModelSpec, opset: int = OPSET) -> None:
    """Convert the SavedModel's serving signature to ONNX at ``out``."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        cmd = [
            sys.executable,
            "-m",
            "tf2onnx.convert",
            "--saved-model",
            str(saved_model),
            "--signature_def",
            "serving_default",
            "--tag",
            "serve",
            "--opset",
            str(opset),
            "--output",
            str(raw),
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0 or not raw.is_file():
            tail = "\n".join(result.stderr.splitlines()[-15:])
            raise ExportError(f"tf2onnx failed on {saved_model}:\n{tail}")
        model = onnx.load(str(raw))
    _name_batch_dimension(model, spec)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _name_batch_dimension(model: object, spec: ModelSpec) -> None:
    graph = model.graph  # type: ignore[attr-defined]
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    if inputs != [spec.input_name] or sorted(outputs) != sorted(
        [spec.probabilities_name, spec.cam_name]
    ):
        raise ExportError(f"ONNX tensors {inputs} -> {outputs} do not match the ModelSpec")
    for value in [*graph.input, *graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"


def onnx_session(path: Path, threads: int | None = None) -> object:
    """ONNX Runtime's CPU session for ``path`` (``threads``: intra-op threads; default: all)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: object, spec: ModelSpec, images: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities and CAM for a uint8 batch, by the ModelSpec's tensor names."""
    names = [spec.probabilities_name, spec.cam_name]
    outs = session.run(names, {spec.input_name: images})  # type: ignore[attr-defined]
    return dict(zip(names, outs, strict=True))


def slice_images(files: list[Path], spec: ModelSpec) -> np.ndarray:
    """CT slice files preprocessed for this model as the gateway does (automatic body box)."""
    from covidct.preprocessing import PreprocessingError, preprocess_bytes

    images = []
    for path in files:
        try:
            images.append(preprocess_bytes(path.read_bytes(), spec.image_size).image)
        except (OSError, PreprocessingError) as e:
            raise ExportError(f"{path}: not a usable CT slice: {e}") from e
    if not images:
        raise ExportError("no CT slices to check the model on")
    return np.stack(images)


def check_parity(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    spec: ModelSpec,
    tolerance: float = PARITY_TOLERANCE,
    between: str = "the SavedModel and ONNX",
) -> dict[str, float]:
    """Max |difference| of probabilities and CAM; raises ExportError beyond ``tolerance``."""
    p = float(np.abs(reference[spec.probabilities_name] - candidate[spec.probabilities_name]).max())
    c = float(np.abs(reference[spec.cam_name] - candidate[spec.cam_name]).max())
    if p > tolerance:
        raise ExportError(
            f"parity check failed: probabilities differ by {p:.2e} (> {tolerance:g}) between "
            f"{between}; the version was not written"
        )
    return {"probabilities_max_abs_diff": p, "cam_max_abs_diff": c}
