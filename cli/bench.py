"""The ``covidct bench`` group: benchmarks whose output goes into BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import ModelOpt, err, fail
from covidct.addresses import DEFAULT_GATEWAY_URL
from covidct.config import DEFAULT_IMAGE_SIZE, DEFAULT_MODEL_NAME

bench_app = typer.Typer(
    help="Benchmarks whose output goes into BENCHMARKS.md.", no_args_is_help=True
)

#: Defaults several bench commands share (the cli stays light: no bench module is imported
#: here, so these live with the options that use them).
LEVELS = "1:16:x2"
PERF_WINDOW_MS = 4000
PERF_STABILITY = 50.0

# Options several bench commands share.
ResultFolder = Annotated[
    Path | None, typer.Option(help="Result folder (default: bench/results/NAME).")
]
Concurrency = Annotated[str, typer.Option(help="Levels: 1:16:x2, 1:8:2 or 1,2,8.")]
MeasurementMs = Annotated[int, typer.Option(help="perf_analyzer window (ms).")]
Stability = Annotated[
    float, typer.Option(help="perf_analyzer: windows must agree within this percent.")
]


def _bench_out(out: Path | None, name: str) -> Path:
    from bench.sweep import RESULTS

    return out or RESULTS / name


def _levels(text: str) -> list[int]:
    from bench.sweep import parse_levels

    return parse_levels(text)


@bench_app.command("data")
def bench_data(
    png: Annotated[int, typer.Option(help="PNG slices to time.")] = 200,
    synth_slices: Annotated[int, typer.Option(help="Synthetic slices to time.")] = 200,
    cache_slices: Annotated[int, typer.Option(help="Slices per cache build.")] = 1000,
    size: Annotated[int, typer.Option(help="Model input size S.")] = DEFAULT_IMAGE_SIZE,
    out: ResultFolder = None,
) -> None:
    """Decode+crop+resize speed per core (PNG, DICOM), synthesis and cache build speed."""
    from bench.data import run_data_bench
    from bench.sweep import save

    section = run_data_bench(png, synth_slices, cache_slices, size)
    save(_bench_out(out, "data"), "data", section, {"size": size})
    print(section)


@bench_app.command("train")
def bench_train(
    backbone: Annotated[str, typer.Option(help="Backbone.")] = "densenet201",
    size: Annotated[int, typer.Option(help="Model input size S.")] = DEFAULT_IMAGE_SIZE,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 8,
    steps: Annotated[int, typer.Option(help="Timed training steps.")] = 6,
    out: ResultFolder = None,
) -> None:
    """Input pipeline images/s versus training-step images/s, plus graph build and memory."""
    from bench.sweep import save
    from bench.train import run_train_bench

    section = run_train_bench(backbone, size, batch_size, steps)
    save(_bench_out(out, "train"), "train", section, {"backbone": backbone, "size": size})
    print(section)


@bench_app.command("triton")
def bench_triton(
    repository: Annotated[
        Path | None, typer.Option(help="Model repository: a tritonserver is started on it.")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Use this running server instead (HOST:PORT).")
    ] = None,
    model: ModelOpt = DEFAULT_MODEL_NAME,
    versions: Annotated[
        str, typer.Option(help="Comma-separated versions, measured interleaved (default: latest).")
    ] = "",
    concurrency: Concurrency = LEVELS,
    protocol: Annotated[str, typer.Option(help="grpc or http.")] = "grpc",
    batch: Annotated[int, typer.Option(help="Batch size per request.")] = 1,
    measurement_ms: MeasurementMs = PERF_WINDOW_MS,
    stability: Stability = PERF_STABILITY,
    out: ResultFolder = None,
) -> None:
    """perf_analyzer sweep with real CT slices: CSV, throughput-latency PNG, report section."""
    from bench.perf import run_triton_bench

    levels = _levels(concurrency)
    chosen = [v.strip() for v in versions.split(",") if v.strip()]
    print(
        run_triton_bench(
            repository,
            url,
            model,
            chosen,
            levels,
            _bench_out(out, "triton"),
            protocol,
            batch,
            measurement_ms,
            stability,
        )
    )


@bench_app.command("gateway")
def bench_gateway(
    url: Annotated[str, typer.Option(help="Gateway URL.")] = DEFAULT_GATEWAY_URL,
    triton: Annotated[
        str | None, typer.Option(help="Also measure Triton directly (gRPC HOST:PORT).")
    ] = None,
    concurrency: Concurrency = LEVELS,
    requests: Annotated[int, typer.Option(help="Most requests per level.")] = 200,
    seconds: Annotated[float, typer.Option(help="Most seconds per level.")] = 30.0,
    measurement_ms: MeasurementMs = PERF_WINDOW_MS,
    stability: Stability = PERF_STABILITY,
    rounds: Annotated[
        int,
        typer.Option(
            min=0,
            help="Interleaved concurrency-1 rounds against Triton direct (with --triton); "
            "their median is the overhead judged.",
        ),
    ] = 7,
    round_requests: Annotated[
        int, typer.Option(min=1, help="Gateway requests (and direct gRPC calls) per round.")
    ] = 40,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="COVIDCT_API_KEY", help="X-API-Key, if the gateway has one."),
    ] = None,
    label: Annotated[str, typer.Option(help="Added to the report heading.")] = "",
    out: ResultFolder = None,
) -> None:
    """Load test of /v1/predict with real PNG and DICOM slices, beside Triton direct."""
    from bench.load import GatewayBenchOptions, run_gateway_bench

    options = GatewayBenchOptions(
        requests, seconds, measurement_ms, stability, rounds, round_requests
    )
    out_dir = _bench_out(out, "gateway")
    levels = _levels(concurrency)
    print(run_gateway_bench(url, levels, out_dir, triton, options, api_key, label))


@bench_app.command("engines")
def bench_engines(
    run: Annotated[Path, typer.Option(help="Finished training run (its SavedModel).")],
    batches: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,8,16",
    rounds: Annotated[int, typer.Option(help="Timed calls per batch size.")] = 10,
    calibration_data: Annotated[
        Path | None,
        typer.Option(
            help="COVIDx-CT folder whose val slices calibrate INT8 (default: half "
            "the real slices, agreement judged on the other half)."
        ),
    ] = None,
    out: ResultFolder = None,
) -> None:
    """TF SavedModel, ONNX Runtime fp32, OpenVINO fp32, ONNX Runtime INT8: one run."""
    from bench.engines import run_engines_bench

    sizes = _levels(batches)
    print(run_engines_bench(run, _bench_out(out, "engines"), sizes, rounds, calibration_data))


@bench_app.command("settings")
def bench_settings(
    repository: Annotated[Path, typer.Option(help="Repository with an exported cpu version.")],
    model: ModelOpt = DEFAULT_MODEL_NAME,
    version: Annotated[int | None, typer.Option(help="Version (default: latest).")] = None,
    concurrency: Concurrency = LEVELS,
    measurement_ms: MeasurementMs = PERF_WINDOW_MS,
    stability: Stability = PERF_STABILITY,
    out: ResultFolder = None,
) -> None:
    """Dynamic batching off/on (two delays), one/two instances: which should export use?"""
    from bench.settings import run_settings_bench

    levels = _levels(concurrency)
    print(
        run_settings_bench(
            repository,
            _bench_out(out, "settings"),
            levels,
            model,
            version,
            measurement_ms,
            stability,
        )
    )


@bench_app.command("capacity")
def bench_capacity(
    workers: Annotated[str, typer.Option(help="Gateway worker counts, e.g. 1,2.")] = "1,2",
    concurrency: Annotated[int, typer.Option(help="Concurrent connections.")] = 16,
    seconds: Annotated[float, typer.Option(help="Seconds per worker count.")] = 15.0,
    profile: Annotated[
        bool, typer.Option(help="py-spy the 1-worker gateway: where its time goes.")
    ] = True,
    out: ResultFolder = None,
) -> None:
    """The gateway's ceiling: PNG uploads/s per worker with a model that costs nothing."""
    from bench.capacity import run_capacity_bench

    counts = _levels(workers)
    print(
        run_capacity_bench(
            _bench_out(out, "capacity"), counts, concurrency, seconds, 20000, profile
        )
    )


@bench_app.command("replicas")
def bench_replicas(
    repository: Annotated[
        Path | None,
        typer.Option(help="Also measure this repository's model (the identity model always)."),
    ] = None,
    version: Annotated[str, typer.Option(help="Version of it to serve (default: newest).")] = "",
    replicas: Annotated[str, typer.Option(help="Replica counts, e.g. 1,2,3.")] = "1,2,3",
    concurrency: Annotated[int, typer.Option(help="Concurrent connections.")] = 8,
    seconds: Annotated[float, typer.Option(help="Seconds per row and round.")] = 8.0,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds (median shown).")] = 3,
    out: ResultFolder = None,
) -> None:
    """One gateway over 1, 2, 3 Triton replicas, interleaved; then one replica killed."""
    from bench.replicas import run_replicas_bench

    print(
        run_replicas_bench(
            _bench_out(out, "replicas"),
            repository,
            _levels(replicas),
            concurrency,
            seconds,
            rounds,
            version,
        )
    )


@bench_app.command("overload")
def bench_overload(
    seconds: Annotated[float, typer.Option(help="Seconds of overload.")] = 30.0,
    factor: Annotated[
        int, typer.Option(help="Clients, as a multiple of the in-flight limit.")
    ] = 10,
    big_mib: Annotated[int, typer.Option(help="Size of the large uploads, MiB.")] = 8,
    repository: Annotated[
        Path | None, typer.Option(help="Model repository to serve (default: identity model).")
    ] = None,
    out: ResultFolder = None,
) -> None:
    """The gateway at 10x its capacity: 200 or a fast 503 with Retry-After, RSS in budget."""
    from bench.overload import overload_markdown, run_overload_bench

    figures = run_overload_bench(
        _bench_out(out, "overload"), seconds, factor, big_mib, repository=repository
    )
    print(overload_markdown(figures))


@bench_app.command("quality")
def bench_quality(
    data: Annotated[
        Path | None,
        typer.Option(help="COVIDx-CT folder (default: covidxct-128 of the real-data collection)."),
    ] = None,
    work: Annotated[Path, typer.Option(help="Run folders (finished runs are reused).")] = Path(
        "runs/quality"
    ),
    recipes: Annotated[
        str, typer.Option(help="Recipes trained with every seed (bench/quality.py RECIPES).")
    ] = "baseline,no-intensity,sampling,no-balance,sampling-no-intensity",
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "0,1,2",
    one_seed: Annotated[
        str, typer.Option(help="Recipes trained with the first seed only (costlier ones).")
    ] = "densenet201",
    jobs: Annotated[
        int, typer.Option(min=1, help="Trainings at once (each gets cores/jobs threads).")
    ] = 2,
    train: Annotated[
        bool, typer.Option(help="Train the missing runs (--no-train: report the finished ones).")
    ] = True,
    out: ResultFolder = None,
) -> None:
    """Training recipes on real CT over seeds: slices, scans, patients, calibration, rules."""
    from bench.corpus import real_data_dir
    from bench.quality import recipe_named, run_quality_bench, schedule

    folder = data or real_data_dir() / "covidxct-128"
    if not (folder / "train_COVIDx-CT.txt").is_file():
        fail(f"{folder}: no train_COVIDx-CT.txt; give --data a COVIDx-CT folder with splits")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds {seeds!r}: give integers separated by commas, e.g. 0,1,2")
    if not seed_list:
        fail("--seeds: give at least one seed")
    plan = schedule([recipe_named(n.strip()) for n in recipes.split(",") if n.strip()], seed_list)
    plan += [(recipe_named(n.strip()), seed_list[0]) for n in one_seed.split(",") if n.strip()]
    print(run_quality_bench(folder, work, plan, _bench_out(out, "quality"), jobs, train))


@bench_app.command("pacs")
def bench_pacs(
    url: Annotated[
        str | None, typer.Option(help="A running gateway (default: serve --repository).")
    ] = None,
    repository: Annotated[
        Path | None, typer.Option(help="Model repository to serve (version 1) when no --url.")
    ] = None,
    rounds: Annotated[int, typer.Option(help="Interleaved receive-rate rounds.")] = 5,
    e2e_rounds: Annotated[int, typer.Option(help="Interleaved end-to-end rounds.")] = 3,
    stable_s: Annotated[float, typer.Option(help="The node's stable wait (s).")] = 2.0,
    series: Annotated[
        str, typer.Option(help="auto (the real P001 when present), real or fixture.")
    ] = "auto",
    slices: Annotated[int, typer.Option(help="Slices of a fixture series.")] = 24,
    out: ResultFolder = None,
) -> None:
    """The DICOM node: receive rate vs Orthanc, end to end vs the gateway's study path."""
    from bench.pacs import run_pacs_bench, served_gateway
    from bench.pacsreport import pacs_section

    if url is None and repository is None:
        fail("give --url (a running gateway) or --repository (a model repository to serve)")
    with served_gateway(url, repository) as gateway:
        result = run_pacs_bench(
            _bench_out(out, "pacs"), gateway, rounds, e2e_rounds, stable_s, series, slices
        )
    print(pacs_section(result))


@bench_app.command("all")
def bench_all(
    work: Annotated[Path, typer.Option(help="Data, run and repository for the benchmarks.")] = Path(
        "runs/bench"
    ),
    run: Annotated[
        Path | None,
        typer.Option(
            help="Use this run (default: train the DenseNet201 run of bench/all.py once)."
        ),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(help="Comma-separated subset of the benchmarks (default: every one)."),
    ] = None,
    output: Annotated[Path, typer.Option(help="Markdown file to write.")] = Path("BENCHMARKS.md"),
) -> None:
    """Every benchmark (preparing the model they need), then BENCHMARKS.md: `make bench`."""
    from bench.all import STEPS, run_all
    from bench.sweep import RESULTS

    chosen = STEPS if only is None else tuple(s.strip() for s in only.split(",") if s.strip())
    run_all(work, run, RESULTS, chosen, output)


@bench_app.command("report")
def bench_report(
    results: Annotated[Path | None, typer.Option(help="Result folders.")] = None,
    output: Annotated[Path, typer.Option(help="Markdown file to write.")] = Path("BENCHMARKS.md"),
) -> None:
    """Write BENCHMARKS.md from the result folders (targets table computed from them)."""
    from bench.report import write_report
    from bench.sweep import RESULTS

    root = results or RESULTS
    if not root.is_dir():
        fail(f"{root} does not exist: run a `covidct bench ...` command first")
    write_report(root, output)
    err.print(f"wrote {output}")
