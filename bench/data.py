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

from bench.corpus import real_data_dir, real_pngs
from covidct.config import DEFAULT_IMAGE_SIZE
from covidct.preprocessing import preprocess_bytes

ROUNDS = 5
#: Slices in a full COVIDx-CT set: what the cache-build note extrapolates to.
COVIDX_SLICES = 425_000


def _rate(items: int, fn: Callable[[], object], rounds: int = ROUNDS) -> tuple[float, float, float]:
    """Median, min and max items/s over ``rounds`` calls of ``fn`` (each handles ``items``)."""
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def row(name: str, rate: tuple[float, float, float], note: str = "") -> str:
    """One table row: median and range of a :func:`_rate`, and a note."""
    med, lo, hi = rate
    return f"| {name} | {med:,.1f} | {lo:,.1f} to {hi:,.1f} | {note} |"


def run_data_bench(
    png_slices: int = 200,
    synth_slices: int = 200,
    cache_slices: int = 1000,
    size: int = DEFAULT_IMAGE_SIZE,
) -> str:
    """Run the data benchmarks and return a Markdown section for BENCHMARKS.md."""
    root = real_data_dir()
    pngs = real_pngs(root)
    rows = preprocessing_rows(root, pngs, png_slices, size)
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(synthesis_row(Path(tmp) / "synth", synth_slices))
        rows += cache_rows(Path(tmp), pngs, cache_slices, size)
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


def preprocessing_rows(root: Path, pngs: list[Path], png_slices: int, size: int) -> list[str]:
    """Preprocessing speed of the real slices: PNG by the serving path (auto body box) and the
    cache path (label box), then each kind of real DICOM (half as many slices)."""
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
        row(
            "PNG 512² → auto body box → S² (serving path)",
            _rate(len(png_batch), lambda: [preprocess_bytes(b, size) for b in png_batch]),
        ),
        row(
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
                row(
                    f"{name} → auto body box → S²",
                    _rate(len(batch), functools.partial(_preprocess_all, batch, size)),
                )
            )
    return rows


def synthesis_row(out: Path, synth_slices: int) -> str:
    """Synthetic CT speed: patients of 10 slices rendered at 512² and written as PNG."""
    from training.synth import plan_patients, write_patient

    (out / "images").mkdir(parents=True)
    per_patient = 10
    patients = plan_patients(max(synth_slices // per_patient, 1), seed=0)
    n = len(patients) * per_patient
    synth = _rate(n, lambda: [write_patient(p, out, per_patient, 512) for p in patients], rounds=3)
    return row(
        "synthetic CT 512², render + PNG write",
        synth,
        f"1,000 slices in {1000 / synth[0]:.0f} s on one core",
    )


def cache_rows(tmp: Path, pngs: list[Path], cache_slices: int, size: int) -> list[str]:
    """Cache-build speed with 1 and 2 workers, from real slices (the corpus's PNGs repeated
    under new names), with the time a full-size COVIDx-CT cache would take at that speed."""
    from training.cache import prepare_cache

    data = _real_folder(tmp / "data", pngs, cache_slices)
    rows = []
    for workers in (1, 2):
        cache = tmp / f"cache{workers}"
        build = _rate(
            cache_slices,
            functools.partial(_fresh_cache, prepare_cache, data, cache, size, workers),
            rounds=3,
        )
        rows.append(
            row(
                f"cache build from real PNGs, {workers} worker(s), S={size}",
                build,
                f"{build[0] / workers:,.1f} slices/s per core; {COVIDX_SLICES:,} slices in "
                f"{COVIDX_SLICES / build[0] / 60:,.0f} min",
            )
        )
    return rows


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
