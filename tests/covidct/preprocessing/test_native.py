"""The compiled kernels (covidct/_native.c) against their Python references, byte for byte:
Pillow's PNG unfiltering and the NumPy body box, on every real slice and on random inputs made
to reach every branch (each filter type after each other, runs of Paeth rows of every length the
kernel groups, one-pixel-wide images, masks of every density, ties)."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from bench.corpus import real_pngs
from covidct import preprocessing as pp
from covidct.preprocessing import bodybox, kernels, png

native = pytest.importorskip("covidct._native")


def test_the_kernels_are_built() -> None:
    """`make setup` builds them (setup.py); without them the gateway runs the slower references."""
    assert pp.NATIVE


def _filtered(pixels: np.ndarray, filters: list[int]) -> bytes:
    """Rows of ``pixels`` PNG-filtered with the given filter type each (the encoder side)."""
    h, w = pixels.shape
    img = pixels.astype(np.int32)
    out = bytearray()
    for y in range(h):
        row, up = img[y], img[y - 1] if y else np.zeros(w, np.int32)
        left = np.concatenate([[0], row[:-1]])
        corner = np.concatenate([[0], up[:-1]])
        f = filters[y]
        if f == 0:
            pred = np.zeros(w, np.int32)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = up
        elif f == 3:
            pred = (left + up) // 2
        else:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
        out.append(f)
        out += ((row - pred) % 256).astype(np.uint8).tobytes()
    return bytes(out)


def _native_unfilter(filtered: bytes, w: int, h: int) -> np.ndarray:
    out = np.empty((h, w), np.uint8)
    native.unfilter_grey8(filtered, out, w, h)
    return out


@pytest.mark.parametrize("width", [1, 2, 3, 7, 64, 513])
def test_unfilter_equals_pillow_on_random_filter_mixes(width: int) -> None:
    rng = np.random.default_rng(width)
    # Every filter after every other, then runs of 1..9 Paeth rows (grouped by up to 4).
    pairs = [f for a in range(5) for b in range(5) for f in (a, b)]
    runs = [f for n in range(1, 10) for f in [4] * n + [int(rng.integers(0, 4))]]
    for filters in (pairs, runs, [4] * 40, list(rng.integers(0, 5, 60))):
        pixels = rng.integers(0, 256, (len(filters), width), dtype=np.uint8)
        if width > 3:  # smooth rows too: Paeth's three predictions all get chosen
            pixels[::2] = np.cumsum(rng.integers(0, 3, (len(filters[::2]), width)), 1) % 256
        filtered = _filtered(pixels, [int(f) for f in filters])
        ours = _native_unfilter(filtered, width, len(filters))
        np.testing.assert_array_equal(ours, pixels)
        reference = png._unfilter_with_pillow(filtered, width, len(filters))
        np.testing.assert_array_equal(ours, reference)


def test_unfilter_equals_pillow_on_real_slices(real_data: Path) -> None:
    for path in real_pngs(real_data):
        data = path.read_bytes()
        ours = png.decode_grey8_png(data, pp.DEFAULT_LIMITS)
        assert ours is not None, path.name
        np.testing.assert_array_equal(ours, np.asarray(Image.open(io.BytesIO(data))), path.name)


@pytest.mark.parametrize("row", [0, 1, 5, 79])
def test_unknown_filter_type_in_any_row_is_a_corrupt_image(row: int) -> None:
    h, w = 80, 70
    pixels = np.random.default_rng(row).integers(0, 256, (h, w), dtype=np.uint8)
    filtered = _filtered(pixels, [4] * h)
    bad = filtered[: row * (w + 1)] + b"\x05" + filtered[row * (w + 1) + 1 :]
    with pytest.raises(ValueError, match=f"row {row} "):
        _native_unfilter(bad, w, h)
    png = _png_from_filtered(bad, w, h)
    assert pp.decode(_png_from_filtered(filtered, w, h)).pixels.tolist() == pixels.tolist()
    with pytest.raises(pp.CorruptImageError):
        pp.decode(png)


def _png_from_filtered(filtered: bytes, w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (
        pp.PNG_MAGIC
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(filtered))
        + chunk(b"IEND", b"")
    )


def test_unfilter_refuses_buffers_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        native.unfilter_grey8(b"\x00" * 10, np.empty((3, 3), np.uint8), 3, 3)
    with pytest.raises(ValueError, match="do not fit"):
        native.unfilter_grey8(b"\x00" * 12, np.empty((2, 3), np.uint8), 3, 3)
    with pytest.raises(TypeError):  # read-only output
        native.unfilter_grey8(b"\x00" * 12, b"\x00" * 9, 3, 3)


def _native_box(grey: np.ndarray) -> tuple[int, int, int, int] | None:
    h, w = grey.shape
    return native.largest_open_component(
        np.ascontiguousarray(grey), w, h, bodybox._body_level(), pp.BODY_OPENING // 2
    )


def test_body_box_equals_the_numpy_reference_on_real_slices(real_data: Path) -> None:
    for path in real_pngs(real_data):
        grey = np.asarray(Image.open(path))
        assert _native_box(grey) == pp.open_component_box(grey), path.name


def test_body_box_equals_the_numpy_reference_on_random_masks() -> None:
    """Single pixels, diagonal contacts, borders, rows of short runs, equal components (the tie
    goes to the raster-first), bright pixels the opening removes entirely."""
    rng = np.random.default_rng(5)
    level = bodybox._body_level()
    for shape in [(1, 1), (1, 40), (40, 1), (3, 3), (7, 7), (37, 53), (64, 9), (128, 96)]:
        for density in (0.02, 0.3, 0.5, 0.7, 0.9, 1.0):
            for _ in range(6):
                grey = np.where(rng.random(shape) < density, 255, level).astype(np.uint8)
                assert _native_box(grey) == pp.open_component_box(grey), (shape, density)
    grey = np.zeros((30, 30), np.uint8)
    grey[20:26, 2:8] = grey[3:9, 20:26] = 255  # two equal squares: the upper one first
    assert _native_box(grey) == pp.open_component_box(grey) == (20, 3, 26, 9)


def test_body_box_of_images_with_nothing_bright() -> None:
    level = bodybox._body_level()
    assert _native_box(np.full((50, 60), level, np.uint8)) is None
    speck = np.zeros((50, 60), np.uint8)
    speck[10, 10] = speck[30:32, 30:32] = 255  # bright, but gone after a 3x3 opening
    assert _native_box(speck) is None is pp.open_component_box(speck)
    assert pp.auto_body_box(speck) == (0, 0, 60, 50)


def test_body_box_refuses_a_buffer_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="are not"):
        native.largest_open_component(np.zeros((4, 4), np.uint8), 5, 4, 10, 1)


def test_preprocessing_without_the_kernels_gives_the_same_input(real_data: Path) -> None:
    """The Python references are the fallback where the kernels could not be built."""
    paths = real_pngs(real_data)[::20]
    fast = [pp.preprocess_bytes(p.read_bytes(), 224) for p in paths]
    with pp.python_references():
        assert kernels.compiled is None
        references = [pp.preprocess_bytes(p.read_bytes(), 224) for p in paths]
    assert kernels.compiled is native
    for path, ours, reference in zip(paths, fast, references, strict=True):
        assert reference.box == ours.box, path.name
        np.testing.assert_array_equal(reference.image, ours.image, path.name)


def test_grey8_png_pixels_reads_the_header_only(real_data: Path, fixtures: Path) -> None:
    data = real_pngs(real_data)[0].read_bytes()
    assert pp.grey8_png_pixels(data) == 512 * 512
    assert pp.grey8_png_pixels(data[:40]) == 512 * 512  # no pixel data needed
    rgb = io.BytesIO()
    Image.new("RGB", (70, 80)).save(rgb, "PNG")
    wide = io.BytesIO()
    Image.new("I;16", (70, 80)).save(wide, "PNG")
    for other in (rgb.getvalue(), wide.getvalue(), b"", b"\xff\xd8\xff" + data[3:], data[:20]):
        assert pp.grey8_png_pixels(other) is None
    # A chunk before the pixels decides: inert ones keep the fast path, text goes to Pillow.
    grey = Image.fromarray(np.zeros((80, 70), np.uint8))
    with_dpi, with_text = io.BytesIO(), io.BytesIO()
    grey.save(with_dpi, "PNG", dpi=(72, 72))
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "text")
    grey.save(with_text, "PNG", pnginfo=text)
    assert pp.grey8_png_pixels(with_dpi.getvalue()) == 80 * 70
    assert pp.grey8_png_pixels(with_text.getvalue()) is None
