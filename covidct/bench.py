"""``covidct bench data``: preprocessing, synthesis and cache-build speed, side by side.

All figures come from one run on the machine at hand. Single-process figures are per core;
each is the median over several rounds, since these machines are noisy.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from covidct.preprocessing import preprocess_bytes

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 5


def real_data_dir() -> Path:
    """Real CT data: $COVIDCT_REAL_DATA, else ../shared/data beside the checkout, else fixtures."""
    env = os.environ.get("COVIDCT_REAL_DATA")
    for candidate in (
        Path(env) if env else None,
        REPO.parent / "shared" / "data",
        REPO / "tests" / "fixtures",
    ):
        if candidate is not None and (candidate / "dicom").is_dir():
            return candidate
    raise FileNotFoundError("no real CT data found (set COVIDCT_REAL_DATA)")


def real_pngs(root: Path) -> list[Path]:
    """The real 512x512 slices under a data root: all 123, or the fixtures' five."""
    return sorted((root / "covidxct-real" / "images").glob("*.png")) or sorted(
        (root / "covidxct-mini" / "images").glob("*.png")
    )


def _rate(items: int, fn: Callable[[], object], rounds: int = ROUNDS) -> tuple[float, float, float]:
    """Median, min and max items/s over ``rounds`` calls of ``fn`` (each handles ``items``)."""
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def _row(name: str, rate: tuple[float, float, float], note: str = "") -> str:
    med, lo, hi = rate
    return f"| {name} | {med:,.1f} | {lo:,.1f} to {hi:,.1f} | {note} |"


def run_data_bench(
    png_slices: int = 200, synth_slices: int = 200, cache_slices: int = 1000, size: int = 224
) -> str:
    """Run the data benchmarks and return a Markdown section for BENCHMARKS.md."""
    from training.cache import prepare_cache
    from training.synth import plan_patients, write_patient

    root = real_data_dir()
    pngs = real_pngs(root)
    png_bytes = [p.read_bytes() for p in pngs]
    png_batch = [png_bytes[i % len(png_bytes)] for i in range(png_slices)]
    dicoms = {
        "DICOM JPEG-Lossless 512²": [
            p.read_bytes()
            for p in sorted((root / "dicom").glob("*.dcm"))
            if p.name.count("__") and "uncompressed" not in p.name
        ],
        "DICOM uncompressed 512²": [
            p.read_bytes() for p in sorted((root / "dicom").glob("*uncompressed.dcm"))
        ],
    }
    rows = [
        _row(
            "PNG 512² → auto body box → S² (serving path)",
            _rate(len(png_batch), lambda: [preprocess_bytes(b, size) for b in png_batch]),
        ),
        _row(
            "PNG 512² → label box → S² (cache path)",
            _rate(
                len(png_batch),
                lambda: [preprocess_bytes(b, size, box=(0, 100, 512, 420)) for b in png_batch],
            ),
        ),
    ]
    for name, blobs in dicoms.items():
        if blobs:
            batch = [blobs[i % len(blobs)] for i in range(max(png_slices // 2, 1))]
            rows.append(
                _row(
                    f"{name} → auto body box → S²",
                    _rate(len(batch), functools.partial(_preprocess_all, batch, size)),
                )
            )

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "synth"
        (out / "images").mkdir(parents=True)
        per_patient = 10
        patients = plan_patients(max(synth_slices // per_patient, 1), seed=0)
        n = len(patients) * per_patient
        synth = _rate(
            n, lambda: [write_patient(p, out, per_patient, 512) for p in patients], rounds=3
        )
        rows.append(
            _row(
                "synthetic CT 512², render + PNG write",
                synth,
                f"1,000 slices in {1000 / synth[0]:.0f} s on one core",
            )
        )
        # The cache is built from real slices: the 123 PNGs repeated under new names.
        data = _real_folder(Path(tmp) / "data", pngs, cache_slices)
        for workers in (1, 2):
            cache = Path(tmp) / f"cache{workers}"
            build = _rate(
                cache_slices,
                functools.partial(_fresh_cache, prepare_cache, data, cache, size, workers),
                rounds=3,
            )
            rows.append(
                _row(
                    f"cache build from real PNGs, {workers} worker(s), S={size}",
                    build,
                    f"{build[0] / workers:,.1f} slices/s per core; 425,000 slices in "
                    f"{425_000 / build[0] / 60:,.0f} min",
                )
            )

    header = [
        f"## covidct bench data (S={size})",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {png_slices} real 512² PNG slices "
        f"({len(pngs)} distinct) from {root}, "
        f"median of {ROUNDS} rounds (synthesis and cache: 3); cache: {cache_slices} slices.",
        "",
        "| what | slices/s (median) | range | note |",
        "|---|---:|---:|---|",
    ]
    return "\n".join(header + rows) + "\n"


def _fresh_cache(
    prepare: Callable[..., object], data: Path, cache: Path, size: int, workers: int
) -> None:
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    prepare(data, cache, size, workers=workers, shard_size=50)


def _real_folder(out: Path, pngs: list[Path], count: int) -> Path:
    """A COVIDx-CT folder of ``count`` slices: real PNGs linked under new names."""
    (out / "images").mkdir(parents=True)
    lines = []
    for i in range(count):
        src = pngs[i % len(pngs)]
        name = f"BENCH_{i // 50}_0_{i:05d}.png"
        (out / "images" / name).symlink_to(src.resolve())
        lines.append(f"{name} {i % 3} 0 100 512 420\n")
    (out / "train_COVIDx-CT.txt").write_text("".join(lines))
    return out


def _preprocess_all(blobs: list[bytes], size: int) -> None:
    for blob in blobs:
        preprocess_bytes(blob, size)


def run_train_bench(
    backbone: str = "densenet201", size: int = 224, batch_size: int = 8, steps: int = 6
) -> str:
    """Input pipeline vs training step, side by side in one process.

    The pipeline (cache gather + augmentation, as in training) is timed alone over many
    batches; the step is ``train_on_batch`` on the same batches after a first, separately
    timed call that builds the graph. Peak memory is the process's maximum resident size.
    """
    import resource

    import keras

    from covidct.config import ModelSpec, TrainConfig
    from training.cache import PreparedCache, prepare_cache
    from training.data import SlicePool, make_dataset
    from training.model import build_classifier, set_trainable
    from training.synth import synthesize

    cfg = TrainConfig(backbone=backbone, image_size=size, batch_size=batch_size, weights="none")
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        synthesize(data, 12, 10, seed=0, workers=os.cpu_count() or 1)
        prepare_cache(data, cache, size, workers=os.cpu_count() or 1)
        pool = SlicePool.open(PreparedCache(cache))
        train_idx = pool.splits()["train"]
        ds, _ = make_dataset(pool, train_idx, cfg, training=True)
        ds = ds.repeat()
        it = iter(ds)
        next(it)  # warm the pipeline
        n_batches = 60
        rates = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for _ in range(n_batches):
                next(it)
            rates.append(n_batches * batch_size / (time.perf_counter() - start))
        pipeline = (statistics.median(rates), min(rates), max(rates))

        keras.utils.set_random_seed(0)
        clf = build_classifier(ModelSpec(image_size=size, backbone=backbone), weights=None)
        step_rows = []
        for label, unfreeze in (
            ("fine-tune: last 30 backbone layers", 30),
            ("whole backbone (--unfreeze -1)", -1),
        ):
            set_trainable(clf, unfreeze)
            clf.train_model.compile(
                optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy"
            )
            x, y = next(it)
            start = time.perf_counter()
            clf.train_model.train_on_batch(x, y)
            build_s = time.perf_counter() - start
            step_rates = []
            for _ in range(steps):
                x, y = next(it)
                start = time.perf_counter()
                clf.train_model.train_on_batch(x, y)
                step_rates.append(batch_size / (time.perf_counter() - start))
            step = (statistics.median(step_rates), min(step_rates), max(step_rates))
            step_rows.append(
                _row(
                    f"training step, {label}",
                    step,
                    f"first step (graph build) {build_s:.1f} s; pipeline is "
                    f"{pipeline[0] / step[0]:,.0f}x faster",
                )
            )
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return "\n".join(
        [
            f"## covidct bench train ({backbone}, S={size}, batch {batch_size})",
            "",
            f"{platform.machine()}, {os.cpu_count()} cores; pipeline: cache gather + augmentation, "
            f"{n_batches} batches x {ROUNDS} rounds; steps: `train_on_batch`, median of {steps} "
            "after the graph-building first one.",
            "",
            "| what | images/s (median) | range | note |",
            "|---|---:|---:|---|",
            _row("input pipeline from the prepared cache", pipeline, "gather + augment, uint8"),
            *step_rows,
            "",
            f"Peak resident memory of the whole run: {peak_gib:.1f} GiB.",
            "",
        ]
    )


def run_serving_bench(
    run: Path,
    calibration_data: Path,
    concurrency: tuple[int, ...] = (1, 2, 4, 8),
    requests: int = 48,
) -> str:
    """Export ``run`` (fp32 and INT8, cpu target), then compare single-image throughput of
    in-process ONNX Runtime with the Triton-served model at each concurrency, in one run."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as grpcclient

    from covidct.config import ModelSpec
    from export.onnx import ExportError, onnx_session, parity_images
    from export.pipeline import export_run
    from export.repository import ServingConfig
    from export.server import TritonServer, free_port

    spec = ModelSpec.load(run / "model_spec.json")
    images = parity_images(spec, limit=16)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        serving = ServingConfig(target="cpu", max_batch_size=8)
        manifests = {"fp32": export_run(run, repo, serving)}
        notes.append(f"export (tf2onnx + parity) {manifests['fp32']['export_seconds']} s")
        try:
            manifests["int8"] = export_run(
                run, repo, serving, int8=True, calibration_data=calibration_data
            )
            figures = manifests["int8"]["int8"]
            notes.append(
                f"INT8 export {manifests['int8']['export_seconds']} s; top-1 agreement "
                f"{100 * figures['top1_agreement']:.1f}% on {figures['slices']} real slices; "
                f"batch-8 in-process {figures['fp32_images_per_s']} (fp32) vs "
                f"{figures['int8_images_per_s']} (INT8) img/s"
            )
        except ExportError as e:
            notes.append(f"INT8 refused by the export's own check: {e}")
        with TritonServer(
            repo, free_port(), free_port(), free_port(), log_file=Path(tmp) / "triton.log"
        ) as server:
            clients = [
                grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
                for _ in range(max(concurrency))
            ]
            for precision, manifest in manifests.items():
                version = str(manifest["version"])
                session = onnx_session(repo / spec.name / version / "model.onnx")

                def local(i: int, session: object = session) -> None:
                    session.run(None, {spec.input_name: images[i % len(images)][None]})  # type: ignore[attr-defined]

                def remote(i: int, version: str = version) -> None:
                    x = images[i % len(images)][None]
                    inp = grpcclient.InferInput(spec.input_name, list(x.shape), "UINT8")
                    inp.set_data_from_numpy(x)
                    clients[i % len(clients)].infer(spec.name, [inp], model_version=version)

                for fn in (local, remote):
                    fn(0)  # warm
                for c in concurrency:
                    rates = {}
                    for name, fn in (("ort", local), ("triton", remote)):
                        start = time.perf_counter()
                        with ThreadPoolExecutor(max_workers=c) as pool:
                            list(pool.map(fn, range(requests)))
                        rates[name] = requests / (time.perf_counter() - start)
                    rows.append(
                        f"| {precision} | {c} | {rates['ort']:.1f} | "
                        f"{rates['triton']:.1f} | {rates['triton'] / rates['ort']:.2f} |"
                    )
            stats = server.statistics(spec.name)["model_stats"]
            batched = {
                s["version"]: (int(s["inference_count"]), int(s["execution_count"])) for s in stats
            }
    notes.append(
        "Triton inferences/executions by version: "
        + ", ".join(f"v{v}: {i}/{e}" for v, (i, e) in sorted(batched.items()))
    )
    return "\n".join(
        [
            f"## covidct bench serving ({spec.backbone}, S={spec.image_size})",
            "",
            f"{platform.machine()}, {os.cpu_count()} cores; single-image requests, {requests} per "
            "cell; in-process ONNX Runtime (one shared session, default threads) vs the same "
            "ONNX model served by tritonserver (Python backend, dynamic batching, max batch 8) "
            "over gRPC on 127.0.0.1, client and server on the same cores.",
            "",
            "| precision | concurrency | ONNX Runtime img/s | Triton img/s | Triton / ORT |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            *[f"- {n}" for n in notes],
            "",
        ]
    )


def run_overhead_bench(
    url: str, triton_url: str, concurrency: tuple[int, ...] = (1, 8), requests: int = 64
) -> str:
    """Latency of the gateway (PNG upload -> answer) against a direct Triton gRPC call on the
    same preprocessed tensor, p50/p99 at each concurrency, measured side by side."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import numpy as np
    import tritonclient.grpc as grpcclient

    from covidct.config import ModelSpec

    with httpx.Client(base_url=url, timeout=60) as probe:
        spec = ModelSpec.from_dict(probe.get("/v1/models").json()["model_spec"])
    pngs = real_pngs(real_data_dir())[:16]
    blobs = [p.read_bytes() for p in pngs]
    tensors = [preprocess_bytes(b, spec.image_size).image[None] for b in blobs]
    clients = [grpcclient.InferenceServerClient(triton_url) for _ in range(max(concurrency))]
    http = [httpx.Client(base_url=url, timeout=60) for _ in range(max(concurrency))]

    def direct(i: int) -> float:
        x = tensors[i % len(tensors)]
        inp = grpcclient.InferInput(spec.input_name, list(x.shape), "UINT8")
        inp.set_data_from_numpy(x)
        start = time.perf_counter()
        clients[i % len(clients)].infer(spec.name, [inp])
        return time.perf_counter() - start

    def gateway(i: int) -> float:
        start = time.perf_counter()
        r = http[i % len(http)].post("/v1/predict", files={"file": ("s.png", blobs[i % 16])})
        r.raise_for_status()
        return time.perf_counter() - start

    rows = []
    for c in concurrency:
        lat = {}
        for name, fn in (("direct", direct), ("gateway", gateway)):
            fn(0)
            with ThreadPoolExecutor(max_workers=c) as pool:
                lat[name] = np.array(list(pool.map(fn, range(requests)))) * 1000
        d50, d99 = np.percentile(lat["direct"], [50, 99])
        g50, g99 = np.percentile(lat["gateway"], [50, 99])
        rows.append(
            f"| {c} | {d50:.1f} | {d99:.1f} | {g50:.1f} | {g99:.1f} | "
            f"{g50 - d50:+.1f} | {g99 - d99:+.1f} |"
        )
    for h in http:
        h.close()
    return "\n".join(
        [
            f"## covidct bench overhead ({spec.backbone}, S={spec.image_size})",
            "",
            f"{platform.machine()}, {os.cpu_count()} cores; {requests} requests per cell; direct: "
            "Triton gRPC with the preprocessed uint8 tensor; gateway: the 512² PNG uploaded to "
            "/v1/predict (decode, body box, resize, gRPC, JSON). Client, gateway and Triton share "
            "the cores.",
            "",
            "| concurrency | direct p50 ms | direct p99 ms | gateway p50 ms | gateway p99 ms | "
            "overhead p50 | overhead p99 |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
