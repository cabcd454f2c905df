"""Real CT data for benchmarks and tests: all 123 shared slices and 11 DICOMs when the checkout
sits beside ``shared/data`` (or ``$COVIDCT_REAL_DATA`` names a copy), else the test fixtures'
five slices and five DICOMs, laid out the same way (``covidxct-real/``, ``dicom/MANIFEST.csv``).

Exports and redeploys never read this: they use the slices packaged in ``covidct.samples``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bench.sweep import BenchError
from covidct.config import ModelSpec

REPO = Path(__file__).resolve().parent.parent


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
    raise BenchError(
        "no real CT data found: set COVIDCT_REAL_DATA to a folder with covidxct-real/ and dicom/"
    )


def real_pngs(root: Path) -> list[Path]:
    """The real 512x512 slices under a data root: all 123, or the fixtures' five."""
    return sorted((root / "covidxct-real" / "images").glob("*.png"))


def real_images(spec: ModelSpec, limit: int) -> np.ndarray:
    """Up to ``limit`` real slices, evenly spaced over all of them, preprocessed for ``spec``."""
    from export.onnx import slice_images

    pngs = real_pngs(real_data_dir())
    return slice_images(pngs[:: max(1, len(pngs) // limit)][:limit], spec)
