"""The one preprocessing, on real CT slices and DICOMs and on hostile input."""

from __future__ import annotations

import contextlib
import csv
import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, PngImagePlugin

from bench.corpus import real_pngs
from covidct import preprocessing as pp
from covidct.preprocessing import (
    ColourImageError,
    CorruptImageError,
    EmptyInputError,
    ImageTooSmallError,
    InputTooLargeError,
    InvalidBoxError,
    Limits,
    MultiFrameError,
    NoPixelDataError,
    NotCTError,
    PreprocessingError,
    UnsupportedFormatError,
    auto_body_box,
    decode,
    preprocess_bytes,
)


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


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


# ----------------------------------------------------------------- real DICOM vs PNG


def test_every_dicom_with_a_png_decodes_to_that_png(real_data: Path) -> None:
    rows = list(csv.DictReader((real_data / "dicom" / "MANIFEST.csv").open()))
    matched = [r for r in rows if r["matching_covidxct_png"]]
    assert len(matched) >= 2  # 8 in ../shared/data, 2 in tests/fixtures
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


# ----------------------------------------------------------------- automatic body box


def test_auto_body_box_matches_official_boxes(real_data: Path) -> None:
    root = real_data / "covidxct-real"
    ious = []
    for line in (root / "test_COVIDx-CT.txt").read_text().splitlines():
        name, _, *box = line.split()
        grey = np.asarray(Image.open(root / "images" / name))
        ious.append(iou(auto_body_box(grey), tuple(map(int, box))))
    assert len(ious) == len(real_pngs(real_data)) >= 5
    assert np.mean(ious) >= 0.95
    assert min(ious) >= 0.9


def test_auto_body_box_finds_synthetic_bodies_not_the_table(synth_dir: Path) -> None:
    from covidct.dataset import read_covidx

    ds = read_covidx(synth_dir)
    for samples in ds.splits.values():
        for s in samples:
            grey = np.asarray(Image.open(ds.image_path(s)))
            assert iou(auto_body_box(grey), s.box) >= 0.9, s.filename


def _scipy_largest_component(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    rows, cols = np.nonzero(labels == sizes.argmax())
    return (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)


def _scipy_body_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """The body box as first written (SciPy): what :func:`auto_body_box` must reproduce."""
    from scipy import ndimage

    h, w = grey.shape
    square = np.ones((pp.BODY_OPENING,) * 2, bool)
    mask = ndimage.binary_opening(grey > pp.hu_to_grey_level(pp.BODY_THRESHOLD_HU), square)
    body = _scipy_largest_component(mask)
    if body is None:
        return (0, 0, w, h)
    m = pp.BODY_MARGIN
    return (
        max(0, body[0] - m),
        max(0, body[1] - m),
        min(w, body[2] + m),
        min(h, body[3] + m),
    )


def test_body_box_equals_scipy_reference_on_real_slices(real_data: Path) -> None:
    for path in real_pngs(real_data):
        grey = np.asarray(Image.open(path))
        assert auto_body_box(grey) == _scipy_body_box(grey), path.name


def test_body_box_equals_scipy_reference_on_random_masks() -> None:
    """Borders, diagonal contacts, ties of equal components: random blobs of every density."""
    rng = np.random.default_rng(7)
    level = pp.hu_to_grey_level(pp.BODY_THRESHOLD_HU)
    for shape in [(37, 53), (16, 16), (64, 9), (128, 96)]:
        for density in (0.2, 0.5, 0.7, 0.9):
            for _ in range(10):
                grey = np.where(rng.random(shape) < density, 255, level).astype(np.uint8)
                assert auto_body_box(grey) == _scipy_body_box(grey), (shape, density)


def _serpentine(n: int) -> np.ndarray:
    """Columns 3 wide joined alternately at the bottom and the top: one long chain of runs."""
    mask = np.zeros((n, n), bool)
    for c in range(0, n, 6):
        mask[:, c : c + 3] = True
        rows = slice(n - 3, n) if (c // 6) % 2 == 0 else slice(0, 3)
        mask[rows, c : c + 9] = True
    return mask


def test_run_labelling_equals_scipy_label() -> None:
    """Unopened random masks (single pixels, diagonal contacts, rows full of short runs) and
    shapes whose runs chain far: the run-based labeller finds scipy's largest component."""
    rng = np.random.default_rng(11)
    masks = [
        rng.random(shape) < density
        for shape in [(1, 40), (40, 1), (7, 7), (37, 53), (64, 9), (128, 96)]
        for density in (0.05, 0.3, 0.5, 0.6, 0.8, 1.0)
        for _ in range(8)
    ]
    checker = np.indices((64, 80)).sum(axis=0) % 2 == 0  # no two pixels 4-connected
    masks += [checker, _serpentine(256), _serpentine(256).T, np.zeros((9, 9), bool)]
    for i, mask in enumerate(masks):
        assert pp.largest_component_box(mask) == _scipy_largest_component(mask), i


def test_body_box_tie_goes_to_first_component_in_raster_order() -> None:
    grey = np.zeros((20, 20), np.uint8)
    grey[12:17, 1:6] = 255  # 5x5, first pixel at row 12
    grey[2:7, 10:15] = 255  # 5x5, first pixel at row 2: comes first
    assert auto_body_box(grey) == _scipy_body_box(grey) == (9, 1, 16, 8)


def test_fast_png_decoder_equals_pillow_on_real_slices(real_data: Path) -> None:
    paths = real_pngs(real_data)
    for path in paths:
        data = path.read_bytes()
        fast = pp._decode_grey8_png(data, pp.DEFAULT_LIMITS)
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
    fast = pp._decode_grey8_png(data, pp.DEFAULT_LIMITS)
    if extra == "pHYs":
        assert fast is not None
        np.testing.assert_array_equal(fast, grey)
    else:
        assert fast is None
    np.testing.assert_array_equal(decode(data).pixels, pp._raster_to_grey(Image.open(buf)))


@pytest.mark.parametrize("n", [0, 1, 65535, 65536, 3 * 65535 + 7, 512 * 513])
def test_stored_zlib_frames_any_length(n: int) -> None:
    raw = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    framed = pp._stored_zlib(raw)
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
    with pytest.raises(pp.CorruptImageError):
        pp._decode_grey8_png(bad, pp.DEFAULT_LIMITS)


@pytest.mark.parametrize("cut", [60, 500, -20, -13])
def test_fast_png_decoder_rejects_truncated_data(real_data: Path, cut: int) -> None:
    data = real_pngs(real_data)[0].read_bytes()
    with pytest.raises(pp.CorruptImageError):
        decode(data[:cut])


def test_blank_image_box_is_whole_image() -> None:
    assert auto_body_box(np.zeros((100, 120), np.uint8)) == (0, 0, 120, 100)


# ----------------------------------------------------------------- formats


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


# ----------------------------------------------------------------- rejections


def _dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


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
