"""The bad-input corpus: every kind of broken, odd or hostile request the gateway is known to
get, with the status each must be answered. ``test_bad_inputs.py`` sends all of them to the real
stack (tritonserver + gateway) as raw HTTP/1.1 over a socket, so protocol-level faults (lying
lengths, stalled bodies, oversized headers) are sent exactly as written here.

The corpus gateway runs with smaller caps than the defaults so the oversize cases stay cheap:
``CORPUS_SETTINGS`` (8 MiB a slice, 32 MiB and 100 slices a study, 1 s body stall).
"""

from __future__ import annotations

import io
import socket
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import UID

from tests.builders import huge_png_dims, png_chunk, with_chunk, zip_of

MiB = 1 << 20
CORPUS_SETTINGS = {
    "max_upload_bytes": 8 * MiB,
    "max_study_bytes": 32 * MiB,
    "max_study_slices": 100,
    "body_idle_timeout_s": 1.0,
}
PATIENT_NAME = "Corpus^Patient^Confidential"


@dataclass(frozen=True)
class Inputs:
    """Real files the cases start from (tests/fixtures)."""

    png: bytes  # a real 512x512 slice
    fixtures: Path

    def dicom(self, name: str) -> bytes:
        return (self.fixtures / "dicom" / name).read_bytes()

    def ct_dataset(self) -> pydicom.Dataset:
        return pydicom.dcmread(
            self.fixtures / "dicom" / "cap001__98C1066-ASAD_137_uncompressed.dcm"
        )


@dataclass(frozen=True)
class Raw:
    """One request as it goes on the wire. ``body`` is sent after the headers; ``chunks`` (if
    given) instead as a chunked body; ``stall`` leaves the body unfinished and waits."""

    path: str = "/v1/predict"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    chunks: list[bytes] | None = None
    content_length: str | None = "auto"  # "auto": len(body); None: no header; else as given
    stall: bool = False


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Inputs], Raw]
    status: int
    ours: bool = True  # answered by the gateway (problem details), not by the HTTP server


def raw_send(
    host: str, port: int, raw: Raw, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` and read the first response: status, headers (lower-case), body."""
    head = [f"{raw.method} {raw.path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in raw.headers.items()]
    if raw.chunks is not None:
        head.append("Transfer-Encoding: chunked")
    elif raw.content_length == "auto":
        head.append(f"Content-Length: {len(raw.body)}")
    elif raw.content_length is not None:
        head.append(f"Content-Length: {raw.content_length}")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            if raw.chunks is not None:
                for chunk in raw.chunks:
                    sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            else:
                sock.sendall(raw.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: read what it said
        received = bytearray()
        try:
            while data := sock.recv(65536):
                received += data
        except ConnectionResetError:
            pass
    head_bytes, _, body = bytes(received).partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 "):
        raise ConnectionError(f"no HTTP answer: {bytes(received[:200])!r}")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


# --- builders -------------------------------------------------------------------------------


def _image(array: np.ndarray, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **save)
    return buf.getvalue()


def _slice_array(inputs: Inputs) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(inputs.png)).convert("L"))


def _converted(inputs: Inputs, mode: str, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(inputs.png)).convert(mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def _sixteen_bit(inputs: Inputs) -> bytes:
    a = _slice_array(inputs).astype(np.uint16) * 257
    return _image(a, "PNG")


def _apng(inputs: Inputs) -> bytes:
    first = Image.open(io.BytesIO(inputs.png)).convert("L")
    second = first.point(lambda v: 255 - v)
    buf = io.BytesIO()
    first.save(buf, format="PNG", save_all=True, append_images=[second], duration=100, loop=0)
    return buf.getvalue()


def _dicom_bytes(ds: pydicom.Dataset, preamble: bool = True) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    return data if preamble else data[132:]  # without the 128-byte preamble and "DICM"


def _dicom_edit(edit: Callable[[pydicom.Dataset], None]) -> Callable[[Inputs], Raw]:
    def build(inputs: Inputs) -> Raw:
        ds = inputs.ct_dataset()
        edit(ds)
        return Raw(body=_dicom_bytes(ds))

    return build


def _declare_size(ds: pydicom.Dataset) -> None:
    ds.Rows = ds.Columns = 65535


def _float_pixels(ds: pydicom.Dataset) -> None:
    pixels = ds.pixel_array.astype(np.float32)
    del ds.PixelData
    ds.BitsAllocated = 32
    ds.FloatPixelData = pixels.tobytes()


def _signed_pixels(ds: pydicom.Dataset) -> None:
    pixels = ds.pixel_array.astype(np.int32) - 1024
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.PixelData = pixels.astype(np.int16).tobytes()


def _modality(value: str) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        ds.Modality = value

    return edit


def _sr_without_pixels(ds: pydicom.Dataset) -> None:
    ds.Modality = "SR"
    del ds.PixelData


def _named_without_pixels(ds: pydicom.Dataset) -> None:
    ds.PatientName = PATIENT_NAME
    del ds.PixelData


def _broken_transfer_syntax(inputs: Inputs) -> Raw:
    ds = inputs.ct_dataset()
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5.6.7.8.9")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return Raw(body=buf.getvalue())


def _encryptedzip_of(inputs: Inputs) -> bytes:
    blob = bytearray(zip_of({"IM0001.png": inputs.png}, zipfile.ZIP_STORED))
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # general-purpose flag bit 0
        at = blob.find(sig)
        blob[at + offset] |= 0x1
    return bytes(blob)


def _corrupt_deflate(inputs: Inputs) -> bytes:
    blob = bytearray(zip_of({"IM0001.png": inputs.png}))
    start = blob.find(b"IM0001.png") + len("IM0001.png")
    blob[start + 10 : start + 60] = b"\xff" * 50
    return bytes(blob)


def _study(body: bytes) -> Raw:
    return Raw(path="/v1/predict/study", body=body, headers={"Content-Type": "application/zip"})


def _multipart(parts: list[tuple[str, str, bytes]], boundary: str = "corpus-boundary") -> bytes:
    out = bytearray()
    for name, filename, data in parts:
        out += f"--{boundary}\r\n".encode()
        out += f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


MULTIPART = {"Content-Type": "multipart/form-data; boundary=corpus-boundary"}


def _chunks(total: int, size: int = 256 * 1024) -> list[bytes]:
    return [b"\x00" * size] * (total // size + 1)


# --- the corpus -----------------------------------------------------------------------------

CORPUS: list[Case] = [
    # Not images at all
    Case("empty body", lambda i: Raw(body=b""), 400),
    Case("one byte", lambda i: Raw(body=b"\x89"), 415),
    Case("plain text", lambda i: Raw(body=b"hello, this is not an image"), 415),
    Case("html page", lambda i: Raw(body=b"<!DOCTYPE html><html><body>hi</body></html>"), 415),
    Case(
        "json body",
        lambda i: Raw(body=b'{"image": "slice.png"}', headers={"Content-Type": "application/json"}),
        415,
    ),
    Case("pdf", lambda i: Raw(body=b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n"), 415),
    Case("zip to the slice route", lambda i: Raw(body=zip_of({"a.png": i.png})), 415),
    # Images in formats we do not take
    Case("tiff", lambda i: Raw(body=_image(_slice_array(i), "TIFF")), 415),
    Case("bmp", lambda i: Raw(body=_image(_slice_array(i), "BMP")), 415),
    Case("gif", lambda i: Raw(body=_image(_slice_array(i), "GIF")), 415),
    # PNG oddities
    Case("truncated png", lambda i: Raw(body=i.png[:3000]), 400),
    Case("png signature then zeros", lambda i: Raw(body=i.png[:8] + b"\x00" * 500), 400),
    Case("png declaring 100000x100000", lambda i: Raw(body=huge_png_dims()), 413),
    Case(
        "png with an ancillary chunk declaring 2 GiB",
        lambda i: Raw(body=with_chunk(i.png, png_chunk(b"prVt", b"x" * 16, length=0x7FFFFFF0))),
        400,
    ),
    Case(
        "png with a 4 MiB private chunk (valid: skipped)",
        lambda i: Raw(body=with_chunk(i.png, png_chunk(b"prVt", b"\x00" * (4 * MiB)))),
        200,
    ),
    Case(
        "png with a zTXt chunk inflating to 64 MiB",
        lambda i: Raw(
            body=with_chunk(
                i.png, png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * (64 * MiB), 9))
            )
        ),
        400,  # the decoder's text-chunk guard: refused as corrupt
    ),
    Case("apng (two frames)", lambda i: Raw(body=_apng(i)), 422),
    Case("16-bit png", lambda i: Raw(body=_sixteen_bit(i)), 200),
    Case("palette png", lambda i: Raw(body=_converted(i, "P")), 200),
    Case("png with alpha", lambda i: Raw(body=_converted(i, "LA")), 200),
    Case(
        "png too small to be a CT slice",
        lambda i: Raw(body=_image(np.zeros((16, 16), np.uint8), "PNG")),
        422,
    ),
    # JPEG oddities
    Case("truncated jpeg", lambda i: Raw(body=_converted(i, "L", "JPEG")[:2000]), 400),
    Case("cmyk jpeg", lambda i: Raw(body=_converted(i, "CMYK", "JPEG")), 200),
    Case("progressive jpeg", lambda i: Raw(body=_converted(i, "L", "JPEG", progressive=True)), 200),
    # DICOM oddities
    Case("dicom declaring 65535x65535", _dicom_edit(_declare_size), 413),
    Case(
        "dicom without preamble",
        lambda i: Raw(body=_dicom_bytes(i.ct_dataset(), preamble=False)),
        200,
    ),
    Case("dicom with an unknown transfer syntax", _broken_transfer_syntax, 415),
    Case("dicom with float pixel data", _dicom_edit(_float_pixels), 422),
    Case("dicom with signed pixel data (valid)", _dicom_edit(_signed_pixels), 200),
    Case("rgb dicom", lambda i: Raw(body=i.dicom("c_dicom.dcm")), 422),
    Case("multi-frame angiography", lambda i: Raw(body=i.dicom("0002.dcm")), 422),
    Case("MR modality", _dicom_edit(_modality("MR")), 422),
    Case("XA modality", _dicom_edit(_modality("XA")), 422),
    Case("SR without pixels", _dicom_edit(_sr_without_pixels), 422),
    Case("dicom with a PatientName and no pixels", _dicom_edit(_named_without_pixels), 422),
    Case(
        "dicom cut inside its pixel data",
        lambda i: Raw(body=i.dicom("cap001__98C1066-ASAD_137_uncompressed.dcm")[:-5000]),
        400,
    ),
    # Studies
    Case("zip bomb (ratio)", lambda i: _study(zip_of({"IM0001.dcm": bytes(64 * MiB)})), 413),
    Case(
        "zip bomb (member count)",
        lambda i: _study(zip_of({f"IM{n:05d}.dcm": b"" for n in range(5000)})),
        413,
    ),
    Case("encrypted zip", lambda i: _study(_encryptedzip_of(i)), 415),
    Case("nested zip", lambda i: _study(zip_of({"inner.zip": zip_of({"IM0001.png": i.png})})), 422),
    Case("zip with corrupt deflate data", lambda i: _study(_corrupt_deflate(i)), 422),
    Case(
        "zip with path-like names (names are only reported)",
        lambda i: _study(zip_of({"../../etc/passwd": i.png, "/abs/IM0002.png": i.png})),
        200,
    ),
    Case("empty zip", lambda i: _study(zip_of({})), 400),
    Case(
        "study of 1-byte files",
        lambda i: _study(zip_of({f"IM{n}.png": b"\x89" for n in range(5)})),
        422,
    ),
    Case(
        "study of 101 multipart files",
        lambda i: Raw(
            path="/v1/predict/study",
            body=_multipart([("f", f"{n}.png", b"x") for n in range(101)]),
            headers=MULTIPART,
        ),
        413,
    ),
    Case("study with an empty body", lambda i: Raw(path="/v1/predict/study"), 400),
    # Multipart mistakes
    Case(
        "multipart without a boundary",
        lambda i: Raw(body=i.png, headers={"Content-Type": "multipart/form-data"}),
        400,
    ),
    Case(
        "multipart with the file in another field",
        lambda i: Raw(body=_multipart([("image", "a.png", i.png)]), headers=MULTIPART),
        400,
    ),
    Case(
        "two files on /v1/predict",
        lambda i: Raw(
            body=_multipart([("file", "a.png", i.png), ("file", "b.png", i.png)]), headers=MULTIPART
        ),
        400,
    ),
    Case(
        "multipart cut short",
        lambda i: Raw(body=b"--corpus-boundary\r\nContent-Disposition: form-", headers=MULTIPART),
        400,
    ),
    Case(
        "wrong content type (text/plain over a real png: the bytes decide)",
        lambda i: Raw(body=i.png, headers={"Content-Type": "text/plain"}),
        200,
    ),
    # The protocol
    Case(
        "negative Content-Length", lambda i: Raw(body=i.png, content_length="-5"), 400, ours=False
    ),
    Case(
        "Content-Length not a number",
        lambda i: Raw(body=i.png, content_length="12ab"),
        400,
        ours=False,
    ),
    Case(
        "Content-Length over the cap, body never sent",
        lambda i: Raw(content_length=str(9 * MiB)),
        413,
    ),
    Case(
        "Content-Length larger than the body, then a stall",
        lambda i: Raw(body=i.png, content_length=str(len(i.png) + 1000)),
        408,
    ),
    Case(
        "Content-Length smaller than the body",
        lambda i: Raw(body=i.png, content_length="100"),
        400,
        ours=False,  # the server drops the connection on the bytes past the declared end
    ),
    Case("chunked body over the cap", lambda i: Raw(chunks=_chunks(9 * MiB)), 413),
    Case(
        "chunked study over the cap",
        lambda i: Raw(path="/v1/predict/study", chunks=_chunks(33 * MiB)),
        413,
    ),
    Case(
        "a 100 kB header value",
        lambda i: Raw(body=i.png, headers={"X-Padding": "a" * 100_000}),
        431,
    ),
    Case(
        "a 1 MB header value (refused while it streams in)",
        lambda i: Raw(body=i.png, headers={"X-Padding": "a" * 1_000_000}),
        431,
    ),
    Case(
        "query flag with a bad value",
        lambda i: Raw(path="/v1/predict?heatmap=maybe", body=i.png),
        400,
    ),
    Case(
        "GET on the predict route",
        lambda i: Raw(method="GET", content_length=None),
        405,
    ),
    Case("unknown route", lambda i: Raw(path="/v1/predict/../../etc/passwd"), 404),
    Case(
        "admin call without its key",
        lambda i: Raw(
            path="/admin/v1/serving", body=b"{}", headers={"Content-Type": "application/json"}
        ),
        403,
    ),
]


def cases() -> Iterator[Case]:
    yield from CORPUS
