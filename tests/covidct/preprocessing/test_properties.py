"""Property tests: whatever bytes arrive, preprocessing answers a uint8 [S, S, 1] image or a
PreprocessingError, never anything else (the gateway maps those, and only those, to 4xx)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from covidct.preprocessing import CorruptImageError, PreprocessingError, preprocess_bytes

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SIZE = 32
#: How many examples and whether they repeat come from the profile tests/conftest.py loads:
#: "ci" (120, derandomized: the same on every machine) or, with ``make fuzz``, "fuzz".
BOUNDED = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def _check(data: bytes) -> None:
    try:
        out = preprocess_bytes(data, SIZE)
    except PreprocessingError:
        return
    assert out.image.dtype == np.uint8 and out.image.shape == (SIZE, SIZE, 1)


def _jpeg(png: bytes, progressive: bool) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, "JPEG", quality=80, progressive=progressive)
    return buf.getvalue()


_PNG = (FIXTURES / "covidxct-real" / "images" / "COVIDCTMD-normal002-IM0042.png").read_bytes()
REAL = {
    "png": _PNG,
    "jpeg": _jpeg(_PNG, progressive=False),
    "progressive-jpeg": _jpeg(_PNG, progressive=True),
    "dicom-jpeg-lossless": (FIXTURES / "dicom" / "normal002__IM0042.dcm").read_bytes(),
    "dicom-uncompressed": (
        FIXTURES / "dicom" / "cap001__98C1066-ASAD_137_uncompressed.dcm"
    ).read_bytes(),
    "dicom-small-ct": (FIXTURES / "dicom" / "CT_small.dcm").read_bytes(),
}


@BOUNDED
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@BOUNDED
@given(st.sampled_from(list(REAL)), st.binary(min_size=1, max_size=64))
def test_a_real_header_followed_by_anything(kind: str, tail: bytes) -> None:
    blob = REAL[kind]
    _check(blob[: min(len(blob), 132 + len(tail) * 8)] + tail)


@pytest.mark.parametrize("kind", list(REAL))
@BOUNDED
@given(data=st.data())
def test_mutated_real_files(kind: str, data: st.DataObject) -> None:
    blob = bytearray(REAL[kind])
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        at = data.draw(st.integers(0, len(blob) - 1), label="offset")
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]), label="action")
        if action == "flip":
            blob[at] ^= data.draw(st.integers(1, 255), label="mask")
        elif action == "cut":
            del blob[at:]
            if not blob:
                break
        else:
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=16), label="junk")
    _check(bytes(blob))


def test_a_garbled_rescale_value_is_a_corrupt_image() -> None:
    """Found by `make fuzz`: one flipped bit turned RescaleIntercept "-1024" into ",1024", and
    float() raised a bare ValueError (a 500 at the gateway)."""
    blob = REAL["dicom-uncompressed"]
    assert blob.count(b"-1024") == 1
    with pytest.raises(CorruptImageError, match="garbled header values"):
        preprocess_bytes(blob.replace(b"-1024", b",1024"), SIZE)
