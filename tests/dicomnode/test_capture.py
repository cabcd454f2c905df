"""The heatmap Secondary Captures: one per suspicious slice, banner burned in, checked by
dciodvfy (the real binary) and read back with pydicom."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from dicomnode.capture import build_captures, burn_banner
from dicomnode.report import ReportError
from dicomnode.uids import ResultUids, device_uid
from dicomnode.verdict import SeriesVerdict
from tests.dicomnode.results_data import (
    MODEL,
    dciodvfy,
    dciodvfy_errors,
    heatmap_png,
    made_up_verdict,
    read_headers,
)
from tests.dicomnode.series_data import ct_series

WHEN = dt.datetime(2026, 12, 4, 10, 30, 0)
K = 3


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return read_headers(ct_series(tmp_path_factory.mktemp("series")))


@pytest.fixture(scope="module")
def verdict(headers: list[Dataset]) -> SeriesVerdict:
    return made_up_verdict(headers, k=K)


@pytest.fixture(scope="module")
def files(
    headers: list[Dataset], verdict: SeriesVerdict, tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    folder = tmp_path_factory.mktemp("sc")
    paths = []
    for i, sc in enumerate(build_captures(headers, verdict, created=WHEN), start=1):
        paths.append(folder / f"sc{i}.dcm")
        sc.save_as(paths[-1], enforce_file_format=True)
    return paths


def _heatmap(verdict: SeriesVerdict, rank: int) -> np.ndarray:
    png = verdict.slices[verdict.suspicious[rank - 1]].heatmap_png
    assert png is not None
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_dciodvfy_finds_no_error(files: list[Path]) -> None:
    assert len(files) == K
    for path in files:
        lines = dciodvfy(path)
        assert lines, "dciodvfy said nothing"
        assert [line for line in lines if line.startswith("Error")] == [], path.name


def test_one_capture_per_suspicious_slice_in_the_source_study(
    files: list[Path], headers: list[Dataset], verdict: SeriesVerdict
) -> None:
    uids = ResultUids(str(headers[0].SeriesInstanceUID), MODEL.version)
    for rank, path in enumerate(files, start=1):
        ds = pydicom.dcmread(path)
        source = verdict.slices[verdict.suspicious[rank - 1]]
        assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert ds.StudyInstanceUID == headers[0].StudyInstanceUID
        assert ds.PatientID == headers[0].PatientID
        assert ds.get("StudyDescription") == headers[0].get("StudyDescription")
        assert ds.SeriesInstanceUID == uids.sc_series
        assert ds.SOPInstanceUID == uids.sc_instance(rank)
        assert (ds.InstanceNumber, ds.SeriesNumber) == (rank, 9902)
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.sop_instance_uid
        assert ds.BurnedInAnnotation == "YES"
        assert ds.SeriesDescription.startswith("NOT FOR DIAGNOSTIC USE")
        assert "synthetic" in ds.SeriesDescription
        assert ds.ImageComments.startswith("NOT FOR DIAGNOSTIC USE")
        ours = [e for e in ds.ContributingEquipmentSequence if "DeviceUID" in e]
        assert ours[0].DeviceUID == device_uid(MODEL.spec_fingerprint)
        assert ours[0].SoftwareVersions == MODEL.version


def test_the_pixels_are_the_heatmap_under_a_banner(
    files: list[Path], headers: list[Dataset], verdict: SeriesVerdict
) -> None:
    ds = pydicom.dcmread(files[0])
    pixels = ds.pixel_array
    heat = _heatmap(verdict, 1)
    assert pixels.shape == heat.shape == (ds.Rows, ds.Columns, 3)
    assert ds.PhotometricInterpretation == "RGB"
    assert [float(v) for v in ds.PixelSpacing] == [float(v) for v in headers[0].PixelSpacing]
    band = ds.Rows // 12
    top = pixels[:band]
    yellow = (top[..., 0] > 200) & (top[..., 1] > 180) & (top[..., 2] < 80)
    assert yellow.sum() > 200, "no banner text in the top rows"
    assert (top.max(axis=-1) == 0).mean() > 0.5, "the banner is not black"
    # between the banners the overlay is untouched
    middle = slice(band + 1, ds.Rows - band)
    assert np.array_equal(pixels[middle], heat[middle])


def test_building_twice_gives_the_same_pixels_and_uids(
    headers: list[Dataset], verdict: SeriesVerdict
) -> None:
    first = build_captures(headers, verdict, created=WHEN)
    again = build_captures(headers, verdict, created=WHEN + dt.timedelta(hours=1))
    assert [c.SOPInstanceUID for c in first] == [c.SOPInstanceUID for c in again]
    assert all(a.PixelData == b.PixelData for a, b in zip(first, again, strict=True))
    assert len({c.SOPInstanceUID for c in first}) == K


def test_no_body_part_still_passes_dciodvfy(headers: list[Dataset], tmp_path: Path) -> None:
    bare = []
    for ds in headers[:8]:
        copy = pydicom.dcmread(io.BytesIO(_encode(ds)), stop_before_pixels=True)
        del copy.BodyPartExamined
        del copy.ImageOrientationPatient
        bare.append(copy)
    [sc] = build_captures(bare, made_up_verdict(bare, k=1))
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    assert list(pydicom.dcmread(path).PatientOrientation) == ["L", "P"]


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_suspicious_slice_without_heatmap_is_refused(
    headers: list[Dataset], verdict: SeriesVerdict
) -> None:
    index = verdict.suspicious[0]
    slices = list(verdict.slices)
    slices[index] = dataclasses.replace(slices[index], heatmap_png=None)
    with pytest.raises(ReportError, match="no heatmap"):
        build_captures(headers, dataclasses.replace(verdict, slices=tuple(slices)))
    slices[index] = dataclasses.replace(slices[index], heatmap_png=b"not a png")
    with pytest.raises(ReportError, match="not a readable image"):
        build_captures(headers, dataclasses.replace(verdict, slices=tuple(slices)))


def test_no_suspicious_slice_gives_no_capture(
    headers: list[Dataset], verdict: SeriesVerdict
) -> None:
    assert build_captures(headers, dataclasses.replace(verdict, suspicious=())) == []


@pytest.mark.parametrize("size", [(64, 64), (512, 512), (300, 700)])
def test_the_banner_fits_any_size(size: tuple[int, int]) -> None:
    rgb = np.full((*size, 3), 128, dtype=np.uint8)
    out = burn_banner(rgb, "NOT FOR DIAGNOSTIC USE", "model v1: COVID-19 0.91 | synthetic")
    assert out.shape == rgb.shape
    assert (out[0] == 0).all()  # the top row is banner
    assert not np.array_equal(out, rgb)


def test_a_heatmap_in_another_grid_carries_no_pixel_spacing(
    headers: list[Dataset], verdict: SeriesVerdict, tmp_path: Path
) -> None:
    index = verdict.suspicious[0]
    slices = list(verdict.slices)
    slices[index] = dataclasses.replace(slices[index], heatmap_png=heatmap_png(200, 256, 1))
    small = dataclasses.replace(verdict, slices=tuple(slices), suspicious=(index,))
    [sc] = build_captures(headers, small)
    assert (sc.Rows, sc.Columns) == (200, 256)
    assert "PixelSpacing" not in sc
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
