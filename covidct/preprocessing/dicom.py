"""A single-frame greyscale CT DICOM to windowed grey uint8 (the COVIDx-CT recipe).

HU = raw x RescaleSlope + RescaleIntercept, then the lung window with truncation
(:func:`covidct.preprocessing.window.window_to_uint8`), exactly as the dataset's PNGs were made.
Anything that is not one greyscale CT slice is refused with an error naming every reason.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pydicom.errors

from covidct.preprocessing.errors import (
    ColourImageError,
    CorruptImageError,
    Limits,
    MultiFrameError,
    NoPixelDataError,
    NotCTError,
    PreprocessingError,
    UnsupportedFormatError,
    UnusableSliceError,
    check_shape,
)
from covidct.preprocessing.formats import has_dicom_preamble
from covidct.preprocessing.window import window_to_uint8


def decode_dicom(data: bytes, limits: Limits) -> np.ndarray:
    """Decode a DICOM (Part 10, or a stream without the preamble) to windowed grey uint8.

    Args:
        data: DICOM bytes.
        limits: input bounds, checked on Rows and Columns before the pixels are decoded.

    Returns:
        The windowed grey slice ``[H, W]``.

    Raises:
        PreprocessingError: a subclass naming what is wrong (corrupt, not CT, several frames,
            colour, no pixels, a transfer syntax without a decoder, outside ``limits``).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every oddity; we judge below
            ds = pydicom.dcmread(io.BytesIO(data), force=not has_dicom_preamble(data))
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, KeyError) as e:
        raise CorruptImageError("cannot parse DICOM: the file is corrupt or truncated") from e
    except Exception as e:  # pydicom raises assorted errors on garbled element headers
        raise CorruptImageError("cannot parse DICOM: garbled element headers") from e

    try:
        return _dicom_to_grey(ds, limits)
    except (PreprocessingError, MemoryError):
        raise
    except Exception as e:  # pydicom converts values lazily: a garbled one raises on access
        raise CorruptImageError("cannot read DICOM: garbled header values") from e


def _check_is_one_ct_slice(ds: pydicom.Dataset) -> None:
    """Raise the most specific :class:`UnusableSliceError`, listing every reason, unless
    ``ds`` is one greyscale CT slice with pixel data."""
    problems: list[tuple[type[UnusableSliceError], str]] = []
    if "PixelData" not in ds:
        problems.append((NoPixelDataError, "it has no pixel data"))
    modality = str(ds.get("Modality", "") or "")
    if modality != "CT":
        what = f"Modality is {modality}" if modality else "the Modality tag is missing"
        problems.append((NotCTError, f"{what}, only CT is accepted"))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        problems.append((MultiFrameError, f"it has {frames} frames; send one slice per file"))
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        problems.append(
            (ColourImageError, f"it is a colour image ({photometric}, {samples} samples/pixel)")
        )
    if problems:
        # Most specific first: no pixels > not CT > multi-frame > colour; list every reason.
        raise problems[0][0]("not a usable CT slice: " + "; ".join(m for _, m in problems))


def _dicom_to_grey(ds: pydicom.Dataset, limits: Limits) -> np.ndarray:
    """Check a parsed DICOM is one greyscale CT slice; its pixels in HU, windowed to uint8."""
    _check_is_one_ct_slice(ds)
    check_shape(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = ds.pixel_array
    except NotImplementedError as e:  # pydicom has no decoder for this transfer syntax
        syntax = str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "") or "none")[:64]
        raise UnsupportedFormatError(
            f"DICOM transfer syntax {syntax} cannot be decoded here; send it uncompressed, "
            "RLE, JPEG, JPEG Lossless or JPEG-LS"
        ) from e
    except Exception as e:  # missing decoder, truncated pixel data, bad transfer syntax
        raise CorruptImageError(
            "cannot decode DICOM pixel data: truncated, or a transfer syntax without a decoder"
        ) from e
    if raw.ndim != 2:
        raise UnusableSliceError(f"DICOM pixel array has shape {raw.shape}; expected 2-D")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    hu = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return window_to_uint8(hu)
