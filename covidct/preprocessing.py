"""The one preprocessing: bytes -> grey uint8 -> body crop -> resize -> uint8 ``[S, S, 1]``.

Training (through the prepared cache), ``covidct preprocess`` and the gateway all call
:func:`preprocess_bytes`; nothing else may decode, window, crop or resize a slice, so the
served model sees exactly what the trained model saw. NumPy, Pillow, pydicom and ISA-L only:
this module must never import TensorFlow (a test enforces it).

Steps:
    1. decode by magic bytes (PNG, JPEG, DICOM), never by file name or declared type;
    2. grey uint8: DICOM gets HU = raw x RescaleSlope + RescaleIntercept and the COVIDx-CT
       lung window (centre -600, width 1500) with truncation, exactly as the dataset's PNGs
       were made; PNG/JPEG are taken as already windowed;
    3. crop to the body box: the label box in training, :func:`auto_body_box` at serving;
    4. resize the crop (stretching it) to S x S with one fixed interpolation.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import pydicom
import pydicom.errors
from isal import isal_zlib
from PIL import Image, UnidentifiedImageError

from covidct.config import WINDOW_CENTRE_HU, WINDOW_WIDTH_HU

try:  # the compiled kernels (covidct/_native.c); the Python references below otherwise
    from covidct import _native
except ImportError:  # pragma: no cover - a build without a C compiler
    _native = None  # type: ignore[assignment]

#: Whether the compiled kernels are in use (the gateway logs it; its image requires them).
NATIVE = _native is not None


@contextlib.contextmanager
def python_references() -> Iterator[None]:
    """Run the Python references instead of the compiled kernels for the length of a block
    (tests and ``covidct bench capacity`` compare the two; not for serving: process-wide)."""
    global _native
    kept = _native
    _native = None  # type: ignore[assignment]
    try:
        yield
    finally:
        _native = kept


Source = Literal["png", "jpeg", "dicom"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
#: A DICOM stream without the 128-byte preamble (some archives export these): it starts with a
#: little-endian tag of group 0002 (file meta) or 0008 (identifying), element 00xx.
DICOM_STREAM_STARTS = (b"\x02\x00", b"\x08\x00")

#: One fixed interpolation for every resize (Pillow's bilinear filter, antialiased when
#: shrinking). Recorded in ModelSpec.interpolation.
RESAMPLE = Image.Resampling.BILINEAR

#: Automatic body box: pixels brighter than this HU (after the window) are body or table;
#: the largest connected component after a 3x3 opening is the body. -350 HU lies between
#: aerated lung (about -850) and fat (about -100), and gave mean IoU 0.973 with the official
#: COVIDx-CT boxes on the 123 real slices in ../shared/data (tests/covidct/test_preprocessing.py).
BODY_THRESHOLD_HU = -350.0
BODY_OPENING = 3
BODY_MARGIN = 1


# --------------------------------------------------------------------------- errors


class PreprocessingError(Exception):
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


# --------------------------------------------------------------------------- types


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

Box = tuple[int, int, int, int]
"""(xmin, ymin, xmax, ymax) in image pixels, xmax/ymax exclusive (COVIDx-CT convention)."""


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


# --------------------------------------------------------------------------- pipeline


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


def sniff(data: bytes) -> Source:
    """Detect the format from magic bytes.

    Raises:
        EmptyInputError: no bytes.
        UnsupportedFormatError: not PNG, JPEG or DICOM (Part 10 with the 'DICM' preamble, or
            a DICOM stream that starts with its group 0002 or 0008 elements).
    """
    if not data:
        raise EmptyInputError("empty input: no bytes received")
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return "dicom"
    if data[:2] in DICOM_STREAM_STARTS and data[3:4] == b"\x00" and len(data) > 8:
        return "dicom"  # no preamble: parsed without it (pydicom's force)
    raise UnsupportedFormatError(
        f"unsupported format: {len(data)} bytes starting {data[:8].hex(' ')} are not PNG, "
        "JPEG or DICOM (Part 10 file with 'DICM' at byte 128)"
    )


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> DecodedSlice:
    """Decode PNG, JPEG or DICOM bytes into grey uint8 ``[H, W]`` after checking limits."""
    if len(data) > limits.max_bytes:
        raise InputTooLargeError(f"input is {len(data)} bytes; the limit is {limits.max_bytes}")
    source = sniff(data)
    pixels = _decode_dicom(data, limits) if source == "dicom" else _decode_raster(data, limits)
    return DecodedSlice(pixels=pixels, source=source)


def window_to_uint8(
    hu: np.ndarray, centre: float = WINDOW_CENTRE_HU, width: float = WINDOW_WIDTH_HU
) -> np.ndarray:
    """Apply a CT window to HU values: the COVIDx-CT recipe, truncating to uint8.

    ``uint8(255 * clip((HU - (centre - width / 2)) / width, 0, 1))``; truncation (not
    rounding) reproduces the dataset's PNGs exactly.
    """
    scaled = (hu.astype(np.float32) - np.float32(centre - width / 2)) / np.float32(width)
    return (np.float32(255.0) * np.clip(scaled, 0.0, 1.0)).astype(np.uint8)


def hu_to_grey_level(hu: float) -> int:
    """The uint8 grey level the COVIDx-CT window gives to one HU value."""
    return int(window_to_uint8(np.array([hu], dtype=np.float32))[0])


@cache
def _body_level() -> int:
    return hu_to_grey_level(BODY_THRESHOLD_HU)


def auto_body_box(grey: np.ndarray) -> Box:
    """Find the body in a windowed slice: threshold, 3x3 opening, largest component, margin.

    The patient table is usually a separate, thinner component and is dropped with the
    rest. An image with no bright region yields the whole image. Only the rectangle holding
    bright pixels is opened and labelled (outside it everything is background before and after
    the opening): a quarter less work on a typical slice, the same box. Components are
    4-connected and a tie goes to the one whose first pixel comes first in raster order, as
    with ``scipy.ndimage.label`` (tests compare the two).

    Args:
        grey: uint8 ``[H, W]`` windowed slice.

    Returns:
        The body box, COVIDx-CT convention (exclusive max), clipped to the image.
    """
    h, w = grey.shape
    body = (
        _native.largest_open_component(
            np.ascontiguousarray(grey, np.uint8), w, h, _body_level(), BODY_OPENING // 2
        )
        if _native is not None
        else open_component_box(grey)
    )
    if body is None:
        return (0, 0, w, h)
    m = BODY_MARGIN
    return (max(0, body[0] - m), max(0, body[1] - m), min(w, body[2] + m), min(h, body[3] + m))


def open_component_box(grey: np.ndarray) -> Box | None:
    """The Python reference of the compiled body box (``_native.largest_open_component``):
    the largest component of the opened bright mask, in image coordinates; None when no
    bright pixel survives the opening."""
    mask = grey > _body_level()
    bright_box = _extent(mask)
    if bright_box is None:
        return None
    left, top, right, bottom = bright_box
    body = largest_component_box(_open_square(mask[top:bottom, left:right], BODY_OPENING // 2))
    if body is None:
        return None
    return (left + body[0], top + body[1], left + body[2], top + body[3])


def largest_component_box(mask: np.ndarray) -> Box | None:
    """The box (exclusive max) of the largest 4-connected component of ``mask``; a tie goes to
    the component whose first pixel comes first in raster order. None when ``mask`` is empty.

    Labels runs, not pixels: a CT slice's 200,000 body pixels are about 1,200 horizontal runs.
    Two runs in adjacent rows touch when their columns overlap; those pairs are found by
    binary search (runs are in raster order); union-find over the runs (hook the larger root
    of each touching pair to the smaller, then jump pointers until every run points at a
    root: its component's first run) takes a few rounds. About 2x faster on a real slice than
    ``scipy.ndimage.label`` and a bincount over the pixels, and no SciPy in the gateway.
    """
    h, w = mask.shape
    stride = w + 1
    padded = np.zeros((h, w + 2), bool)
    padded[:, 1:-1] = mask
    flips = np.flatnonzero(padded[:, 1:] != padded[:, :-1])  # each run's start, then its end
    n = len(flips) // 2
    if n == 0:
        return None
    starts, ends = flips[0::2], flips[1::2]  # flat positions, rows of stride w + 1
    row, start = np.divmod(starts, stride)
    end = ends - row * stride
    # The runs of the next row overlapping run i are the range [lo[i], hi[i]).
    below = (row + 1) * stride
    hi = np.searchsorted(starts, below + end, "left")
    lo = np.searchsorted(ends, below + start, "right")
    counts = np.maximum(hi - lo, 0)
    upper = np.repeat(np.arange(n), counts)
    lower = np.repeat(lo + counts - np.cumsum(counts), counts) + np.arange(len(upper))
    parent = np.arange(n)
    while len(upper):
        a, b = parent[upper], parent[lower]
        apart = a != b
        if not apart.any():
            break
        a, b, upper, lower = a[apart], b[apart], upper[apart], lower[apart]
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))
        while not np.array_equal(grand := parent[parent], parent):
            parent = grand
    sizes = np.bincount(parent, weights=end - start, minlength=n)
    body = parent == int(sizes.argmax())  # the first of the largest: the raster-first
    return (
        int(start[body].min()),
        int(row[body].min()),
        int(end[body].max()),
        int(row[body].max()) + 1,
    )


def _extent(mask: np.ndarray) -> Box | None:
    """The smallest box ``(xmin, ymin, xmax, ymax)`` (exclusive max) holding every true pixel
    of ``mask``; None when it has none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _open_square(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary opening with a (2r+1)² square, outside the image counted as background.

    Equal to ``ndimage.binary_opening`` with that structure (a test pins it) but about 20x
    faster: the square is separable, so erosion and dilation are two 1-D passes each over
    shifted views of one padded array.
    """
    if r == 0:
        return mask
    h, w = mask.shape
    pad = np.zeros((h + 2 * r, w + 2 * r), bool)
    core = (slice(r, r + h), slice(r, r + w))
    pad[core] = mask
    for combine in (np.logical_and, np.logical_or):  # erosion, then dilation
        for axis in (1, 0):
            out = pad[core].copy()
            for k in range(-r, r + 1):
                if k:
                    shifted = (
                        pad[r : r + h, r + k : r + k + w]
                        if axis
                        else pad[r + k : r + k + h, r : r + w]
                    )
                    combine(out, shifted, out=out)
            pad[core] = out
    return pad[core]


def validate_box(box: Box, shape: tuple[int, ...]) -> Box:
    """Check a COVIDx-CT box against an image shape ``(H, W)``; return it as ints."""
    h, w = shape[:2]
    xmin, ymin, xmax, ymax = (int(v) for v in box)
    if not (0 <= xmin < xmax <= w and 0 <= ymin < ymax <= h):
        raise InvalidBoxError(
            f"box {[xmin, ymin, xmax, ymax]} is empty or outside the {w}x{h} image "
            "(need 0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height)"
        )
    return (xmin, ymin, xmax, ymax)


def crop_and_resize(grey: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Crop ``grey`` to ``box`` and resize to ``[size, size, 1]`` uint8 (the fixed resample)."""
    xmin, ymin, xmax, ymax = validate_box(box, grey.shape)
    crop = Image.fromarray(np.ascontiguousarray(grey[ymin:ymax, xmin:xmax]))
    resized = crop.resize((size, size), RESAMPLE)
    return np.asarray(resized, dtype=np.uint8)[:, :, None]


# --------------------------------------------------------------------------- decoders


def _check_shape(rows: int, cols: int, limits: Limits) -> None:
    if rows * cols > limits.max_pixels:
        raise InputTooLargeError(
            f"image declares {cols}x{rows} = {rows * cols} pixels; the limit is "
            f"{limits.max_pixels} (decompression bomb guard)"
        )
    if min(rows, cols) < limits.min_side:
        raise ImageTooSmallError(
            f"image is {cols}x{rows}; a CT slice needs at least {limits.min_side} pixels a side"
        )


#: Fixed-size chunks that change nothing in an 8-bit grey PNG's pixels (as Pillow decodes it to
#: "L"): such a PNG takes :func:`_decode_grey8_png`. Any other chunk goes to Pillow: tRNS, acTL
#: or PLTE change the pixels, and text and ICC chunks are Pillow's to bound (a zTXt that
#: inflates to 64 MiB is refused there, as hostile input).
_INERT_PNG_CHUNKS = frozenset((b"pHYs", b"tIME", b"gAMA", b"cHRM", b"sRGB", b"sBIT"))


def grey8_png_pixels(data: bytes) -> int | None:
    """The pixels of a PNG the fast decoder takes (8-bit grey, not interlaced, no chunk before
    its pixel data that Pillow must judge), read from its chunk headers alone; None for any
    other input. Tells the gateway what a decode will cost before it starts one."""
    shape = _grey8_png_shape(data)
    if shape is None:
        return None
    at = 33
    while at + 8 <= len(data):
        kind = data[at + 4 : at + 8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind not in _INERT_PNG_CHUNKS:
            return None  # Pillow decodes it (a text chunk may inflate to 64 MiB)
        at += 12 + struct.unpack_from(">I", data, at)[0]
    return shape[0] * shape[1]


def _grey8_png_shape(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the IHDR of an 8-bit grey, non-interlaced PNG; None otherwise."""
    if len(data) < 33 or not data.startswith(PNG_MAGIC) or data[8:16] != b"\x00\x00\x00\rIHDR":
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(
        ">IIBBBBB", data, 16
    )
    if (depth, colour, compression, filtering, interlace) != (8, 0, 0, 0, 0):
        return None
    return width, height


def _decode_grey8_png(data: bytes, limits: Limits) -> np.ndarray | None:
    """The common case fast: an 8-bit grey, non-interlaced PNG (every COVIDx-CT slice).

    Decoding a 512² slice is mostly inflating its pixel data and undoing the row filters.
    ISA-L inflates about 3x faster than zlib; the compiled ``unfilter_grey8`` then undoes the
    filters (Pillow's decoder, :func:`_unfilter_with_pillow`, without the compiled kernels).
    Pixels are identical to Pillow's (tests compare every real slice and fuzzed PNGs). None when
    the PNG is anything else, for Pillow to decode; a corrupt PNG of this kind raises as
    Pillow's path would.
    """
    shape = _grey8_png_shape(data)
    if shape is None:
        return None
    width, height = shape
    _check_shape(height, width, limits)  # header only: nothing inflated yet
    idat: list[memoryview] = []
    view, at = memoryview(data), 33
    while at + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, at)
        kind = data[at + 4 : at + 8]
        if kind == b"IDAT":
            if at + 12 + length > len(data):
                raise CorruptImageError("cannot decode image: the data is truncated")
            idat.append(view[at + 8 : at + 8 + length])
        elif idat or kind == b"IEND":
            break  # the image data is one run of IDAT chunks
        elif kind not in _INERT_PNG_CHUNKS:
            return None
        at += 12 + length
    rows = height * (width + 1)  # a filter byte, then the pixels of each row
    try:
        filtered = isal_zlib.decompressobj().decompress(b"".join(idat), rows)
    except Exception as e:  # isal_zlib.IsalError (its type stubs do not make it one)
        raise CorruptImageError("cannot decode image: the data is corrupt or truncated") from e
    if len(filtered) != rows:
        raise CorruptImageError("cannot decode image: the data is corrupt or truncated")
    if _native is None:
        return _unfilter_with_pillow(filtered, width, height)
    pixels = np.empty((height, width), np.uint8)
    try:
        _native.unfilter_grey8(filtered, pixels, width, height)
    except ValueError as e:  # a bad filter byte
        raise CorruptImageError("cannot decode image: the data is corrupt or truncated") from e
    return pixels


def _unfilter_with_pillow(filtered: bytes, width: int, height: int) -> np.ndarray:
    """The reference of ``_native.unfilter_grey8``: Pillow's PNG ("zip") decoder undoes the
    filters of the rows framed as stored deflate blocks (no inflating, no chunks to parse)."""
    try:
        img = Image.frombytes("L", (width, height), _stored_zlib(filtered), "zip", "L")
    except (OSError, SyntaxError, ValueError) as e:  # a bad filter byte, for one
        raise CorruptImageError("cannot decode image: the data is corrupt or truncated") from e
    return np.asarray(img, dtype=np.uint8)


def _stored_zlib(raw: bytes) -> bytes:
    """``raw`` as a zlib stream of stored (uncompressed) deflate blocks, as
    ``zlib.compress(raw, 0)`` would give, framed by hand (a copy, no compressor)."""
    view, at = memoryview(raw), 0
    parts: list[bytes | memoryview] = [b"\x78\x01"]
    while True:
        size = min(0xFFFF, len(raw) - at)
        final = at + size == len(raw)
        parts += [struct.pack("<BHH", final, size, size ^ 0xFFFF), view[at : at + size]]
        at += size
        if final:
            break
    parts.append(struct.pack(">I", zlib.adler32(raw)))
    return b"".join(parts)


def _decode_raster(data: bytes, limits: Limits) -> np.ndarray:
    """PNG (8/16-bit grey, RGB, RGBA, palette) or JPEG to grey uint8."""
    if data.startswith(PNG_MAGIC) and (grey := _decode_grey8_png(data, limits)) is not None:
        return grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_shape(img.height, img.width, limits)  # header only: nothing decoded yet
            frames = int(getattr(img, "n_frames", 1))
            if frames > 1:  # APNG, multi-page: which frame would be the slice?
                raise MultiFrameError(f"the image has {frames} frames; send one slice per file")
            img.load()
    except PreprocessingError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputTooLargeError(
            "decompression bomb guard: the image declares too many pixels"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError("cannot decode image: the data is corrupt or truncated") from e
    return _raster_to_grey(img)


def _raster_to_grey(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale the full range linearly onto 0..255 (v * 255 / 65535).
        wide = np.asarray(img, dtype=np.int64)
        return ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Transparent pixels carry nothing: composite over black (the air of a CT slice).
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(canvas, rgba)
    # RGB, palette, CMYK, 1-bit, YCbCr...: ITU-R 601 luma, as Pillow's "L" conversion.
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _decode_dicom(data: bytes, limits: Limits) -> np.ndarray:
    """A single-frame greyscale CT DICOM to windowed grey uint8 (COVIDx-CT recipe)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every oddity; we judge below
            preamble = data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC
            ds = pydicom.dcmread(io.BytesIO(data), force=not preamble)
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


def _dicom_to_grey(ds: pydicom.Dataset, limits: Limits) -> np.ndarray:
    """Check a parsed DICOM is one greyscale CT slice; its pixels in HU, windowed to uint8."""
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

    _check_shape(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), limits)
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
