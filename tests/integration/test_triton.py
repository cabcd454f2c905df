"""Export the CI-trained model and serve it with the real tritonserver over real gRPC.

All tests here share the CI training run (xdist group "ci-run") and one server per session.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bench.corpus import real_pngs
from covidct.config import ModelSpec
from covidct.preprocessing import preprocess_bytes
from export.repository import LOCK_FILE
from serving.server import TritonError, TritonServer, free_port
from tests.cli_helpers import covidct
from tests.deploy import fake_trtexec

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]
BUILD_ENGINES = Path(__file__).parents[2] / "deploy" / "trt-build" / "build_engines.py"


def _real_slices(shared_or_fixtures: Path, size: int) -> np.ndarray:
    pngs = real_pngs(shared_or_fixtures)
    return np.stack([preprocess_bytes(p.read_bytes(), size).image for p in pngs])


def _infer(port: int, images: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    inp = grpcclient.InferInput("image", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images)
    out = client.infer("covidct", [inp], outputs=[grpcclient.InferRequestedOutput("probabilities")])
    return out.as_numpy("probabilities")


def test_grpc_matches_the_saved_model_on_real_slices(server, ci_run: Path, real_data) -> None:
    import tensorflow as tf

    spec = ModelSpec.load(ci_run / "model_spec.json")
    images = _real_slices(real_data, spec.image_size)
    assert len(images) == len(real_pngs(real_data)) >= 5
    served = np.concatenate(
        [_infer(server.grpc_port, images[i : i + 8]) for i in range(0, len(images), 8)]
    )
    sig = tf.saved_model.load(str(ci_run / "saved_model")).signatures["serving_default"]
    reference = sig(image=tf.constant(images))["probabilities"].numpy()
    assert np.abs(served - reference).max() <= 1e-4


def test_model_spec_is_readable_from_the_server(server, ci_run: Path) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    config = client.get_model_config("covidct", as_json=True)["config"]
    spec = ModelSpec.from_dict(
        json.loads(config["parameters"]["covidct_model_spec"]["string_value"])
    )
    assert spec == ModelSpec.load(ci_run / "model_spec.json")


def test_dynamic_batching_groups_concurrent_requests(server, fixtures: Path, ci_run) -> None:
    spec = ModelSpec.load(ci_run / "model_spec.json")
    one = _real_slices(fixtures, spec.image_size)[:1]

    def stats() -> tuple[int, int]:
        s = server.statistics("covidct")["model_stats"]
        return (
            sum(int(m["inference_count"]) for m in s),
            sum(int(m["execution_count"]) for m in s),
        )

    inf0, exe0 = stats()
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda _: _infer(server.grpc_port, one), range(32)))
    assert all(r.shape == (1, 3) for r in results)
    # Triton counts a request once its response has gone out: wait for the counters to settle.
    deadline = time.time() + 10
    inf1, exe1 = stats()
    while inf1 - inf0 < 32 and time.time() < deadline:
        time.sleep(0.1)
        inf1, exe1 = stats()
    assert inf1 - inf0 == 32
    assert exe1 - exe0 < 32, (inf1 - inf0, exe1 - exe0)


def _tree_digest(repo: Path) -> dict[str, str]:
    """What Triton serves: every file but staging and the writers' lock (which names its last
    holder, a killed export included)."""
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".tmp-" not in str(p) and p.name != LOCK_FILE
    }


def test_killed_export_leaves_the_repository_unchanged_and_served(
    server, repository: Path, ci_run: Path, fixtures: Path
) -> None:
    before = _tree_digest(repository)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "export",
            "--run",
            str(ci_run),
            "--repository",
            str(repository),
            "--target",
            "cpu",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list(repository.glob("covidct/.tmp-version-*/model.onnx")):
            proc.send_signal(signal.SIGKILL)  # midway: converted, not yet checked or published
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "export finished before it could be killed"
    assert _tree_digest(repository) == before
    assert server.model_ready("covidct")
    spec = ModelSpec.load(ci_run / "model_spec.json")
    assert _infer(server.grpc_port, _real_slices(fixtures, spec.image_size)[:2]).shape == (2, 3)
    # The next export cleans the leftovers and publishes version 2, which the server loads.
    again = covidct("export", "--run", ci_run, "--repository", repository, "--target", "cpu")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not list(repository.glob("covidct/.tmp-*"))
    assert (repository / "covidct" / "2" / "manifest.json").is_file()


def test_int8_export_reports_agreement_and_speed(
    ci_run: Path, tmp_path: Path, cache_env, real_data: Path
) -> None:
    """The gate decides by its figures, and INT8 stays close to fp32 either way.

    Whether INT8 clears 99% on the 123 real slices depends on the training trajectory: one
    flip decides it. Over seeds 0-4 x oneDNN on/off the CI-trained models measured 99.2-100%
    on the decisive slices (100% on all slices for 6 of 10); with the first convolution
    quantised too, one model measured 98.4%. So the test checks the gate on both sides and a
    floor of 95% that every measured model cleared with margin.
    """
    data = ci_run.parent / "data"
    result = covidct(
        "export",
        "--run",
        ci_run,
        "--repository",
        tmp_path,
        "--int8",
        "--calibration-data",
        data,
        "--agreement-data",
        real_data / "covidxct-real",
        env=cache_env,
    )
    if result.returncode == 0:
        int8 = json.loads(result.stdout.strip().splitlines()[-1])["int8"]
        assert int8["top1_agreement_decisive"] >= 0.99 and int8["slices"] >= 5
        assert int8["decisive_slices"] * 2 >= int8["slices"]
        assert int8["mean_abs_prob_diff"] < 0.05
        assert int8["int8_images_per_s"] > 0 and int8["fp32_images_per_s"] > 0
        assert (tmp_path / "covidct" / "1" / "model.onnx").is_file()
        agreement = 100 * int8["top1_agreement_decisive"]
    else:
        refused = re.search(r"INT8 top-1 agreement with fp32 is ([\d.]+)% \(< 99%\)", result.stderr)
        assert refused, result.stderr[-2000:]
        agreement = float(refused.group(1))
        assert "the version was not written" in result.stderr
        assert not list((tmp_path / "covidct").glob("[0-9]*"))
    # With the fixtures' five slices instead of the 123 shared ones, one flip is allowed.
    floor = 95.0 if len(real_pngs(real_data)) >= 100 else 80.0
    assert agreement >= floor, result.stderr[-2000:]


def test_gpu_targets_are_generated(ci_run: Path, tmp_path: Path) -> None:
    """Both GPU targets from one run, through a cache of their own: the first converts, the
    second reuses that conversion (export/convcache.py) and still checks parity itself."""
    env = {**os.environ, "COVIDCT_CACHE_DIR": str(tmp_path / "cache")}
    manifests = []
    for target in ("onnx-trt", "tensorrt-plan"):
        repo = tmp_path / target
        result = covidct(
            "export", "--run", ci_run, "--repository", repo, "--target", target, env=env
        )
        assert result.returncode == 0, result.stderr[-2000:]
        version = repo / "covidct" / "1"
        assert (version / "model.onnx").is_file()
        assert "KIND_GPU" in (repo / "covidct" / "config.pbtxt").read_text()
        manifests.append(json.loads((version / "manifest.json").read_text()))
    assert [m["onnx_cached"] for m in manifests] == [False, True]
    assert manifests[0]["parity"] == manifests[1]["parity"]  # the same graph, checked again
    tools = manifests[0]["tools"]  # what made the version, as installed
    assert set(tools) == {"tensorflow-cpu", "tf2onnx", "onnx", "onnxruntime"}
    assert "absent" not in tools.values() and all(v[0].isdigit() for v in tools.values())
    assert manifests[1]["onnx_seconds"] < manifests[0]["onnx_seconds"]
    onnx = [tmp_path / t / "covidct" / "1" / "model.onnx" for t in ("onnx-trt", "tensorrt-plan")]
    assert onnx[0].read_bytes() == onnx[1].read_bytes()
    version = tmp_path / "tensorrt-plan" / "covidct" / "1"
    trt = json.loads((version / "manifest.json").read_text())["tensorrt"]
    assert trt["max_shape"] == [8, 64, 64, 1] and trt["precision"] == "fp16"
    # deploy/trt-build on this export, with trtexec's stand-in running the ONNX file: the
    # recorded real slices and ONNX Runtime answers agree with the model (what a GPU build
    # is then held to)
    bin_dir = fake_trtexec.install(tmp_path / "bin")
    built = subprocess.run(
        [sys.executable, str(BUILD_ENGINES), str(tmp_path / "tensorrt-plan")],
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert built.returncode == 0, built.stdout + built.stderr
    record = json.loads((version / "model.plan.json").read_text())
    assert record["parity"]["max_abs_diff"] < 1e-6 and record["parity"]["slices"] == 6


def test_server_start_errors_are_explained(tmp_path: Path, repository: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(TritonError, match=f"port {port} on 127.0.0.1 is already in use"):
            TritonServer(repository, port, free_port(), free_port()).start()
    broken = tmp_path / "broken" / "covidct"
    broken.mkdir(parents=True)
    for name in ("config.pbtxt", "labels.txt"):
        (broken / name).write_text((repository / "covidct" / name).read_text())
    (broken / "1").mkdir()
    (broken / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n"
        "        raise RuntimeError('weights are missing on purpose')\n"
    )
    with pytest.raises(TritonError, match="weights are missing on purpose"):
        TritonServer(broken.parent, free_port(), free_port(), free_port()).start(timeout=60)


def test_explicit_model_control_loads_the_named_model(repository: Path) -> None:
    srv = TritonServer(
        repository,
        free_port(),
        free_port(),
        free_port(),
        model_control="explicit",
        models=["covidct"],
        log_file=repository.parent / "triton-explicit.log",
    )
    with srv:
        assert srv.model_ready("covidct")
    assert srv.process is not None and srv.process.returncode is not None  # stopped
