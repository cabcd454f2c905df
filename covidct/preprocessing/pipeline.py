"""The top-level path: bytes -> decode (by magic bytes) -> grey uint8 -> crop -> resize."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from covidct.config import WINDOW_CENTRE_HU, WINDOW_WIDTH_HU
from covidct.preprocessing.bodybox import Box, auto_body_box
from covidct.preprocessing.dicom import decode_dicom
from covidct.preprocessing.errors import (
    DEFAULT_LIMITS,
    InputTooLargeError,
    InvalidBoxError,
    Limits,
)
from covidct.preprocessing.formats import Source, sniff
from covidct.preprocessing.raster import decode_raster

#: One fixed interpolation for every resize (Pillow's bilinear filter, antialiased when
#: shrinking). Recorded in ModelSpec.interpolation.
RESAMPLE = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class DecodedSlice:
    """A decoded slice as grey uint8 ``[H, W]`` plus where it came from."""

    pixels: np.ndarray
    source: Source


@dataclass(frozen=True)
class Preprocessed:
    """The model input and how it was made.

    Attributes:
        image: uint8 ``[S, S, 1]``, what the model sees.
        box: the crop box used, COVIDx-CT convention, in the decoded image's coordinates.
        source: the detected format.
        original_shape: (height, width) of the decoded image.
        window: (centre, width) in HU of the CT window.
        decoded: the windowed grey slice ``[H, W]`` before cropping (for overlays).
    """

    image: np.ndarray
    box: Box
    source: Source
    original_shape: tuple[int, int]
    window: tuple[float, float] = (WINDOW_CENTRE_HU, WINDOW_WIDTH_HU)
    decoded: np.ndarray | None = None


def preprocess_bytes(
    data: bytes,
    size: int,
    box: Box | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Preprocessed:
    """Turn one encoded slice into the model input.

    Args:
        data: PNG, JPEG or DICOM bytes.
        size: S, the output is ``[S, S, 1]``.
        box: crop box (training: the label box); None selects :func:`auto_body_box`.
        limits: input bounds.

    Returns:
        The model input and the box, source and shape it came from.

    Raises:
        PreprocessingError: a subclass naming what is wrong with the input.
    """
    decoded = decode(data, limits)
    grey = decoded.pixels
    used = validate_box(box, grey.shape) if box is not None else auto_body_box(grey)
    return Preprocessed(
        image=crop_and_resize(grey, used, size),
        box=used,
        source=decoded.source,
        original_shape=(int(grey.shape[0]), int(grey.shape[1])),
        decoded=grey,
    )


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> DecodedSlice:
    """Decode PNG, JPEG or DICOM bytes into grey uint8 ``[H, W]`` after checking limits.

    Args:
        data: the encoded slice.
        limits: input bounds.

    Returns:
        The grey slice and its detected format.

    Raises:
        PreprocessingError: a subclass naming what is wrong with the input.
    """
    if len(data) > limits.max_bytes:
        raise InputTooLargeError(f"input is {len(data)} bytes; the limit is {limits.max_bytes}")
    source = sniff(data)
    pixels = decode_dicom(data, limits) if source == "dicom" else decode_raster(data, limits)
    return DecodedSlice(pixels=pixels, source=source)


def validate_box(box: Box, shape: tuple[int, ...]) -> Box:
    """Check a COVIDx-CT box against an image shape.

    Args:
        box: (xmin, ymin, xmax, ymax), exclusive max.
        shape: the image's ``(H, W, ...)``.

    Returns:
        The box as ints.

    Raises:
        InvalidBoxError: the box is empty or reaches outside the image.
    """
    h, w = shape[:2]
    xmin, ymin, xmax, ymax = (int(v) for v in box)
    if not (0 <= xmin < xmax <= w and 0 <= ymin < ymax <= h):
        raise InvalidBoxError(
            f"box {[xmin, ymin, xmax, ymax]} is empty or outside the {w}x{h} image "
            "(need 0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height)"
        )
    return (xmin, ymin, xmax, ymax)


def crop_and_resize(grey: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Crop ``grey`` to ``box`` and resize to ``[size, size, 1]`` uint8 (the fixed resample).

    Args:
        grey: uint8 ``[H, W]``.
        box: the crop, COVIDx-CT convention.
        size: S.

    Returns:
        uint8 ``[S, S, 1]``.

    Raises:
        InvalidBoxError: the box is empty or reaches outside the image.
    """
    xmin, ymin, xmax, ymax = validate_box(box, grey.shape)
    crop = Image.fromarray(np.ascontiguousarray(grey[ymin:ymax, xmin:xmax]))
    resized = crop.resize((size, size), RESAMPLE)
    return np.asarray(resized, dtype=np.uint8)[:, :, None]
