"""``multipart/related`` both ways, as DICOMweb uses it (PS3.18 8.6): STOW-RS bodies the node
receives and sends, WADO-RS answers it reads.

``RelatedParser`` takes a body in chunks as it streams in (python-multipart's parser under
it) and hands each finished part to a callback, so a whole series is never held at once; of
a part over ``max_part_bytes`` only the head is kept (to name it), and it is marked too
large. ``encode_related`` writes a body from parts.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import Message

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from dicomnode.errors import DicomNodeError

DICOM = "application/dicom"
#: Bytes kept of a part over the cap: enough to read the header of the instance it held.
HEAD_BYTES = 64 * 1024


class MultipartError(DicomNodeError):
    """The body is not the ``multipart/related`` it claims to be (a bad Content-Type, no
    boundary, a malformed part); the message says what."""


class UnsupportedMedia(MultipartError):
    """The body is not ``multipart/related`` at all (another Content-Type, or none)."""


@dataclass(frozen=True)
class ContentType:
    """A parsed ``multipart/related`` Content-Type."""

    boundary: str
    type: str  # the ``type`` parameter: the media type of the root part ("" when absent)


def parse_content_type(header: str | None) -> ContentType:
    """The boundary and ``type`` of a ``multipart/related`` Content-Type header.

    Raises:
        UnsupportedMedia: not multipart/related.
        MultipartError: no boundary.
    """
    if not header:
        raise UnsupportedMedia("no Content-Type; expected multipart/related")
    message = Message()
    message["content-type"] = header
    if message.get_content_type() != "multipart/related":
        raise UnsupportedMedia(
            f"Content-Type {message.get_content_type()!r}; expected multipart/related"
        )
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary.strip() or len(boundary) > 70:
        raise MultipartError("multipart/related without a boundary (1 to 70 characters)")
    kind = message.get_param("type")
    return ContentType(boundary, kind.strip().lower() if isinstance(kind, str) else "")


@dataclass
class Part:
    """One part of a body: its headers (lower-case names) and bytes.

    Attributes:
        index: 0 for the first part.
        headers: header name (lower case) -> value.
        data: the bytes (only the first HEAD_BYTES when the part passed the cap).
        size: how many bytes the part had (kept or not).
        too_large: the part passed ``max_part_bytes`` and was not kept.
    """

    index: int
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    too_large: bool = False

    @property
    def content_type(self) -> str:
        """The part's media type, lower case, without parameters ("" when absent)."""
        raw = self.headers.get("content-type", "")
        return raw.split(";", 1)[0].strip().lower()

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter of the part's Content-Type, if any."""
        message = Message()
        message["content-type"] = self.headers.get("content-type", "")
        value = message.get_param("transfer-syntax")
        return value.strip() if isinstance(value, str) else None


class RelatedParser:
    """A streaming ``multipart/related`` parser.

    Args:
        boundary: the body's boundary.
        on_part: called with each part once it ends (in body order).
        max_part_bytes: a part with more bytes is not kept (``too_large``).
    """

    def __init__(self, boundary: str, on_part: Callable[[Part], None], max_part_bytes: int) -> None:
        self.on_part = on_part
        self.max_part_bytes = max_part_bytes
        self.parts = 0
        self.ended = False
        self._part: Part | None = None
        self._field = bytearray()
        self._value = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_part_end": self._end,
                "on_end": self._finish,
            },
            max_header_count=16,
        )

    def write(self, chunk: bytes) -> None:
        """Feed the next bytes of the body.

        Raises:
            MultipartError: the body is malformed here.
        """
        try:
            self._parser.write(chunk)
        except MultipartParseError as e:
            raise MultipartError(f"malformed multipart body: {e}") from e

    def close(self) -> None:
        """The body has ended.

        Raises:
            MultipartError: it ended before its closing boundary, or held no part.
        """
        if not self.ended:
            raise MultipartError("the multipart body ended before its closing boundary")
        if self.parts == 0:
            raise MultipartError("the multipart body holds no part")

    def _begin(self) -> None:
        self._part = Part(self.parts)
        self.parts += 1

    def _header_end(self) -> None:
        if self._part is not None:
            name = self._field.decode("latin-1").strip().lower()
            self._part.headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None:
            return
        part.size += end - start
        if part.size > self.max_part_bytes:
            part.too_large = True  # keep the head only: the header names the instance
        if part.too_large:
            room = max(0, HEAD_BYTES - len(part.data))
            part.data.extend(data[start : min(end, start + room)])
            del part.data[HEAD_BYTES:]
            return
        part.data.extend(data[start:end])

    def _end(self) -> None:
        part, self._part = self._part, None
        if part is not None:
            self.on_part(part)

    def _finish(self) -> None:
        self.ended = True


def parse_related(body: bytes, content_type: str, max_part_bytes: int) -> list[Part]:
    """Every part of a whole ``multipart/related`` body (a WADO-RS answer, a test's body).

    Raises:
        MultipartError: the Content-Type or the body is malformed.
    """
    parts: list[Part] = []
    parser = RelatedParser(parse_content_type(content_type).boundary, parts.append, max_part_bytes)
    parser.write(body)
    parser.close()
    return parts


def encode_related(
    parts: Iterable[bytes], media_type: str = DICOM, boundary: str | None = None
) -> tuple[str, bytes]:
    """A ``multipart/related`` body of ``parts``, each of ``media_type``; returns the
    Content-Type (with ``type`` and ``boundary``) and the body."""
    boundary = boundary or f"covidct-{secrets.token_hex(16)}"
    chunks: list[bytes] = []
    for data in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return f'multipart/related; type="{media_type}"; boundary={boundary}', b"".join(chunks)
