"""config.pbtxt generator: golden files and Triton's own schema.

The golden files change only on purpose: ``python scripts/write_golden_configs.py``, then
review the diff."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from covidct.config import ModelSpec, Provenance
from export.tritonconfig import (
    TARGETS,
    RepositoryError,
    TritonOptions,
    render_config,
    spec_from_config,
)

GOLDEN = Path(__file__).parent / "golden"
SPEC = ModelSpec(
    image_size=224,
    temperature=1.25,
    provenance=Provenance(data_fingerprint="f" * 64, synthetic=True),
)
CAM = (7, 7)


def parse(text: str) -> model_config_pb2.ModelConfig:
    """Triton's ModelConfig protobuf: an unknown field or bad value fails to parse."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("target", TARGETS)
def test_generated_config_matches_golden_and_triton_schema(target: str) -> None:
    text = render_config(SPEC, TritonOptions(target=target), CAM)
    assert text == (GOLDEN / f"{target}.pbtxt").read_text()
    config = parse(text)
    assert config.name == "covidct" and config.max_batch_size == 8
    assert [i.name for i in config.input] == ["image"]
    assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert list(config.input[0].dims) == [224, 224, 1]
    assert [o.name for o in config.output] == ["probabilities", "cam"]
    assert list(config.output[1].dims) == [7, 7, 3]
    assert config.output[0].label_filename == "labels.txt"
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert config.model_warmup[0].inputs["image"].zero_data
    assert config.version_policy.latest.num_versions == 2
    kind = config.instance_group[0].kind
    if target in ("cpu", "openvino"):  # one config: each version's model.py runs its engine
        assert config.backend == "python" and kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    else:
        assert kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    if target == "onnx-trt":
        assert config.platform == "onnxruntime_onnx"
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    if target == "tensorrt-plan":
        assert config.platform == "tensorrt_plan"


def test_model_spec_round_trips_through_the_config() -> None:
    text = render_config(SPEC, TritonOptions(), CAM)
    assert spec_from_config(text) == SPEC
    raw = parse(text).parameters["covidct_model_spec"].string_value
    assert ModelSpec.from_dict(json.loads(raw)) == SPEC


def test_queue_delay_and_batch_size_are_configurable() -> None:
    config = parse(
        render_config(
            SPEC, TritonOptions(max_batch_size=32, max_queue_delay_us=500, instance_count=3), CAM
        )
    )
    assert config.max_batch_size == 32
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8, 16, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].count == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"target": "tflite"},
        {"max_batch_size": 0},
        {"instance_count": 0},
        {"target": "cpu", "precision": "bf16"},  # precision is the openvino target's
    ],
)
def test_bad_serving_options(bad) -> None:
    with pytest.raises(RepositoryError):
        TritonOptions(**bad)


def test_the_python_backend_reads_the_same_parameter() -> None:
    """The backend's model.py runs inside Triton's stub without covidct on its path, so it
    names the parameter itself; it must be the name export writes."""
    from covidct.modelconfig import SPEC_PARAMETER
    from export.openvino import ENGINE_FILE, OV_PRECISION
    from export.pipeline import BACKEND_MODEL, OPENVINO_BACKEND_MODEL

    for backend in (BACKEND_MODEL, OPENVINO_BACKEND_MODEL):
        assert f'params["{SPEC_PARAMETER}"]' in backend.read_text()
    openvino = OPENVINO_BACKEND_MODEL.read_text()
    assert f'"{ENGINE_FILE}"' in openvino
    (line,) = [x for x in openvino.splitlines() if x.startswith("OV_PRECISION = ")]
    assert ast.literal_eval(line.split("=", 1)[1].strip()) == OV_PRECISION
