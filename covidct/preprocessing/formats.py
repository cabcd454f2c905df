"""Which format the bytes are: decided by magic bytes, never by file name or declared type."""

from __future__ import annotations

from typing import Literal

from covidct.preprocessing.errors import EmptyInputError, UnsupportedFormatError

Source = Literal["png", "jpeg", "dicom"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
#: A DICOM stream without the 128-byte preamble (some archives export these): it starts with a
#: little-endian tag of group 0002 (file meta) or 0008 (identifying), element 00xx.
DICOM_STREAM_STARTS = (b"\x02\x00", b"\x08\x00")


def has_dicom_preamble(data: bytes) -> bool:
    """Whether ``data`` is a DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def sniff(data: bytes) -> Source:
    """Detect the format from magic bytes.

    Args:
        data: the encoded slice.

    Returns:
        "png", "jpeg" or "dicom".

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
    if has_dicom_preamble(data):
        return "dicom"
    if data[:2] in DICOM_STREAM_STARTS and data[3:4] == b"\x00" and len(data) > 8:
        return "dicom"  # no preamble: parsed without it (pydicom's force)
    raise UnsupportedFormatError(
        f"unsupported format: {len(data)} bytes starting {data[:8].hex(' ')} are not PNG, "
        "JPEG or DICOM (Part 10 file with 'DICM' at byte 128)"
    )
