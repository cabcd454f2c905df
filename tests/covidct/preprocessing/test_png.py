"""The fast path for 8-bit grey PNGs: equal to Pillow, and what it leaves to Pillow."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from bench.corpus import real_pngs
from covidct.preprocessing import CorruptImageError, decode
from covidct.preprocessing.errors import DEFAULT_LIMITS
from covidct.preprocessing.png import _stored_zlib, decode_grey8_png
from covidct.preprocessing.raster import _raster_to_grey


def test_fast_png_decoder_equals_pillow_on_real_slices(real_data: Path) -> None:
    paths = real_pngs(real_data)
    for path in paths:
        data = path.read_bytes()
        fast = decode_grey8_png(data, DEFAULT_LIMITS)
        assert fast is not None, path.name  # every COVIDx-CT slice takes the fast path
        np.testing.assert_array_equal(fast, np.asarray(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("extra", ["pHYs", "tEXt", "tRNS"])
def test_fast_png_decoder_leaves_other_pngs_to_pillow(extra: str) -> None:
    """Fixed-size chunks that cannot change the pixels stay on the fast path; text (Pillow
    bounds its size) and transparency (Pillow composites it) go to Pillow."""
    grey = np.random.default_rng(1).integers(0, 256, (80, 90), dtype=np.uint8)
    buf = io.BytesIO()
    if extra == "tEXt":
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "text")
        Image.fromarray(grey).save(buf, "PNG", pnginfo=info)
    elif extra == "pHYs":
        Image.fromarray(grey).save(buf, "PNG", dpi=(72, 72))
    else:
        Image.fromarray(grey).save(buf, "PNG", transparency=0)
    data = buf.getvalue()
    assert extra.encode() in data
    fast = decode_grey8_png(data, DEFAULT_LIMITS)
    if extra == "pHYs":
        assert fast is not None
        np.testing.assert_array_equal(fast, grey)
    else:
        assert fast is None
    np.testing.assert_array_equal(decode(data).pixels, _raster_to_grey(Image.open(buf)))


@pytest.mark.parametrize("n", [0, 1, 65535, 65536, 3 * 65535 + 7, 512 * 513])
def test_stored_zlib_frames_any_length(n: int) -> None:
    raw = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    framed = _stored_zlib(raw)
    assert zlib.decompress(framed) == raw  # the adler32 checked too
    blocks = max(1, -(-n // 65535))  # stored blocks of at most 65535 bytes, 5 header bytes each
    assert len(framed) == 2 + n + 5 * blocks + 4


def test_fast_png_decoder_rejects_an_unknown_filter_type() -> None:
    grey = np.random.default_rng(3).integers(0, 256, (70, 90), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG", compress_level=0)
    data = buf.getvalue()
    at = data.index(b"IDAT") + 4 + 2 + 5  # zlib header, stored block header: row 0's filter
    bad = data[:at] + b"\x07" + data[at + 1 :]
    with pytest.raises(CorruptImageError):
        decode_grey8_png(bad, DEFAULT_LIMITS)


@pytest.mark.parametrize("cut", [60, 500, -20, -13])
def test_fast_png_decoder_rejects_truncated_data(real_data: Path, cut: int) -> None:
    data = real_pngs(real_data)[0].read_bytes()
    with pytest.raises(CorruptImageError):
        decode(data[:cut])
