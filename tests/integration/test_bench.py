"""Smoke runs of every ``covidct bench`` command on tiny settings, so the tooling never rots.

The figures are not judged here (BENCHMARKS.md holds them); what is checked is that each
command runs end to end against the real binaries and writes well-formed results.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.corpus import REPO
from bench.sweep import read_csv
from serving.server import free_port
from tests.cli_helpers import covidct

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ci_group = pytest.mark.xdist_group("ci-run")


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])


@ci_group
def test_bench_triton_with_perf_analyzer(ci_run: Path, tmp_path: Path) -> None:
    """ONNX Runtime fp32 and this CPU's default target (``--target auto``) served side by
    side, each beside its own engine in process, and the default target's speed-up."""
    repo = tmp_path / "models"
    for target in ("cpu", "auto"):
        _ok(covidct("export", "--run", ci_run, "--repository", repo, "--target", target))
    out = tmp_path / "triton"
    args = ["--repository", repo, "--versions", "1,2", "--concurrency", "1,2"]
    _ok(
        covidct(
            "bench", "triton", *args, "--measurement-ms", "500", "--stability", "500", "--out", out
        )
    )
    for v in ("v1", "v2"):
        rows = read_csv(out / f"triton-{v}.csv")
        assert [r.concurrency for r in rows] == [1, 2]
        assert all(r.throughput > 0 and r.p50 <= r.p99 for r in rows)
        assert rows[0].server_compute is not None and rows[0].server_compute > 0
        assert rows[0].avg_batch == 1.0  # one request at a time: nothing to batch
    assert (out / "triton.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "raw").iterdir()) == [
        "v1-c1.csv",
        "v1-c2.csv",
        "v2-c1.csv",
        "v2-c2.csv",
    ]
    assert not (out / "input_data.json").exists()
    result = json.loads((out / "result.json").read_text())
    from export.openvino import STREAMS_FROM_BATCH, default_cpu_target

    _, precision, _ = default_cpu_target()
    split = STREAMS_FROM_BATCH.get(precision, 0)  # measured in process as it is served
    default_engine = f"openvino-{precision}" + (f"-streams{split}" if split else "")
    local = result["in_process"]
    assert (local["1"]["engine"], local["2"]["engine"]) == ("ort-fp32", default_engine)
    for v in ("1", "2"):
        assert len(local[v]["passes"]) == 2  # one after each level
        assert all(set(p) == {"1", "8", "16"} for p in local[v]["passes"])
        assert local[v]["best_images_per_s"] > 0
        assert result["summary"][v]["served_vs_in_process"] > 0
    default = result["default_target"]
    assert (default["target"], default["precision"]) == ("openvino", precision)
    assert default["speedup"] > 0 and default["goal_x"] >= 1.4
    section = (out / "section.md").read_text()
    assert "| served / in-process |" in section and "Default CPU target here" in section


@ci_group
def test_bench_gateway_beside_triton(server, gateway_url: str, tmp_path: Path) -> None:
    """The sweep beside perf_analyzer, then interleaved c=1 rounds whose median is judged."""
    out = tmp_path / "gateway"
    _ok(
        covidct(
            "bench",
            "gateway",
            "--url",
            gateway_url,
            "--triton",
            server.grpc_address,
            "--concurrency",
            "1,2",
            "--requests",
            "10",
            "--measurement-ms",
            "500",
            "--stability",
            "500",
            "--rounds",
            "3",
            "--round-requests",
            "5",
            "--out",
            out,
        )
    )
    result = json.loads((out / "result.json").read_text())
    assert result["failures"] == 0
    gateway, triton = read_csv(out / "gateway.csv"), read_csv(out / "triton.csv")
    assert [r.concurrency for r in gateway] == [r.concurrency for r in triton] == [1, 2]
    rounds = result["c1_rounds"]
    assert [r["order"][0] for r in rounds["rounds"]] == ["gateway", "python-grpc", "gateway"]
    overheads = sorted(r["overhead_ms"] for r in rounds["rounds"])
    assert result["p50_overhead_c1_ms"] == rounds["median_ms"] == overheads[1]
    parts = rounds["parts_ms"]
    assert parts["preprocess"] > 0 and rounds["preprocess_in_process_ms"] > 0
    assert all(r["p50_ms"]["python-grpc"] > 0 for r in rounds["rounds"])
    assert len((out / "raw" / "rounds" / "gateway-calls.csv").read_text().splitlines()) == 16
    section = (out / "section.md").read_text()
    assert "gateway / Triton" in section and "the median of 3 rounds" in section
    assert (out / "gateway.png").is_file()


def test_bench_gateway_names_an_unreachable_gateway(tmp_path: Path) -> None:
    result = covidct("bench", "gateway", "--url", "http://127.0.0.1:9", "--out", tmp_path)
    assert result.returncode == 2 and "does not answer /v1/models" in result.stderr


@ci_group
def test_bench_settings_sweeps_every_variant(repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "settings"
    _ok(
        covidct(
            "bench",
            "settings",
            "--repository",
            repository,
            "--concurrency",
            "1",
            "--measurement-ms",
            "500",
            "--stability",
            "500",
            "--out",
            out,
        )
    )
    result = json.loads((out / "result.json").read_text())
    assert len(result["results"]) == 4 and result["recommended"] in result["results"]
    assert result["recommended_serving"]["target"] == "cpu"
    assert (out / "settings.png").is_file()


@ci_group
def test_bench_engines_runs_all_eight(ci_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "engines"
    _ok(
        covidct(
            "bench", "engines", "--run", ci_run, "--batches", "1,2", "--rounds", "2", "--out", out
        )
    )
    result = json.loads((out / "result.json").read_text())
    engines = result["results"]
    assert set(engines) == {
        "tf-savedmodel",
        "ort-fp32",
        "openvino-fp32",
        "openvino-bf16",
        "ort-int8",
        "openvino-int8",
        "openvino-fp32-throughput",
        "openvino-bf16-throughput",
    }
    for figures in engines.values():
        assert figures["peak_rss_mib"] > 50
        assert set(figures["batches"]) == {"1", "2"}
    # OpenVINO runs the same ONNX graph: it must give the same answers
    assert result["agreement"]["openvino-fp32"] == 1.0
    # each engine's own peak: TensorFlow's runtime alone outweighs ONNX Runtime's
    assert engines["tf-savedmodel"]["peak_rss_mib"] > 1.5 * engines["ort-fp32"]["peak_rss_mib"]
    assert result["agreement"]["tf-savedmodel"] == 1.0
    # the two performance hints measured side by side, per precision and batch
    hint = result["throughput_vs_latency_hint"]
    assert set(hint) == {"fp32", "bf16"} and all(set(r) == {"1", "2"} for r in hint.values())
    assert all(0 < x < 10 for r in hint.values() for x in r.values())
    assert "PERFORMANCE_HINT THROUGHPUT" in (out / "section.md").read_text()


def test_bench_capacity_with_the_identity_model(tmp_path: Path) -> None:
    out = tmp_path / "capacity"
    _ok(
        covidct(
            "bench",
            "capacity",
            "--workers",
            "1",
            "--concurrency",
            "4",
            "--seconds",
            "2",
            "--out",
            out,
        )
    )
    result = json.loads((out / "result.json").read_text())
    rows = result["rows"]  # the worker count, then the same with preprocessing in threads
    assert [(r["workers"], r["preprocessing"]) for r in rows] == [
        (1, "event loop"),
        (1, "worker threads"),
    ]
    for row in rows:
        assert row["failures"] == 0 and row["uploads"] > 10
        assert row["gateway_cpu_s"] > 0 and row["per_gateway_core"] > 0
    costs = result["preprocessing_ms"]
    assert set(costs) == {"compiled kernels", "Python references"}
    assert all(0 < ms < 100 for ms in costs.values())


@ci_group
def test_bench_replicas_with_the_identity_model(tmp_path: Path) -> None:
    out = tmp_path / "replicas"
    _ok(
        covidct(
            *("bench", "replicas", "--replicas", "1,2", "--concurrency", "4"),
            *("--seconds", "2", "--rounds", "2", "--out", out),
        )
    )
    ((label, figures),) = json.loads((out / "result.json").read_text())["models"].items()
    assert label.startswith("identity model")
    assert [r["replicas"] for r in figures["rows"]] == [1, 2]
    for row in figures["rows"]:
        assert row["failures"] == 0 and row["uploads_per_s"] > 0 and len(row["rounds"]) == 2
    failover = figures["failover"]
    assert failover["failures"] == 0 and failover["readmitted"], failover
    assert "| identity model (S=224) | 2 |" in (out / "section.md").read_text()


def test_bench_data_train_and_report(tmp_path: Path) -> None:
    _ok(
        covidct(
            "bench",
            "data",
            "--png",
            "4",
            "--synth-slices",
            "10",
            "--cache-slices",
            "20",
            "--size",
            "64",
            "--out",
            tmp_path / "data",
        )
    )
    _ok(
        covidct(
            "bench",
            "train",
            "--backbone",
            "vgg16",  # plumbing: traced in seconds (DenseNet121: a minute)
            "--size",
            "32",
            "--steps",
            "1",
            "--out",
            tmp_path / "train",
        )
    )
    report = tmp_path / "BENCHMARKS.md"
    _ok(covidct("bench", "report", "--results", tmp_path, "--output", report))
    text = report.read_text()
    assert "## covidct bench data (S=64)" in text and "## covidct bench train" in text
    assert "not measured" in text


def _gpu_version(root: Path) -> Path:
    """A tensorrt-plan version as covidct export writes it (the parts bench/gpu.sh reads)."""
    from covidct.config import ModelSpec
    from export.tritonconfig import TritonOptions, render_config

    spec, serving = ModelSpec(image_size=64), TritonOptions(target="tensorrt-plan")
    version = root / "covidct" / "1"
    version.mkdir(parents=True)
    (version.parent / "config.pbtxt").write_text(render_config(spec, serving, (2, 2)))
    (version / "manifest.json").write_text(json.dumps({"target": "tensorrt-plan"}, indent=2))
    return version


def test_gpu_script_stops_at_the_gpu_boundary(tmp_path: Path) -> None:
    """No GPU here: the script must get everything ready, then say what is missing."""
    version = _gpu_version(tmp_path / "models")
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), str(tmp_path / "models"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 3, result.stderr
    assert "not a GPU host: missing" in result.stderr and "nvidia-smi" in result.stderr
    assert str(version) in result.stderr


def test_gpu_script_fails_when_triton_never_becomes_ready(tmp_path: Path) -> None:
    """docker compose starts the stack, Triton never answers ready: exit 4, logs kept, down."""
    _gpu_version(tmp_path / "models")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    fakes = {
        "docker": "exit 1",  # no compose v2 plugin: the script falls back to docker-compose
        "docker-compose": f'echo "$*" >> {calls}\n'
        'case "$*" in *" ps "*) printf "Name\\n----\\nx_triton_1 Up (health: starting)\\n";; '
        '*" logs "*) echo "triton | E model failed to load";; esac',
        "nvidia-smi": 'echo "name, driver_version, memory.total"; echo "Tesla T4, 535.86, 15 GiB"',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), str(tmp_path / "models"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "READY_TIMEOUT_S": "2",
            "TRITON_HTTP_PORT": str(free_port()),
        },
        timeout=60,
    )
    assert result.returncode == 4, result.stderr
    assert "Triton never became ready" in result.stderr
    assert "model failed to load" in (tmp_path / "o" / "compose.log").read_text()
    made = calls.read_text()
    assert "--profile gpu up -d triton" in made and made.rstrip().endswith("down")


@ci_group
def test_bench_pacs_beside_orthanc_and_the_study_path(gateway_url: str, tmp_path: Path) -> None:
    """One round of each: storescu into the node and into Orthanc and STOW-RS into the node,
    then a series through the node into Orthanc beside the gateway's study path, and one pulled
    from Orthanc; every part measured."""
    out = tmp_path / "pacs"
    args = ["--url", gateway_url, "--rounds", "1", "--e2e-rounds", "1", "--series", "fixture"]
    _ok(covidct("bench", "pacs", *args, "--slices", "20", "--stable-s", "1", "--out", out))
    result = json.loads((out / "result.json").read_text())
    assert result["instances"] == 20 and "fixture" in result["series"]
    assert result["receive"]["node_per_s"]["median"] > 0
    assert result["receive"]["orthanc_per_s"]["median"] > 0
    assert result["receive"]["stow_per_s"]["median"] > 0  # STOW-RS into the node, same files
    assert result["pull"]["latency_s"]["median"] > 1.0  # at least the node's stable wait
    e2e = result["end_to_end"]
    assert e2e["gateway_study_s"]["median"] > 0
    parts = e2e["parts_s"]
    assert parts["infer_s"] > 0 and parts["build_s"] > 0 and parts["send_s"] > 0
    assert parts["view_s"] > 0  # the viewer's copy, written beside the send: not in the sum
    summed = sum(v for k, v in parts.items() if k not in ("end_to_end_s", "view_s"))
    assert summed == pytest.approx(parts["end_to_end_s"])
    assert "| node / Orthanc |" in (out / "section.md").read_text()
