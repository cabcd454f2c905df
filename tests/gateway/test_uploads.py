"""Hostile zips for /v1/predict/study: every one answered 4xx in our words, memory bounded."""

from __future__ import annotations

import io
import resource
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from gateway.uploads import zip_slices
from tests.builders import zip_of
from tests.gateway.test_app import client

MiB = 1 << 20


def unzip_slices(
    blob: bytes, max_slices: int, max_bytes: int, max_slice_bytes: int
) -> list[tuple[str, bytes]]:
    """Every member read, as the study route reads them (one at a time here)."""
    slices = zip_slices(io.BytesIO(blob), max_slices, max_bytes, max_slice_bytes)
    return [(s.name, s.read()) for s in slices]


def _bomb(expands_to: int) -> bytes:
    """One deflated member of zeros: a few hundred kB that expand to ``expands_to``."""
    return zip_of({"slice.dcm": bytes(expands_to)})


def _lying_bomb(expands_to: int) -> bytes:
    """The same, with headers that declare 1 kB."""
    blob = bytearray(zip_of({"slice.dcm": bytes(expands_to)}))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local and central headers
        at = blob.find(sig)
        blob[at + offset : at + offset + 4] = struct.pack("<I", 1000)
    return bytes(blob)


def _encrypted() -> bytes:
    blob = bytearray(zip_of({"slice.dcm": b"x" * 100}, zipfile.ZIP_STORED))
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # general-purpose flag bit 0
        at = blob.find(sig)
        blob[at + offset] |= 0x1
    return bytes(blob)


def _corrupt_deflate() -> bytes:
    blob = bytearray(zip_of({"slice.dcm": bytes(range(256)) * 400}))
    start = blob.find(b"slice.dcm") + len("slice.dcm")
    blob[start + 10 : start + 60] = b"\xff" * 50  # inside the deflate stream
    return bytes(blob)


HOSTILE: list[tuple[str, Callable[[], bytes], type[Exception], str]] = [
    ("bomb: 200 MiB of zeros", lambda: _bomb(200 * MiB), PayloadTooLarge, "expands beyond"),
    ("bomb declaring 1 kB", lambda: _lying_bomb(200 * MiB), BadRequest, "is corrupt"),
    (
        "members summing past the cap",
        lambda: zip_of({f"{i}.dcm": bytes(10 * MiB) for i in range(8)}),
        PayloadTooLarge,
        "expands beyond 67108864",
    ),
    (
        "too many members",
        lambda: zip_of({f"{i}.dcm": b"x" for i in range(11)}),
        PayloadTooLarge,
        "11 files",
    ),
    ("encrypted member", _encrypted, UnsupportedMediaType, "encrypted"),
    (
        "bzip2 member",
        lambda: zip_of({"a.dcm": b"x" * 100}, zipfile.ZIP_BZIP2),
        UnsupportedMediaType,
        "compression method 12",
    ),
    (
        "lzma member",
        lambda: zip_of({"a.dcm": b"x" * 100}, zipfile.ZIP_LZMA),
        UnsupportedMediaType,
        "compression method 14",
    ),
    ("corrupt deflate data", _corrupt_deflate, BadRequest, "is corrupt"),
    (
        "nested zip",
        lambda: zip_of({"inner.zip": zip_of({"a.dcm": b"x"})}),
        UnsupportedMediaType,
        "itself a zip",
    ),
    (
        "truncated archive",
        lambda: zip_of({"a.dcm": b"x" * 5000})[:-30],
        BadRequest,
        "unreadable zip",
    ),
]


@pytest.mark.parametrize(("kind", "make", "error", "says"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_zips_raise_our_errors(
    kind: str, make: Callable[[], bytes], error: type[Exception], says: str
) -> None:
    blob = make()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(error, match=says) as raised:
        unzip_slices(blob, max_slices=10, max_bytes=64 * MiB, max_slice_bytes=16 * MiB)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100, f"{kind}: peak memory grew by {grown_mib:.0f} MiB"
    assert "Error" not in str(raised.value) and "zlib" not in str(raised.value)


def test_member_names_are_reported_as_sent_and_paths_are_only_names() -> None:
    blob = zip_of({"../../etc/passwd": b"a", "dir/IM0001.dcm": b"b"})
    assert unzip_slices(blob, 10, MiB, MiB) == [
        ("../../etc/passwd", b"a"),
        ("dir/IM0001.dcm", b"b"),
    ]


@pytest.mark.parametrize(
    ("blob", "status"),
    [
        (_bomb(64 * MiB), 413),
        (_lying_bomb(64 * MiB), 422),  # the one member is corrupt: no usable slice
        (_encrypted(), 415),
        (_corrupt_deflate(), 422),
        (zip_of({}), 400),
        (zip_of({"a.zip": zip_of({"b.dcm": b"x"})}), 422),
    ],
    ids=["bomb", "lying-bomb", "encrypted", "corrupt", "empty", "nested"],
)
def test_the_study_route_answers_them_4xx(blob: bytes, status: int, fixtures: Path) -> None:
    with client(max_study_bytes=32 * MiB) as c:
        r = c.post("/v1/predict/study", content=blob, headers={"content-type": "application/zip"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json") or r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, b"\xff\xd8\xff\xe0" + b"garbage" * 20, b"DICM" * 40],
    ids=["broken-png", "broken-jpeg", "garbage"],
)
def test_error_details_are_our_words_and_the_library_text_goes_to_the_log(
    body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with client() as c:
        r = c.post("/v1/predict", content=body)
    assert 400 <= r.status_code < 500, r.text
    detail = r.json()["detail"]
    for library_words in ("PIL", "pydicom", "Error", "Traceback", "identify image", "errno"):
        assert library_words not in detail, detail
