"""Builders of hostile files shared by the unit tests and the bad-input corpus."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``members`` (name -> bytes) compressed with ``method``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes, length: int | None = None) -> bytes:
    """One PNG chunk with a correct CRC; ``length`` may lie about the body's size."""
    size = len(body) if length is None else length
    return struct.pack(">I", size) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png_dims(side: int = 100_000) -> bytes:
    """A tiny PNG whose header declares ``side`` x ``side`` pixels."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 100))
        + png_chunk(b"IEND", b"")
    )
