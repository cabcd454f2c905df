"""``covidct bench all`` (``make bench``): every benchmark in one sitting, then the report.

Prepares what the benchmarks need when it is missing (synthetic CT data, a DenseNet201 run at
the default input size, its exports: ONNX Runtime fp32 and int8, OpenVINO fp32, bf16 and int8), then
runs each ``covidct bench`` command in its own process (fresh memory and threads each),
starting a tritonserver and a gateway for the gateway sweep, and finally writes
BENCHMARKS.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from bench.corpus import real_data_dir
from bench.sweep import RESULTS, BenchError
from covidct.config import DEFAULT_IMAGE_SIZE

log = logging.getLogger(__name__)

SYNTH = ("--patients", "24", "--slices-per-patient", "4", "--seed", "2")
#: DenseNet201 at the default input size from scratch, for enough steps that BatchNorm's
#: moving statistics settle and the model answers decisively (a near-constant model leaves
#: the bf16 and int8 gates nothing to judge).
TRAIN = (
    "--backbone",
    "densenet201",
    "--image-size",
    str(DEFAULT_IMAGE_SIZE),
    "--epochs",
    "20",
    "--weights",
    "none",
    "--batch-size",
    "4",
    "--patience",
    "20",
    "--zoom",
    "0",
    "--brightness",
    "0",
    "--contrast",
    "0",
)
STEPS = (
    "data",
    "train",
    "engines",
    "triton",
    "settings",
    "gateway",
    "gateway-1-thread",
    "capacity",
    "replicas",
    "pacs",
    "quality",
)


def covidct(*args: str | Path) -> None:
    """Run ``covidct ARGS`` in a fresh Python process, logging how long it took.

    Raises:
        BenchError: the command failed (its own output says why).
    """
    cmd = [sys.executable, "-m", "cli", *map(str, args)]
    log.info("running: covidct %s", " ".join(map(str, args)))
    started = time.perf_counter()
    if subprocess.run(cmd).returncode != 0:
        raise BenchError(f"`covidct {' '.join(map(str, args))}` failed (see above)")
    log.info("done in %.0f s", time.perf_counter() - started)


def prepare(work: Path, run: Path | None) -> tuple[Path, Path, Path]:
    """The run, its data folder, and a repository holding it once per served variant."""
    data = work / "data"
    if not (data / "train_COVIDx-CT.txt").is_file():
        covidct("data", "synth", "--out", data, *SYNTH)
    if run is None:  # named by the recipe: a changed recipe trains afresh
        recipe = hashlib.sha256(" ".join(TRAIN).encode()).hexdigest()[:8]
        run = work / f"run-densenet201-{DEFAULT_IMAGE_SIZE}-{recipe}"
        if not (run / "saved_model" / "saved_model.pb").is_file():
            resume = ["--resume"] if (run / "train_config.json").is_file() else []
            covidct("train", "--data", data, "--out", run, *TRAIN, *resume)
    repo = work / "models"
    marker = work / "models.json"
    variants = served_variants()
    wanted = {
        "run": str(run.resolve()),
        "variants": [" ".join(v) for v in variants],
        "agreement": "real slices",
        # a changed backend or engine rule is exported afresh
        "backends": _backends_digest(),
    }
    if not marker.is_file() or json.loads(marker.read_text()) != wanted:
        import shutil

        shutil.rmtree(repo, ignore_errors=True)
        kept = ("--versions-kept", str(len(variants)))
        # Reduced precisions are judged on the real slices (the gate: top-1 agreement >= 99%).
        real: list[str | Path] = ["--agreement-data", real_data_dir() / "covidxct-real"]
        for variant in variants:
            args: list[str | Path] = ["export", "--run", run, "--repository", repo, *variant, *kept]
            int8 = "--int8" in variant or "int8" in variant
            if int8:
                args += ["--calibration-data", data]
            if int8 or "bf16" in variant:
                args += real
            covidct(*args)
        marker.write_text(json.dumps(wanted))
    return run, data, repo


def _backends_digest() -> str:
    """What the served versions' behaviour hangs on besides the model: the backends' code and
    the openvino engine rule."""
    from export.openvino import STREAMS_FROM_BATCH

    backends = Path(__file__).resolve().parents[1] / "export" / "python_backend"
    digest = hashlib.sha256(json.dumps(STREAMS_FROM_BATCH, sort_keys=True).encode())
    for f in sorted(backends.glob("*.py")):
        digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


def served_variants() -> list[tuple[str, ...]]:
    """The versions ``bench triton`` serves side by side, in version order: ONNX Runtime fp32
    (v1, what the other benchmarks serve) and int8, OpenVINO fp32, bf16 (where the CPU has
    it) and int8."""
    from export.openvino import supports

    openvino = [p for p in ("fp32", "bf16", "int8") if supports(p)]
    return [
        ("--target", "cpu"),
        ("--target", "cpu", "--int8"),
        *(("--target", "openvino", "--precision", p) for p in openvino),
    ]


def gateway_step(repo: Path, out: Path, ort_threads: int | None = None, *extra: str) -> None:
    """The gateway sweep needs a server and a gateway: v1 (fp32) served, 1 worker.

    ``ort_threads`` limits the model's ONNX Runtime threads (COVIDCT_ORT_THREADS, read by
    the Python backend), which leaves the gateway a core of its own on a 2-core machine.
    """
    import tempfile

    from bench.capacity import running_gateway, running_triton

    model_env = {"COVIDCT_ORT_THREADS": str(ort_threads)} if ort_threads else {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_triton(repo, Path(tmp) / "triton.log", model_env) as server,
        running_gateway(server, 1, Path(tmp) / "gateway.log", {"COVIDCT_MODEL_VERSION": "1"}) as (
            url,
            _,
        ),
    ):
        covidct(
            "bench",
            "gateway",
            "--url",
            url,
            "--triton",
            server.grpc_address,
            "--out",
            out,
            *extra,
        )


def run_all(
    work: Path,
    run: Path | None = None,
    results: Path = RESULTS,
    only: tuple[str, ...] = STEPS,
    output: Path = Path("BENCHMARKS.md"),
) -> None:
    """Prepare, run the chosen benchmarks into ``results``, write the report."""
    unknown = set(only) - set(STEPS)
    if unknown:
        raise BenchError(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(STEPS)}")
    work.mkdir(parents=True, exist_ok=True)
    needs_model = bool(set(only) - {"data", "train", "capacity", "quality"})
    run, data, repo = prepare(work, run) if needs_model else (work, work, work)
    for step in STEPS:
        if step not in only:
            continue
        out = results / step
        if step in ("data", "train", "capacity"):
            covidct("bench", step, "--out", out)
        elif step == "quality":  # real CT, its own runs (reused when finished): hours
            covidct("bench", "quality", "--work", work / "quality", "--out", out)
        elif step == "engines":
            covidct("bench", "engines", "--run", run, "--calibration-data", data, "--out", out)
        elif step == "triton":
            served = ",".join(str(v + 1) for v in range(len(served_variants())))
            covidct("bench", "triton", "--repository", repo, "--versions", served, "--out", out)
        elif step == "settings":
            covidct("bench", "settings", "--repository", repo, "--version", "1", "--out", out)
        elif step == "replicas":
            covidct("bench", "replicas", "--repository", repo, "--version", "1", "--out", out)
        elif step == "gateway":
            gateway_step(repo, out)
        elif step == "pacs":  # serves v1 (fp32) with one gateway worker itself
            covidct("bench", "pacs", "--repository", repo, "--out", out)
        elif step == "gateway-1-thread":
            gateway_step(
                repo,
                out,
                1,
                "--concurrency",
                "1,4,8",
                "--label",
                "the model on one ONNX Runtime thread",
            )
    covidct("bench", "report", "--results", results, "--output", output)
