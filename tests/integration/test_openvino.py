"""The openvino target end to end: ``covidct export --target openvino`` on the CI-trained model,
served by the real tritonserver (Python backend running OpenVINO), answers like OpenVINO run
in this process (within 1e-4 in fp32) on real CT slices. int8 (the static QDQ model, calibrated
on the run's val split) and bf16 where the CPU has AMX or AVX512_BF16 are gated against fp32 on
the real slices and served beside it as other versions; elsewhere the bf16 export refuses and
writes nothing. The third version is what ``covidct export`` without ``--target`` chooses here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.corpus import real_data_dir, real_pngs
from covidct.config import ModelSpec
from export.onnx import slice_images
from export.openvino import STREAMS_FROM_BATCH, Engine, read_engine, run_openvino, supports
from export.repository import read_manifest, versions
from rollout.control import TritonControl
from serving.server import TritonServer, free_port
from tests.cli_helpers import covidct

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]


@pytest.fixture(scope="module")
def ov_repository(ci_run: Path, real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("openvino") / "models"
    kept = ("--versions-kept", "3")  # every version served side by side
    result = covidct("export", "--run", ci_run, "--repository", repo, "--target", "openvino", *kept)
    assert result.returncode == 0, result.stderr[-3000:]
    no_calibration = covidct(
        *("export", "--run", ci_run, "--repository", repo),
        *("--target", "openvino", "--precision", "int8"),
    )
    assert no_calibration.returncode == 2 and "--calibration-data" in no_calibration.stderr
    int8 = covidct(
        *("export", "--run", ci_run, "--repository", repo),
        *("--target", "openvino", "--precision", "int8", *kept),
        *("--calibration-data", ci_run.parent / "data"),
        *("--agreement-data", real_data / "covidxct-real"),
    )
    assert int8.returncode == 0, int8.stderr[-3000:]
    assert versions(repo / "covidct") == [1, 2]
    assert not list((repo / "covidct" / "2").glob("*.fp32.onnx"))  # the fp32 copy is gone
    # No --target: the rule's choice for this CPU (bf16 with AMX or AVX512_BF16, else fp32).
    default = covidct(
        *("export", "--run", ci_run, "--repository", repo, *kept),
        *("--agreement-data", real_data / "covidxct-real"),  # the real slices judge bf16
    )
    assert default.returncode == 0, default.stderr[-3000:]
    chosen = json.loads(default.stdout.strip().splitlines()[-1])["chosen"]
    expected = "bf16" if supports("bf16") else "fp32"
    assert chosen.startswith(f"openvino {expected}: "), chosen
    assert read_manifest(repo / "covidct", 3)["openvino"]["precision"] == expected
    if not supports("bf16"):
        bf16 = covidct(
            *("export", "--run", ci_run, "--repository", repo),
            *("--target", "openvino", "--precision", "bf16", *kept),
        )
        message = " ".join(bf16.stderr.split())
        assert bf16.returncode == 2 and "needs a CPU with AMX or AVX512_BF16" in message
        assert versions(repo / "covidct") == [1, 2, 3]  # nothing written
    return repo


def _served(server: TritonServer, version: int, spec: ModelSpec, images: np.ndarray) -> dict:
    triton = TritonControl(f"127.0.0.1:{server.grpc_port}", "covidct")
    out: dict[str, list[np.ndarray]] = {spec.probabilities_name: [], spec.cam_name: []}
    for i in range(0, len(images), 8):
        for name in out:
            out[name].append(triton.infer(version, images[i : i + 8], spec.input_name, name))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def test_served_openvino_versions_match_openvino_in_process(ov_repository: Path) -> None:
    model_dir = ov_repository / "covidct"
    spec = ModelSpec.from_dict(read_manifest(model_dir, 1)["model_spec"])
    images = slice_images(real_pngs(real_data_dir())[:16], spec)
    served_versions = versions(model_dir)
    blobs = {
        v: sorted(p.name for p in (model_dir / str(v) / "ov-cache").iterdir())
        for v in served_versions
    }
    assert all(blobs.values()), blobs  # export compiled the served model into its cache
    with TritonServer(
        ov_repository,
        free_port(),
        free_port(),
        free_port(),
        log_file=ov_repository.parent / "triton.log",
    ) as server:
        for version in served_versions:
            manifest = read_manifest(model_dir, version)
            precision = manifest["openvino"]["precision"]
            version_dir = model_dir / str(version)
            engine = read_engine(version_dir)
            assert engine["engine"] == "openvino" and engine["precision"] == precision
            split = engine["streams_from_batch"]  # bf16: batches of 8 split over the streams
            assert split == STREAMS_FROM_BATCH.get(precision, 0)
            assert manifest["openvino"]["streams_from_batch"] == split
            assert "openvino" in (version_dir / "model.py").read_text()
            parity = manifest["openvino"]["parity_fp32_vs_onnxruntime"]
            assert parity["probabilities_max_abs_diff"] <= 1e-4
            served = _served(server, version, spec, images)
            local = run_openvino(Engine(version_dir / "model.onnx", precision, split), spec, images)
            diff = float(
                np.abs(served[spec.probabilities_name] - local[spec.probabilities_name]).max()
            )
            cam = float(np.abs(served[spec.cam_name] - local[spec.cam_name]).max())
            # fp32: the same engine and numerics; bf16 and int8 may pick other kernels per
            # batch size
            assert diff <= (1e-4 if precision == "fp32" else 1e-2), (precision, diff)
            if precision == "fp32":
                assert cam <= 1e-3, cam
            else:
                gate = manifest["openvino"]["agreement"]
                assert gate["top1_agreement_decisive"] >= 0.99, gate
            # The backend loaded export's blob: it compiled nothing, so nothing new is cached.
            now = sorted(p.name for p in (version_dir / "ov-cache").iterdir())
            assert now == blobs[version], (version, blobs[version], now)
            print(
                f"\nopenvino {precision} v{version} (streams from batch {split or '-'}): served "
                f"vs in-process max |dp| {diff:.2e}, "
                f"CAM {cam:.2e}; export parity vs ONNX Runtime "
                f"{parity['probabilities_max_abs_diff']:.2e}"
                + (
                    f"; {precision} agreement "
                    f"{manifest['openvino']['agreement']['top1_agreement']:.3f}"
                    f", max |dp| {manifest['openvino']['agreement']['max_abs_prob_diff']:.3f}"
                    if precision != "fp32"
                    else ""
                )
            )


def test_default_export_falls_back_to_fp32_in_one_conversion(
    ci_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 refused by its gate: ``export_auto`` writes OpenVINO fp32 from the model it has
    already converted and parity-checked (once per export); an explicit bf16 export with the
    same refusal writes nothing. The gate is made to refuse, and bf16 allowed on any CPU (where
    the CPU has no bf16, OpenVINO compiles f32 for it): the flow is what is tested here."""
    from export import openvino, pipeline, quantize
    from export.quantize import GateError
    from export.repository import TritonOptions

    def refuse(*_: object, what: str = "", **__: object) -> dict:
        raise GateError(f"{what} top-1 agreement with fp32 is 97.0% (< 99%)")

    conversions: list[Path] = []
    convert_and_check = pipeline._convert_and_check

    def counted(saved_model: Path, stage: Path, *args: Any) -> Any:
        conversions.append(stage)
        return convert_and_check(saved_model, stage, *args)

    monkeypatch.setattr(quantize, "judge_agreement", refuse)
    monkeypatch.setattr(openvino, "supports", lambda _precision: True)
    monkeypatch.setattr(pipeline, "_convert_and_check", counted)
    repo = tmp_path / "models"
    with pytest.raises(GateError, match="OpenVINO bf16"):
        pipeline.export_run(ci_run, repo, TritonOptions(target="openvino", precision="bf16"))
    assert versions(repo / "covidct") == []  # nothing written, nothing staged left
    assert [p.name for p in (repo / "covidct").iterdir() if p.is_dir()] == []

    manifest, chosen = pipeline.export_auto(ci_run, repo, TritonOptions(), flags=["amx_bf16"])
    assert len(conversions) == 2  # one per export: the fallback converted nothing again
    assert chosen.startswith("openvino fp32: bf16 (") and "failed its gate" in chosen
    assert manifest["version"] == 1 and manifest["serving"]["precision"] == "fp32"
    written = read_manifest(repo / "covidct", 1)
    assert written["openvino"]["precision"] == "fp32" and "97.0%" in written["openvino"]["fallback"]
    assert "agreement" not in written["openvino"]  # fp32 is judged by parity, not the gate
    version_dir = repo / "covidct" / "1"
    assert json.loads((version_dir / "engine.json").read_text())["precision"] == "fp32"
    assert any((version_dir / "ov-cache").iterdir())  # fp32's compiled model, cached


def test_served_batches_split_over_streams_on_any_cpu(ov_repository: Path, tmp_path: Path) -> None:
    """The backend's stream split, exercised where bf16 is missing too: the fp32 version served
    again with ``streams_from_batch`` 2 answers like the same Engine in process, within 1e-4,
    for batches below and above the split."""
    import shutil

    model_dir = ov_repository / "covidct"
    spec = ModelSpec.from_dict(read_manifest(model_dir, 1)["model_spec"])
    assert read_manifest(model_dir, 1)["openvino"]["precision"] == "fp32"
    copy = tmp_path / "models" / "covidct"
    copy.mkdir(parents=True)
    for name in ("config.pbtxt", "labels.txt"):
        shutil.copy(model_dir / name, copy / name)
    shutil.copytree(model_dir / "1", copy / "1", ignore=shutil.ignore_patterns("ov-cache"))
    engine = read_engine(copy / "1") | {"streams_from_batch": 2}
    (copy / "1" / "engine.json").write_text(json.dumps(engine))
    images = slice_images(real_pngs(real_data_dir())[:9], spec)
    with TritonServer(
        copy.parent, free_port(), free_port(), free_port(), log_file=tmp_path / "triton.log"
    ) as server:
        triton = TritonControl(f"127.0.0.1:{server.grpc_port}", "covidct")
        parts = (images[:1], images[1:])  # one slice (LATENCY), then eight (the streams)
        served = np.concatenate(
            [triton.infer(1, p, spec.input_name, spec.probabilities_name) for p in parts]
        )
    names = [spec.probabilities_name]
    split = Engine(copy / "1" / "model.onnx", "fp32", 2)
    local = np.concatenate([split(p, spec.input_name, names)[0] for p in parts])
    latency = Engine(copy / "1" / "model.onnx", "fp32")(images, spec.input_name, names)[0]
    assert np.abs(served - local).max() <= 1e-4
    assert np.abs(local - latency).max() <= 1e-4  # the streams change no answer


#: Run as another user (uid/gid 65534) on a read-only copy of a version: everything is
#: imported and OpenVINO's plugin loaded first, as root, since the interpreter's files may not
#: be readable by that user.
_READ_ONLY_LOAD = """
import importlib.util, json, os, sys, types
import openvino as ov
sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
version_dir, args = sys.argv[1], json.loads(sys.argv[2])
spec = importlib.util.spec_from_file_location("backend", os.path.join(version_dir, "model.py"))
backend = importlib.util.module_from_spec(spec)
spec.loader.exec_module(backend)
ov.Core().compile_model(ov.Core().read_model(os.path.join(version_dir, "model.onnx")), "CPU")
os.setgid(65534)
os.setuid(65534)
model = backend.TritonPythonModel()
model.initialize(args)
compiled = model.request.get_compiled_model()
print(json.dumps({
    "writable": os.access(os.path.join(version_dir, "ov-cache"), os.W_OK),
    "cache": backend.cache_folder(version_dir),
    "loaded_from_cache": bool(compiled.get_property("LOADED_FROM_CACHE")),
}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another user: needs root")
def test_backend_loads_exports_blob_from_a_read_only_repository(ov_repository: Path) -> None:
    """compose and Kubernetes mount the repository read-only and run Triton as another user:
    the backend still loads export's compiled blob instead of compiling; a blob it cannot read
    makes it compile (not fail), and nothing is written."""
    model_dir = ov_repository / "covidct"
    manifest = read_manifest(model_dir, 2)
    assert manifest["openvino"]["precision"] == "int8"
    params = {"covidct_model_spec": {"string_value": json.dumps(manifest["model_spec"])}}
    config = {"parameters": params, "instance_group": [{"count": 1, "kind": "KIND_CPU"}]}
    root = Path(tempfile.mkdtemp(prefix="covidct-ro-", dir="/tmp"))
    try:
        shutil.copytree(model_dir / "2", root / "2")
        blobs = list((root / "2" / "ov-cache").iterdir())
        assert blobs and all(b.stat().st_mode & 0o777 == 0o644 for b in blobs)  # as exported
        answers = []
        for readable in (True, False):
            if not readable:
                for blob in blobs:
                    blob.chmod(0o400)  # as an older export left it, for a server of another user
            for path in (root, *root.rglob("*")):
                path.chmod(0o555 if path.is_dir() else path.stat().st_mode & 0o644)
            args = {
                "model_config": json.dumps(config),
                "model_repository": str(root),
                "model_version": "2",
            }
            done = subprocess.run(
                [sys.executable, "-c", _READ_ONLY_LOAD, str(root / "2"), json.dumps(args)],
                capture_output=True,
                text=True,
                timeout=300,
                cwd=root,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            answers.append(json.loads(done.stdout.strip().splitlines()[-1]))
            assert sorted((root / "2" / "ov-cache").iterdir()) == sorted(blobs)
        cache = str(root / "2" / "ov-cache")
        assert answers[0] == {"writable": False, "cache": cache, "loaded_from_cache": True}
        assert answers[1] == {"writable": False, "cache": None, "loaded_from_cache": False}
    finally:
        for path in (root, *root.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(root)
