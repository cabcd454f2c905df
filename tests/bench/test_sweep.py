"""The benchmark tooling's pure parts: levels, CSV, perf_analyzer parsing, rules, report."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from bench.perfanalyzer import parse_perf_csv
from bench.report import render, targets
from bench.settings import recommend
from bench.sweep import RESULTS, BenchError, Row, parse_levels, read_csv, write_csv
from export.tritonconfig import TritonOptions


@pytest.mark.parametrize(
    ("text", "levels"),
    [
        ("1:16:x2", [1, 2, 4, 8, 16]),
        ("1:8:2", [1, 3, 5, 7]),
        ("2:12:x3", [2, 6]),
        ("4", [4]),
        ("1,2,8", [1, 2, 8]),
        (" 1:3 ", [1, 2, 3]),
    ],
)
def test_levels(text: str, levels: list[int]) -> None:
    assert parse_levels(text) == levels


@pytest.mark.parametrize("text", ["", "0", "a:b", "1:16:x1", "1:16:0", "-1,2", "1:4096:x2", "x"])
def test_bad_levels_are_refused(text: str) -> None:
    with pytest.raises(BenchError, match="concurrency"):
        parse_levels(text)


def test_csv_round_trip_and_percentiles(tmp_path: Path) -> None:
    row = Row.from_latencies(4, [0.010] * 98 + [0.050, 0.100], wall=2.0)
    assert row.throughput == 50.0
    assert row.p50 == pytest.approx(10_000) and row.p99 > 49_000
    write_csv(tmp_path / "x.csv", [row, Row(8, 1.5, 1, 2, 3, 4, 5, 6, 7)])
    back = read_csv(tmp_path / "x.csv")
    assert back[0].concurrency == 4 and back[0].server_queue is None
    assert back[1].server_compute == 7


def test_perf_analyzer_csv_is_parsed(fixtures: Path) -> None:
    (row,) = parse_perf_csv(fixtures / "perf_analyzer.csv")
    assert row.concurrency == 1 and row.throughput == pytest.approx(18.1355)
    assert row.p50 == 50805 and row.p99 == 137022
    assert row.server_queue == 2110 and row.server_compute == 51742
    # perf_analyzer 2.50 writes no "Avg latency": the sum of its latency components
    assert row.avg == 13 + 326 + 2110 + 32 + 51742 + 635 + 5


def _rows(c1_p50: float, loaded: float) -> list[Row]:
    return [
        Row(1, 10, c1_p50, 1, 1, 10 * c1_p50, 1),
        Row(4, loaded, 1, 1, 1, 1, 1),
        Row(8, loaded, 1, 1, 1, 1, 1),
    ]


def test_recommendation_rule() -> None:
    results = {
        "a": _rows(c1_p50=100, loaded=20),
        "b": _rows(c1_p50=108, loaded=25),  # within 10% at c=1 and faster under load: chosen
        "c": _rows(c1_p50=140, loaded=40),  # fastest, but a slower single user
    }
    assert recommend(results) == "b"
    assert recommend({"a": results["a"]}) == "a"


def test_export_defaults_follow_the_committed_settings_measurement() -> None:
    result = json.loads((RESULTS / "settings" / "result.json").read_text())
    chosen = result["recommended_serving"]
    defaults = asdict(TritonOptions())
    for key in ("dynamic_batching", "max_queue_delay_us", "instance_count"):
        assert defaults[key] == chosen[key], (key, result["recommended"])


def _result(folder: Path, name: str, payload: dict[str, object]) -> None:
    (folder / name).mkdir(parents=True)
    machine = {"cpu": "test cpu", "cores": 2, "memory_gib": 1.0, "os": "x", "python": "3.11"}
    (folder / name / "result.json").write_text(json.dumps({"machine": machine, **payload}))
    (folder / name / "section.md").write_text(f"## section {name}\n")


def _raw(c: int, throughput: float, p50: float) -> dict[str, float]:
    return asdict(Row(c, throughput, p50, p50, p50, p50, p50))


def _summary(engine: str, best: float, in_process: float, agreement: float | None) -> dict:
    return {
        "engine": engine,
        "best": best,
        "in_process": in_process,
        "served_vs_in_process": best / in_process,
        "agreement": agreement,
    }


def test_report_judges_every_target(tmp_path: Path) -> None:
    default = {"target": "openvino", "precision": "bf16", "goal_x": 4.0, "speedup": 2.5}
    _result(
        tmp_path,
        "triton",
        {
            "summary": {
                "1": _summary("cpu fp32", 19.0, 20.0, None),
                "2": _summary("ONNX Runtime int8", 30.0, 29.0, 0.98),
                "3": _summary("OpenVINO bf16", 40.0, 50.0, 1.0),
            },
            "default_target": {**default, "met": False},
        },
    )
    _result(
        tmp_path,
        "gateway",
        {
            "gateway": [_raw(1, 17, 58_000), _raw(4, 18, 1), _raw(8, 17, 1)],
            "triton": [_raw(1, 18, 50_000), _raw(4, 19, 1), _raw(8, 19, 1)],
        },
    )
    _result(tmp_path, "capacity", {"rows": [{"per_gateway_core": 180.0}]})
    (tmp_path / "capacity" / "notes.md").write_text("Reading: why.\n")
    judged = [(t.what, t.met) for t in targets(tmp_path)]
    assert [met for _, met in judged] == [
        True,  # v1 served / in-process 0.95x
        True,  # v2 1.03x
        False,  # v2 agreement 98%
        False,  # v3 0.80x
        True,  # v3 agreement 100%
        False,  # default 2.5x < 4x
        False,  # gateway c4 0.95x, c8 0.89x
        True,  # +8 ms
        False,  # 180 per core
    ], judged
    measured = {t.what.split(" (")[0]: t.measured for t in targets(tmp_path)}
    assert "19.0 vs 20.0 img/s = 0.95x" in measured["Served cpu fp32"]
    assert "98.0%" in measured["ONNX Runtime int8"]
    assert measured["Default CPU target"] == "2.50x"
    text = render(tmp_path)
    assert text.index("## section triton") < text.index("## section capacity")
    assert "Reading: why." in text and "test cpu, 2 cores" in text


def test_report_says_what_is_not_measured(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "section.md").write_text("## data\n")
    assert all(t.met is None for t in targets(tmp_path))
    assert "not measured" in render(tmp_path)


def test_profile_summary_buckets_busy_samples(tmp_path: Path) -> None:
    from bench.profiling import profile_summary

    raw = tmp_path / "profile.txt"
    raw.write_text(
        "thread (1): AnyIO worker;run (anyio);preprocess_bytes (covidct/preprocessing.py:181);"
        "auto_body_box (covidct/preprocessing.py:255) 30\n"
        "thread (1): AnyIO worker;run (anyio);decode (covidct/preprocessing.py:217);"
        "load (PIL/ImageFile.py:425) 50\n"
        "thread (2): MainThread;run (uvicorn/server.py:1);handle (starlette/routing.py:2) 20\n"
        "thread (2): MainThread;run_forever (asyncio);select (selectors.py:468) 400\n"
    )
    shares = profile_summary(raw)
    assert shares == pytest.approx(
        {"PNG/DICOM decode": 0.5, "body box": 0.3, "HTTP, multipart, JSON (FastAPI/uvicorn)": 0.2}
    )


def test_stability_reaches_perf_analyzer(
    fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_level passes --stability through (it was once fixed at 50%): a stand-in
    perf_analyzer records its arguments and writes the CSV perf_analyzer wrote."""
    from bench.perfanalyzer import run_level

    argv = tmp_path / "argv.json"
    fake = tmp_path / "perf_analyzer"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import json, shutil, sys\n"
        f"json.dump(sys.argv[1:], open({str(argv)!r}, 'w'))\n"
        f"csv = {str(fixtures / 'perf_analyzer.csv')!r}\n"
        "shutil.copy(csv, sys.argv[sys.argv.index('-f') + 1])\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("COVIDCT_PERF_ANALYZER", str(fake))
    row = run_level(
        "127.0.0.1:1", "covidct", "1", 1, tmp_path / "in.json", tmp_path / "out.csv", stability=7.5
    )
    args = json.loads(argv.read_text())
    assert args[args.index("--stability-percentage") + 1] == "7.5"
    assert row.concurrency == 1


def test_served_versions_and_their_gate_come_from_the_manifests(tmp_path: Path) -> None:
    from bench.served import served_versions

    model = tmp_path / "covidct"
    manifests = {
        1: {"target": "cpu"},
        2: {"target": "cpu", "int8": {"top1_agreement_decisive": 0.992, "max_abs_prob_diff": 0.1}},
        3: {
            "target": "openvino",
            "openvino": {"precision": "bf16", "agreement": {"top1_agreement_decisive": 1.0}},
        },
    }
    for v, manifest in manifests.items():
        (model / str(v)).mkdir(parents=True)
        (model / str(v) / "manifest.json").write_text(json.dumps(manifest))
    (model / "3" / "engine.json").write_text(
        json.dumps({"engine": "openvino", "precision": "bf16", "streams_from_batch": 4})
    )
    info = served_versions(tmp_path, "covidct", ["1", "2", "3"])
    assert {v: i["engine"] for v, i in info.items()} == {
        "1": "cpu fp32",
        "2": "ONNX Runtime int8",
        "3": "OpenVINO bf16 (streams from batch 4)",
    }
    # measured in process as it is served: batches of 4 or more on the streams
    assert info["3"]["bench_engine"] == "openvino-bf16-streams4"
    assert info["2"]["agreement"] == 0.992 and info["1"]["agreement"] is None
    assert served_versions(None, "covidct", ["1"]) == {}


def test_every_gateway_run_measures_its_c1_overhead() -> None:
    from bench.load import p50_overhead_c1_ms

    gateway = [Row(1, 17, 58_000, 0, 0, 0, 0), Row(4, 18, 90_000, 0, 0, 0, 0)]
    triton = [Row(1, 18, 50_000, 0, 0, 0, 0), Row(4, 19, 80_000, 0, 0, 0, 0)]
    assert p50_overhead_c1_ms(gateway, triton) == 8.0
    assert p50_overhead_c1_ms(gateway[1:], triton[1:]) is None  # no c=1 level


@pytest.mark.parametrize(
    ("flags", "engine", "goal"),
    [
        (["amx_bf16", "avx512_bf16"], "openvino-bf16-streams4", 4.0),
        (["avx2"], "openvino-fp32", 1.4),
    ],
)
def test_default_target_is_found_among_the_served_versions(
    monkeypatch: pytest.MonkeyPatch, flags: list[str], engine: str, goal: float
) -> None:
    """The rule's choice is matched to its served version whatever its stream split, and set
    against served ONNX Runtime fp32 with the goal this CPU's flags call for."""
    from bench.perf import default_target_figures
    from export import openvino

    monkeypatch.setattr(openvino, "cpu_flags", lambda: flags)
    summary = {
        "1": {"bench_engine": "ort-fp32", "best": 20.0},
        "2": {"bench_engine": None, "best": 99.0},  # a version not measured in process
        "3": {"bench_engine": engine, "best": 85.0},
    }
    figures = default_target_figures(summary)
    assert figures is not None
    assert figures["speedup"] == pytest.approx(4.25) and figures["goal_x"] == goal
    assert figures["met"]  # 4.25x meets both goals


def test_in_process_reference_is_the_median_of_its_passes() -> None:
    """One slow pass (the machine had a bad minute) moves neither the figure nor the best
    batch size; a mean or a single pass would."""
    from bench.perf import in_process_figures

    def one(b1: float, b8: float) -> dict[str, dict[str, float]]:
        return {
            "1": {"images_per_s": b1, "latency_ms": 1000 / b1},
            "8": {"images_per_s": b8, "latency_ms": 8000 / b8},
        }

    passes = [one(50, 10), one(50, 100), one(52, 98), one(49, 96)]
    figures = in_process_figures("openvino-bf16", passes)
    assert figures["best_batch"] == "8"
    assert figures["best_images_per_s"] == pytest.approx(97.0)
    assert figures["per_batch"]["1"] == pytest.approx(50.0)
    assert figures["passes"] == passes and figures["engine"] == "openvino-bf16"


def test_engine_child_stays_loaded_and_measures_on_request(tmp_path: Path) -> None:
    """The persistent in-process child answers several passes, and a model it cannot load
    is a BenchError naming the engine, not a hang."""
    import numpy as np

    from bench.inprocess import EngineChild
    from covidct.config import MIN_IMAGE_SIZE, ModelSpec
    from tests.deploy.test_trt_build import tiny_onnx

    spec = ModelSpec(image_size=MIN_IMAGE_SIZE)
    tiny_onnx(tmp_path / "model.onnx", spec, [0.01, 0.0, -0.01])
    images = np.random.default_rng(0).integers(
        0, 256, (4, spec.image_size, spec.image_size, 1), np.uint8
    )
    with EngineChild("ort-fp32", tmp_path / "model.onnx", spec, images) as child:
        first, second = child.measure((1, 4), 2), child.measure((2,), 1)
        pid = child.process.pid
    assert set(first) == {"1", "4"} and set(second) == {"2"}
    assert all(
        f["images_per_s"] > 0 and f["latency_ms"] > 0 for f in (*first.values(), *second.values())
    )
    assert child.process.returncode == 0 and pid > 0
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(BenchError, match="engine ort-fp32 failed"):
        EngineChild("ort-fp32", tmp_path / "broken.onnx", spec, images)
