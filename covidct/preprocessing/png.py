"""The fast path for the common PNG: 8-bit grey, not interlaced (every COVIDx-CT slice).

Decoding such a slice is mostly inflating its pixel data and undoing the row filters: ISA-L
inflates (faster than zlib), the compiled ``unfilter_grey8`` undoes the filters, and without the
compiled kernels Pillow's own decoder does (:func:`_unfilter_with_pillow`, the reference).
Pixels are identical to Pillow's (tests compare every real slice and fuzzed PNGs). Any other
PNG is left to Pillow (:mod:`covidct.preprocessing.raster`).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from isal import isal_zlib
from PIL import Image

from covidct.preprocessing import kernels
from covidct.preprocessing.errors import CorruptImageError, Limits, check_shape
from covidct.preprocessing.formats import PNG_MAGIC

#: Fixed-size chunks that change nothing in an 8-bit grey PNG's pixels (as Pillow decodes it to
#: "L"): such a PNG takes :func:`decode_grey8_png`. Any other chunk goes to Pillow: tRNS, acTL
#: or PLTE change the pixels, and text and ICC chunks are Pillow's to bound (a zTXt that
#: inflates to 64 MiB is refused there, as hostile input).
_INERT_PNG_CHUNKS = frozenset((b"pHYs", b"tIME", b"gAMA", b"cHRM", b"sRGB", b"sBIT"))

_CORRUPT = "cannot decode image: the data is corrupt or truncated"


def grey8_png_pixels(data: bytes) -> int | None:
    """The pixels of a PNG the fast decoder takes, read from its chunk headers alone.

    Tells the gateway what a decode will cost before it starts one.

    Args:
        data: any bytes.

    Returns:
        width x height of an 8-bit grey, non-interlaced PNG with no chunk before its pixel data
        that Pillow must judge; None for any other input.
    """
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


def decode_grey8_png(data: bytes, limits: Limits) -> np.ndarray | None:
    """Decode an 8-bit grey, non-interlaced PNG fast; None for any other PNG.

    Args:
        data: PNG bytes.
        limits: input bounds, checked on the header before anything is inflated.

    Returns:
        grey uint8 ``[H, W]``, or None when the PNG is of another kind (for Pillow to decode).

    Raises:
        CorruptImageError: a PNG of this kind that does not decode, as Pillow's path would.
        PreprocessingError: the header is outside ``limits``.
    """
    shape = _grey8_png_shape(data)
    if shape is None:
        return None
    width, height = shape
    check_shape(height, width, limits)  # header only: nothing inflated yet
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
        raise CorruptImageError(_CORRUPT) from e
    if len(filtered) != rows:
        raise CorruptImageError(_CORRUPT)
    native = kernels.compiled  # read at each call: python_references() swaps it
    if native is None:
        return _unfilter_with_pillow(filtered, width, height)
    pixels = np.empty((height, width), np.uint8)
    try:
        native.unfilter_grey8(filtered, pixels, width, height)
    except ValueError as e:  # a bad filter byte
        raise CorruptImageError(_CORRUPT) from e
    return pixels


def _unfilter_with_pillow(filtered: bytes, width: int, height: int) -> np.ndarray:
    """The reference of ``_native.unfilter_grey8``: Pillow's PNG ("zip") decoder undoes the
    filters of the rows framed as stored deflate blocks (no inflating, no chunks to parse)."""
    try:
        img = Image.frombytes("L", (width, height), _stored_zlib(filtered), "zip", "L")
    except (OSError, SyntaxError, ValueError) as e:  # a bad filter byte, for one
        raise CorruptImageError(_CORRUPT) from e
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
