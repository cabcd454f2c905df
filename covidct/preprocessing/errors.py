"""What can be wrong with an input, and the bounds checked before any pixel is decoded.

Every error here derives from :class:`PreprocessingError` (a :class:`~covidct.errors.CovidctError`);
the gateway maps each subclass to an HTTP status (``gateway.errors.PREPROCESSING_MAP``), so a new
kind of bad input gets a subclass, never a bare exception.
"""

from __future__ import annotations

from dataclasses import dataclass

from covidct.errors import CovidctError


class PreprocessingError(CovidctError):
    """Base of every error raised while turning bytes into a model input."""


class EmptyInputError(PreprocessingError):
    """No bytes at all."""


class InputTooLargeError(PreprocessingError):
    """Too many bytes, or a header declaring too many pixels (decompression bomb)."""


class UnsupportedFormatError(PreprocessingError):
    """The bytes are not PNG, JPEG or DICOM."""


class CorruptImageError(PreprocessingError):
    """A known format whose content cannot be decoded (truncated, garbled)."""


class UnusableSliceError(PreprocessingError):
    """Decodes, but is not a usable axial CT slice."""


class NotCTError(UnusableSliceError):
    """A DICOM whose Modality is not CT (or is missing)."""


class MultiFrameError(UnusableSliceError):
    """A DICOM with more than one frame: send single slices."""


class ColourImageError(UnusableSliceError):
    """A DICOM with colour pixels (SamplesPerPixel > 1 or a colour photometric)."""


class NoPixelDataError(UnusableSliceError):
    """A DICOM without pixel data."""


class ImageTooSmallError(UnusableSliceError):
    """Fewer pixels per side than a CT slice can have."""


class InvalidBoxError(PreprocessingError):
    """A given crop box is empty or lies outside the image."""


@dataclass(frozen=True)
class Limits:
    """Bounds checked before any pixel is decoded.

    Attributes:
        max_bytes: largest accepted input.
        max_pixels: largest rows x columns accepted (a 4096^2 slice is far beyond CT).
        min_side: smallest accepted height or width.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    min_side: int = 64


DEFAULT_LIMITS = Limits()


def check_shape(rows: int, cols: int, limits: Limits) -> None:
    """Refuse a declared image size before decoding it: every decoder calls this on the header.

    Args:
        rows: declared height in pixels.
        cols: declared width in pixels.
        limits: the bounds to check against.

    Raises:
        InputTooLargeError: more pixels than ``limits.max_pixels`` (decompression bomb guard).
        ImageTooSmallError: a side shorter than ``limits.min_side``.
    """
    if rows * cols > limits.max_pixels:
        raise InputTooLargeError(
            f"image declares {cols}x{rows} = {rows * cols} pixels; the limit is "
            f"{limits.max_pixels} (decompression bomb guard)"
        )
    if min(rows, cols) < limits.min_side:
        raise ImageTooSmallError(
            f"image is {cols}x{rows}; a CT slice needs at least {limits.min_side} pixels a side"
        )
