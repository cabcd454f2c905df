"""The openvino target end to end: ``covidct export --target openvino`` on the CI-trained model,
served by the real tritonserver (Python backend running OpenVINO), answers like OpenVINO run
in this process (within 1e-4 in fp32) on real CT slices. int8 (the static QDQ model, calibrated
on the run's val split) and bf16 where the CPU has AMX or AVX512_BF16 are gated against fp32 on
the real slices and served beside it as other versions; elsewhere the bf16 export refuses and
writes nothing. The third version is what ``covidct export`` without ``--target`` chooses here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.corpus import real_data_dir, real_pngs
from covidct.config import ModelSpec
from export.onnx import slice_images
from export.openvino import STREAMS_FROM_BATCH, Engine, read_engine, run_openvino, supports
from export.repository import read_manifest, versions
from serving.control import TritonControl
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
        assert bf16.returncode == 1 and "needs a CPU with AMX or AVX512_BF16" in message
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
    already converted and parity-checked (tf2onnx runs once); an explicit bf16 export with the
    same refusal writes nothing. The gate is made to refuse, and bf16 allowed on any CPU (where
    the CPU has no bf16, OpenVINO compiles f32 for it): the flow is what is tested here."""
    from export import openvino, pipeline, quantize
    from export.quantize import GateError
    from export.repository import ServingConfig

    def refuse(*_: object, what: str = "", **__: object) -> dict:
        raise GateError(f"{what} top-1 agreement with fp32 is 97.0% (< 99%)")

    conversions: list[Path] = []
    convert = pipeline.convert

    def counted(saved_model: Path, out: Path, spec: ModelSpec) -> None:
        conversions.append(out)
        convert(saved_model, out, spec)

    monkeypatch.setattr(quantize, "judge_agreement", refuse)
    monkeypatch.setattr(openvino, "supports", lambda _precision: True)
    monkeypatch.setattr(pipeline, "convert", counted)
    repo = tmp_path / "models"
    with pytest.raises(GateError, match="OpenVINO bf16"):
        pipeline.export_run(ci_run, repo, ServingConfig(target="openvino", precision="bf16"))
    assert versions(repo / "covidct") == []  # nothing written, nothing staged left
    assert [p.name for p in (repo / "covidct").iterdir() if p.is_dir()] == []

    manifest, chosen = pipeline.export_auto(ci_run, repo, ServingConfig(), flags=["amx_bf16"])
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
