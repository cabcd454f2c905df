"""A whole CT series as a scanner sends it, for the DICOM node's tests.

The real-data collection's ``dicom-series/P001`` (148 JPEG-Lossless slices of one COVID-19
patient) when it is beside the checkout (``bench.corpus.real_data_dir``); otherwise a series
made from the real JPEG-Lossless slice in tests/fixtures: the same pixels at ``slices``
positions 2 mm apart, numeric UIDs derived from a fixed seed, InstanceNumbers out of order
(as files arrive). Tests count what the series holds, not fixed numbers.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from bench.corpus import real_data_dir

FIXTURE_SLICE = Path(__file__).parents[1] / "fixtures" / "dicom" / "normal002__IM0042.dcm"


def real_series() -> Path | None:
    """``dicom-series/P001`` of the real-data collection, when it is there."""
    folder = real_data_dir() / "dicom-series" / "P001"
    return folder if folder.is_dir() and any(folder.glob("*.dcm")) else None


def fixture_series(dest: Path, slices: int = 24, seed: str = "covidct-test-series") -> Path:
    """``slices`` CT files of one series written into ``dest`` (created); returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    study = generate_uid(entropy_srcs=[seed, "study"])
    series = generate_uid(entropy_srcs=[seed, "series"])
    for i in range(slices):
        ds = pydicom.dcmread(FIXTURE_SLICE)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, "instance", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        x, y, _ = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, -50.0 - 2.0 * i]
        ds.SliceLocation = -50.0 - 2.0 * i
        # written in an order unlike the series order: receivers must sort
        ds.save_as(dest / f"IM{(i * 7) % slices:04d}_{i}.dcm", enforce_file_format=True)
    return dest


def ct_series(tmp: Path, slices: int = 24) -> Path:
    """The real P001 series if present, else a fixture series of ``slices`` under ``tmp``."""
    return real_series() or fixture_series(tmp / "series", slices)
