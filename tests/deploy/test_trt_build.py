"""deploy/trt-build/build_engines.py up to where it needs a GPU: found versions, the cache key,
the parity check, atomic publication and clear failures. ``trtexec`` and ``nvidia-smi`` are
stand-ins (tests/deploy/fake_trtexec.py runs the "engine" with ONNX Runtime)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from covidct.config import MIN_IMAGE_SIZE, ModelSpec
from export.pipeline import _tensorrt_build
from export.tritonconfig import TritonOptions
from tests.deploy import fake_trtexec

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "trt-build" / "build_engines.py"
S = MIN_IMAGE_SIZE


def tiny_onnx(path: Path, spec: ModelSpec, weights: list[float]) -> None:
    """uint8 [N,S,S,1] -> mean grey x weights -> softmax: probabilities [N, 3]."""
    nodes = [
        helper.make_node("Cast", [spec.input_name], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),
        helper.make_node("MatMul", ["m1", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [spec.probabilities_name], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(spec.input_name, TensorProto.UINT8, ["n", S, S, 1])],
        [helper.make_tensor_value_info(spec.probabilities_name, TensorProto.FLOAT, ["n", 3])],
        [
            helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
            helper.make_tensor("w", TensorProto.FLOAT, [1, 3], weights),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)


def write_version(version: Path, weights: list[float] = [0.01, 0.0, -0.01]) -> None:  # noqa: B006
    """A tensorrt-plan version as covidct export writes it (parity files and manifest from
    export.pipeline), around a tiny ONNX model."""
    import onnxruntime as ort

    spec, serving = ModelSpec(image_size=S), TritonOptions(target="tensorrt-plan", max_batch_size=4)
    version.mkdir(parents=True)
    tiny_onnx(version / "model.onnx", spec, weights)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, S, S, 1), dtype=np.uint8)
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {spec.input_name: images})
    manifest = {
        "target": "tensorrt-plan",
        "tensorrt": _tensorrt_build(spec, serving, version, images, probabilities),
    }
    (version / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    return fake_trtexec.install(tmp_path / "bin")


def build(repo: Path, bin_dir: Path | None, **env: str) -> subprocess.CompletedProcess[str]:
    path = f"{bin_dir}:/usr/bin:/bin" if bin_dir else "/usr/bin:/bin"
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(repo)],
        capture_output=True,
        text=True,
        env={"PATH": path, "FAKE_TRT_CALLS": str(repo.parent / "calls"), **env},
        timeout=120,
    )


def builds(repo: Path) -> int:
    calls = repo.parent / "calls"
    return calls.read_text().split().count("build") if calls.is_file() else 0


def test_builds_checks_publishes_and_rebuilds_only_on_change(tmp_path: Path, fake_bin: Path):
    repo = tmp_path / "models"
    version = repo / "covidct" / "1"
    write_version(version)
    first = build(repo, fake_bin)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "covidct/1: built" in first.stdout and "GPU Tesla T4, TensorRT 100500" in first.stdout
    assert (version / "model.plan").read_bytes() == (version / "model.onnx").read_bytes()
    record = json.loads((version / "model.plan.json").read_text())
    assert record["key"]["gpu"] == "Tesla T4" and record["parity"]["max_abs_diff"] < 1e-6
    assert record["parity"]["top1_agreement"] == 1.0 and record["parity"]["slices"] == 5
    assert not list(version.glob(".trt-build-*"))

    again = build(repo, fake_bin)
    assert "covidct/1: up to date" in again.stdout and builds(repo) == 1
    assert build(repo, fake_bin, FAKE_GPU="NVIDIA L4").returncode == 0 and builds(repo) == 2
    assert build(repo, fake_bin, FAKE_GPU="NVIDIA L4", FAKE_TRT_VERSION="100600").returncode == 0
    assert builds(repo) == 3
    # another ONNX file (with its own parity answers, as a new export brings) is rebuilt
    write_version(tmp_path / "other", weights=[0.02, 0.0, -0.02])
    for name in ("model.onnx", "manifest.json", "parity/expected.json"):
        (version / name).write_bytes((tmp_path / "other" / name).read_bytes())
    assert build(repo, fake_bin, FAKE_GPU="NVIDIA L4", FAKE_TRT_VERSION="100600").returncode == 0
    assert builds(repo) == 4


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FAKE_TRT_FAIL": "build"}, "engine build failed (trtexec exit 1): "),
        ({"FAKE_TRT_FAIL": "run"}, "parity run on the real slices failed"),
        ({"FAKE_TRT_SKEW": "0.05"}, "engine differs from ONNX Runtime by 0.05"),
    ],
)
def test_a_failed_build_or_check_publishes_nothing(
    tmp_path: Path, fake_bin: Path, env: dict[str, str], message: str
) -> None:
    repo = tmp_path / "models"
    fresh, kept = repo / "covidct" / "2", repo / "covidct" / "1"
    write_version(kept)
    assert build(repo, fake_bin).returncode == 0
    good = (kept / "model.plan").read_bytes()
    write_version(fresh)
    result = build(repo, fake_bin, **env)
    assert result.returncode == 1, result.stdout
    assert f"covidct/2: error: {message}" in result.stdout
    assert not (fresh / "model.plan").exists() and not (fresh / "model.plan.json").exists()
    assert not list(fresh.glob(".trt-build-*"))
    assert (kept / "model.plan").read_bytes() == good  # the good engine stays


def test_without_trtexec_or_gpu_it_stops_clearly(tmp_path: Path, fake_bin: Path) -> None:
    repo = tmp_path / "models"
    version = repo / "covidct" / "1"
    write_version(version)
    result = build(repo, None)
    assert result.returncode == 2
    assert "trtexec not found" in result.stdout and "NGC TensorRT container" in result.stdout
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    result = build(repo, fake_bin)
    assert result.returncode == 2 and "no GPU visible" in result.stdout
    assert not (version / "model.plan").exists()


def test_repositories_without_plan_versions_need_nothing(tmp_path: Path) -> None:
    cpu = tmp_path / "models" / "covidct" / "1"
    cpu.mkdir(parents=True)
    (cpu / "manifest.json").write_text(json.dumps({"target": "cpu"}))
    result = build(tmp_path / "models", None)
    assert result.returncode == 0 and "nothing to build" in result.stdout
    assert build(tmp_path / "absent", None).returncode == 2


def test_the_script_needs_only_the_standard_library() -> None:
    """It runs in the NGC TensorRT container, where our packages are not installed."""
    code = "import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]; "
    code += f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='not_main')"
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(SCRIPT, os.R_OK)
