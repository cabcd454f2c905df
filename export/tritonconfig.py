"""``config.pbtxt`` for one model, built as Triton's ``ModelConfig`` protobuf.

The message is assembled field by field (as pytriton's generator does) and written with
``text_format``, so a field Triton does not know fails here, not when the server loads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as pb

from covidct.config import ModelSpec
from covidct.errors import CovidctError
from covidct.modelconfig import ModelConfig, config_text, parse_config, set_spec, spec_of

TARGETS = ("cpu", "openvino", "onnx-trt", "tensorrt-plan")
#: The targets served by the Python backend on CPUs (each version's model.py runs it).
CPU_TARGETS = ("cpu", "openvino")
LABELS_FILE = "labels.txt"


class RepositoryError(CovidctError, RuntimeError):
    """The repository or a version cannot be written; the message says why."""


@dataclass(frozen=True)
class TritonOptions:
    """How Triton serves the model (everything in config.pbtxt that is not the ModelSpec).

    Attributes:
        target: cpu (Python backend running ONNX Runtime), openvino (Python backend running
            OpenVINO), onnx-trt (ONNX Runtime backend with the TensorRT accelerator) or
            tensorrt-plan (a TensorRT engine).
        precision: the openvino target's inference precision (fp32, bf16 on CPUs with
            AMX or AVX512_BF16, or int8: a static QDQ model).
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
    precision: str = "fp32"
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
        if self.precision != "fp32" and self.target != "openvino":
            raise RepositoryError(
                f"precision {self.precision} is for the openvino target (the cpu target has "
                "--int8, the GPU targets fp16)"
            )
        if not 1 <= self.max_batch_size <= 1024:
            raise RepositoryError(f"max_batch_size {self.max_batch_size} must be in [1, 1024]")
        if self.max_queue_delay_us < 0 or self.instance_count < 1 or self.versions_kept < 1:
            raise RepositoryError("queue delay must be >= 0, instance and version counts >= 1")

    @property
    def gpu(self) -> bool:
        return self.target not in CPU_TARGETS

    def preferred_batch_sizes(self) -> list[int]:
        sizes, b = [], 2
        while b <= self.max_batch_size:
            sizes.append(b)
            b *= 2
        return sizes or [self.max_batch_size]


def _dtype(name: str) -> int:
    return int(pb.DataType.Value(f"TYPE_{name}"))


def build_config(spec: ModelSpec, serving: TritonOptions, cam_hw: tuple[int, int]) -> ModelConfig:
    """The ModelConfig of one model: tensors from ``spec``, serving from ``serving``."""
    image_dims = [spec.image_size, spec.image_size, 1]
    config = ModelConfig(name=spec.name, max_batch_size=serving.max_batch_size)
    if serving.target in CPU_TARGETS:
        config.backend = "python"
    else:
        config.platform = "onnxruntime_onnx" if serving.target == "onnx-trt" else "tensorrt_plan"
    if serving.pinned_versions:
        config.version_policy.specific.versions.extend(serving.pinned_versions)
    else:
        config.version_policy.latest.num_versions = serving.versions_kept
    config.input.add(name=spec.input_name, data_type=pb.TYPE_UINT8, dims=image_dims)
    out_type = _dtype(spec.output_dtype)
    config.output.add(
        name=spec.probabilities_name,
        data_type=out_type,
        dims=[spec.num_classes],
        label_filename=LABELS_FILE,
    )
    config.output.add(
        name=spec.cam_name, data_type=out_type, dims=[cam_hw[0], cam_hw[1], spec.num_classes]
    )
    if serving.dynamic_batching:
        config.dynamic_batching.preferred_batch_size.extend(serving.preferred_batch_sizes())
        config.dynamic_batching.max_queue_delay_microseconds = serving.max_queue_delay_us
    kind = pb.ModelInstanceGroup.KIND_GPU if serving.gpu else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=serving.instance_count, kind=kind)
    warmup = config.model_warmup.add(name="zeros", batch_size=1)
    zeros = warmup.inputs[spec.input_name]
    zeros.data_type, zeros.zero_data = pb.TYPE_UINT8, True
    zeros.dims.extend(image_dims)
    if serving.target == "onnx-trt":
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        trt.parameters.update(
            {
                "precision_mode": "FP16" if serving.fp16 else "FP32",
                "max_workspace_size_bytes": str(serving.workspace_mb * 1024 * 1024),
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": serving.trt_cache_path,
            }
        )
    set_spec(config, spec)
    return config


def render_config(spec: ModelSpec, serving: TritonOptions, cam_hw: tuple[int, int]) -> str:
    """config.pbtxt text for one model: deterministic, so golden files can pin it."""
    return config_text(build_config(spec, serving, cam_hw))


def spec_from_config(text: str) -> ModelSpec:
    """The ModelSpec of a config.pbtxt (raises RepositoryError when it carries none)."""
    spec = spec_of(text)
    if spec is None:
        raise RepositoryError("config.pbtxt carries no ModelSpec (not written by covidct export)")
    return spec


def cam_hw_of(text: str, spec: ModelSpec) -> tuple[int, int]:
    """The CAM output's height and width in a config.pbtxt."""
    (cam,) = [o for o in parse_config(text).output if o.name == spec.cam_name]
    return int(cam.dims[0]), int(cam.dims[1])
