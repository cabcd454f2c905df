"""The one preprocessing end to end: every raster format to the same grey, the crop and resize,
and typed errors for hostile input."""

from __future__ import annotations

import contextlib
import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct import preprocessing as pp
from covidct.preprocessing import (
    CorruptImageError,
    EmptyInputError,
    ImageTooSmallError,
    InputTooLargeError,
    InvalidBoxError,
    Limits,
    PreprocessingError,
    UnsupportedFormatError,
    decode,
    preprocess_bytes,
)


def png_bytes(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", **kw) if mode else Image.fromarray(
        arr
    ).save(buf, format="PNG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ct_png(fixtures: Path) -> tuple[bytes, np.ndarray]:
    path = fixtures / "covidxct-real" / "images" / "COVIDCTMD-P001-IM0038.png"
    return path.read_bytes(), np.asarray(Image.open(path))


def test_no_tensorflow_import() -> None:
    code = (
        "import sys, covidct.preprocessing, covidct.dataset, covidct.config, cli.main, "
        "covidct.modelconfig, covidct.samples, covidct.files, training.synth, training.cache; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------- formats, crop, resize


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA", "P", "LA", "JPEG"])
def test_raster_modes_decode_to_the_same_grey(ct_png, mode: str) -> None:
    _, grey = ct_png
    if mode == "JPEG":
        buf = io.BytesIO()
        Image.fromarray(grey).save(buf, format="JPEG", quality=95)
        data, tol, source = buf.getvalue(), 6, "jpeg"
    else:
        img = Image.fromarray(grey)
        if mode == "I;16":
            img = Image.fromarray(grey.astype(np.uint16) * 257)  # full 16-bit range
        elif mode != "L":
            img = img.convert(mode)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data, tol, source = buf.getvalue(), 1, "png"
    out = decode(data)
    assert out.source == source
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == grey.shape
    assert np.abs(out.pixels.astype(int) - grey.astype(int)).mean() <= tol / 2
    assert np.abs(out.pixels.astype(int) - grey.astype(int)).max() <= max(tol, 1) * 8


def test_transparent_pixels_become_air() -> None:
    rgba = np.full((80, 80, 4), 200, np.uint8)
    rgba[:, :, 3] = 255
    rgba[:, :40, 3] = 0
    out = decode(png_bytes(rgba)).pixels
    assert out[:, :40].max() == 0 and out[:, 40:].min() == 200


def test_unknown_magic_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormatError, match="not PNG, JPEG or DICOM"):
        decode(b"GIF89a" + b"\x00" * 200)


def test_output_shape_and_dtype(ct_png) -> None:
    data, _ = ct_png
    for size in (64, 224, 300):
        result = preprocess_bytes(data, size)
        assert result.image.shape == (size, size, 1) and result.image.dtype == np.uint8
        assert result.source == "png" and result.original_shape == (512, 512)


def test_given_box_is_used_and_is_exactly_a_crop_resize(ct_png) -> None:
    data, grey = ct_png
    box = (10, 100, 500, 420)
    result = preprocess_bytes(data, 128, box=box)
    assert result.box == box
    expected = Image.fromarray(grey[100:420, 10:500]).resize((128, 128), Image.BILINEAR)
    assert np.array_equal(result.image[:, :, 0], np.asarray(expected))


@pytest.mark.parametrize("box", [(0, 0, 0, 10), (10, 10, 5, 20), (0, 0, 513, 512), (-1, 0, 5, 5)])
def test_bad_boxes_are_rejected(ct_png, box) -> None:
    with pytest.raises(InvalidBoxError, match="empty or outside"):
        preprocess_bytes(ct_png[0], 64, box=box)


# ----------------------------------------------------------------- hostile input


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A valid PNG header declaring 100,000 x 100,000 pixels with a few bytes of data.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = (
        pp.PNG_MAGIC
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + _png_chunk(b"IEND", b"")
    )
    with pytest.raises(InputTooLargeError, match="decompression bomb"):
        decode(data)


@pytest.mark.parametrize(
    ("data", "limits", "error"),
    [
        (b"", Limits(), EmptyInputError),
        (b"hello world, not an image" * 10, Limits(), UnsupportedFormatError),
        (np.random.default_rng(0).bytes(4096), Limits(), UnsupportedFormatError),
        (pp.PNG_MAGIC + b"\x00" * 100, Limits(), CorruptImageError),
        (pp.JPEG_MAGIC + b"\x00" * 100, Limits(), CorruptImageError),
        (b"\x00" * 128 + b"DICM" + b"\xff" * 200, Limits(), PreprocessingError),
        (png_bytes(np.zeros((32, 32), np.uint8)), Limits(), ImageTooSmallError),
        (png_bytes(np.zeros((100, 100), np.uint8)), Limits(max_bytes=50), InputTooLargeError),
        (png_bytes(np.zeros((100, 100), np.uint8)), Limits(max_pixels=5000), InputTooLargeError),
    ],
)
def test_bad_bytes_raise_typed_errors(data: bytes, limits: Limits, error) -> None:
    with pytest.raises(error):
        decode(data, limits)


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_inputs_raise_typed_errors(fixtures: Path, ct_png, cut: float) -> None:
    blobs = {
        "png": ct_png[0],
        "dicom": (fixtures / "dicom" / "normal002__IM0042.dcm").read_bytes(),
        "dicom-raw": (
            fixtures / "dicom" / "cap001__98C1066-ASAD_137_uncompressed.dcm"
        ).read_bytes(),
    }
    for name, blob in blobs.items():
        with pytest.raises(PreprocessingError):
            decode(blob[: int(len(blob) * cut)])
        assert name  # every format raised


def test_garbage_after_magic_never_escapes_as_another_exception() -> None:
    rng = np.random.default_rng(1)
    for magic in (pp.PNG_MAGIC, pp.JPEG_MAGIC, b"\x00" * 128 + b"DICM"):
        for _ in range(20):
            data = magic + rng.bytes(int(rng.integers(1, 3000)))
            with contextlib.suppress(PreprocessingError):
                decode(data)  # any other exception fails the test
