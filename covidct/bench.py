"""``covidct bench data`` and ``covidct bench train``: preprocessing, synthesis, cache-build
and training-step speed, side by side (serving benchmarks live in the ``bench`` package).

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
