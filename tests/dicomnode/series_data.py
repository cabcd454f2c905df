"""A whole CT series as a scanner sends it, for the DICOM node's tests.

The real-data collection's ``dicom-series/P001`` (148 JPEG-Lossless slices of one COVID-19
patient) when it is beside the checkout (``bench.corpus.real_data_dir``); otherwise a series
made from the real JPEG-Lossless slice in tests/fixtures: the same pixels at ``slices``
positions 2 mm apart, numeric UIDs derived from a fixed seed, InstanceNumbers out of order
(as files arrive). Tests count what the series holds, not fixed numbers.
"""

from __future__ import annotations

from pathlib import Path

from bench.corpus import real_data_dir
from bench.pacs import fixture_series as bench_fixture_series


def real_series() -> Path | None:
    """``dicom-series/P001`` of the real-data collection, when it is there."""
    folder = real_data_dir() / "dicom-series" / "P001"
    return folder if folder.is_dir() and any(folder.glob("*.dcm")) else None


def fixture_series(dest: Path, slices: int = 24, seed: str = "covidct-test-series") -> Path:
    """``slices`` CT files of one series written into ``dest`` (``bench.pacs.fixture_series``,
    the one builder, with the tests' default seed); returns ``dest``."""
    return bench_fixture_series(dest, slices, seed)


def ct_series(tmp: Path, slices: int = 24) -> Path:
    """The real P001 series if present, else a fixture series of ``slices`` under ``tmp``."""
    return real_series() or fixture_series(tmp / "series", slices)
