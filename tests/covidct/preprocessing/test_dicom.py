"""DICOM decoding: HU from the rescale tags, the COVIDx-CT window, and typed refusals of
anything that is not one greyscale CT slice."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from covidct import preprocessing as pp
from covidct.preprocessing import (
    ColourImageError,
    ImageTooSmallError,
    Limits,
    MultiFrameError,
    NoPixelDataError,
    NotCTError,
    decode,
    preprocess_bytes,
)


def _dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_every_dicom_with_a_png_decodes_to_that_png(real_data: Path) -> None:
    rows = list(csv.DictReader((real_data / "dicom" / "MANIFEST.csv").open()))
    matched = [r for r in rows if r["matching_covidxct_png"]]
    assert len(matched) >= 2  # among the real slices the tests use (tests/conftest.py)
    for row in matched:
        dicom = decode((real_data / "dicom" / row["file"]).read_bytes())
        ref = np.asarray(
            Image.open(real_data / "covidxct-real" / "images" / row["matching_covidxct_png"])
        )
        assert dicom.source == "dicom"
        assert dicom.pixels.shape == ref.shape
        close = np.abs(dicom.pixels.astype(int) - ref.astype(int)) <= 1
        assert close.mean() >= 0.99, row["file"]


def test_dicom_and_png_give_the_same_model_input(fixtures: Path) -> None:
    dcm = (fixtures / "dicom" / "normal002__IM0042.dcm").read_bytes()
    png = (fixtures / "covidxct-real" / "images" / "COVIDCTMD-normal002-IM0042.png").read_bytes()
    a, b = preprocess_bytes(dcm, 224), preprocess_bytes(png, 224)
    assert a.box == b.box
    assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_window_applies_slope_and_intercept() -> None:
    raw = np.array([0, 1024 - 1350, 1024 - 600, 1024 + 150, 3000], dtype=np.float32)
    hu = raw * 1.0 - 1024.0
    grey = pp.window_to_uint8(hu)
    # -1024 HU (air) -> 55; -1350 and below -> 0; centre -> 127; 150 and above -> 255
    assert grey.tolist() == [55, 0, 127, 255, 255]
    assert pp.hu_to_grey_level(-600) == 127


def test_dicom_rescale_is_used(fixtures: Path) -> None:
    ds = pydicom.dcmread(fixtures / "dicom" / "cap001__98C1066-ASAD_137_uncompressed.dcm")
    base = decode(_dicom_bytes(ds)).pixels
    ds.RescaleIntercept = float(ds.RescaleIntercept) + 300  # brighter by 300 HU
    brighter = decode(_dicom_bytes(ds)).pixels
    assert brighter.mean() > base.mean() + 20


# ----------------------------------------------------------------- refusals


def test_angiography_is_rejected(fixtures: Path) -> None:
    with pytest.raises(NotCTError) as info:
        decode((fixtures / "dicom" / "0002.dcm").read_bytes())
    assert "Modality is XA" in str(info.value) and "96 frames" in str(info.value)


def test_rgb_dicom_is_rejected(fixtures: Path) -> None:
    with pytest.raises(NotCTError) as info:
        decode((fixtures / "dicom" / "c_dicom.dcm").read_bytes())
    assert "Modality tag is missing" in str(info.value)
    assert "colour image (RGB" in str(info.value)


def test_small_ct_dicom_decodes(fixtures: Path) -> None:
    out = decode((fixtures / "dicom" / "CT_small.dcm").read_bytes())
    assert out.pixels.shape == (128, 128) and out.source == "dicom"
    with pytest.raises(ImageTooSmallError, match="at least 256"):
        decode((fixtures / "dicom" / "CT_small.dcm").read_bytes(), Limits(min_side=256))


@pytest.fixture
def ct_dataset(fixtures: Path) -> pydicom.Dataset:
    return pydicom.dcmread(fixtures / "dicom" / "CT_small.dcm")


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda ds: setattr(ds, "Modality", "MR"), NotCTError, "Modality is MR"),
        (lambda ds: delattr(ds, "PixelData"), NoPixelDataError, "no pixel data"),
        (lambda ds: setattr(ds, "NumberOfFrames", 2), MultiFrameError, "2 frames"),
        (lambda ds: setattr(ds, "SamplesPerPixel", 3), ColourImageError, "colour"),
        (
            lambda ds: setattr(ds, "PhotometricInterpretation", "YBR_FULL"),
            ColourImageError,
            "YBR_FULL",
        ),
    ],
)
def test_unusable_dicoms_get_typed_errors(ct_dataset, edit, error, message) -> None:
    edit(ct_dataset)
    with pytest.raises(error, match=message):
        decode(_dicom_bytes(ct_dataset))
