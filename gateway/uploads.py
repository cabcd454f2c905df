"""Reading uploads with every size enforced while reading: one slice, a series, a zip.

The ASGI layer (``gateway.limits``) already caps every body. A slice is read into memory (at
most ``max_upload_bytes``). A study is never held whole: its body is spooled (memory up to
1 MiB, then a temporary file) and each slice is read from the spool only when its turn comes,
in a worker thread, so a study costs memory for the slices in flight, not for all of them.

A zip is never trusted: its member count is capped before anything is read, and members are
decompressed in 1 MiB chunks against a per-slice cap and a running study cap, so a small
archive that declares small members but expands to gigabytes stops at the cap. Encrypted
members and compression methods other than stored and deflate refuse the study; a corrupt or
nested member is that slice's own fault. The library's message goes to the log only.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import IO

import anyio
from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from gateway.errors import (
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    StudyTooLarge,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

#: A zip starts with a local file header, or (empty) with the end-of-central-directory record.
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
CHUNK = 1 << 20
SPOOL_IN_MEMORY = 1 << 20  # a study body past this goes to a temporary file
SUPPORTED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
#: What a broken archive or member raises inside zipfile/zlib (never the client's to read).
ZIP_FAULTS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError)


@dataclass(frozen=True)
class StudySlice:
    """One slice of a study: its name as sent, and how to read it (blocking: call it in a
    worker thread). ``read`` raises a ``GatewayError``: a ``StudyTooLarge`` ends the study,
    anything else is the slice's own fault."""

    name: str
    read: Callable[[], bytes]


async def _form(request: Request, max_files: int, max_fields: int) -> FormData:
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except GatewayError:  # the body cap or stall timeout, raised while parsing
        raise
    except HTTPException as e:  # starlette's own limits
        log.info("multipart body refused: %s", e.detail)
        if "Too many files" in str(e.detail):
            raise PayloadTooLarge(f"more than {max_files - 1} files in one request") from e
        raise BadRequest("malformed multipart body") from e
    except Exception as e:  # malformed multipart bodies raise assorted parser errors
        log.info("malformed multipart body: %s", e)
        raise BadRequest("malformed multipart body") from e


async def read_upload(request: Request, limit: int) -> bytes:
    """The slice's bytes: multipart field ``file``, or the raw body. 413 past ``limit``."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await _form(request, max_files=2, max_fields=8)
        try:
            uploads = [v for v in form.getlist("file") if isinstance(v, UploadFile)]
            if (
                len(uploads) != 1
                or sum(isinstance(v, UploadFile) for _, v in form.multi_items()) != 1
            ):
                raise BadRequest(
                    "multipart upload needs exactly one file, in the field named 'file'"
                )
            data = await uploads[0].read(limit + 1)
        finally:
            await form.close()
    else:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
    if len(data) > limit:
        raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
    return data


def _read_file(file: IO[bytes], cap: int, name: str) -> bytes:
    file.seek(0)
    data = file.read(cap + 1)
    if len(data) > cap:
        raise PayloadTooLarge(f"slice {name!r} is larger than {cap} bytes")
    return data


def _is_zip(file: IO[bytes]) -> bool:
    file.seek(0)
    return file.read(4) in ZIP_MAGIC


@asynccontextmanager
async def open_study(
    request: Request, max_slices: int, max_bytes: int, max_slice_bytes: int
) -> AsyncIterator[list[StudySlice]]:
    """Slices of one series: several multipart files (any field name), or one zip of them
    (multipart or raw body). The spooled files live until the block ends."""
    content_type = request.headers.get("content-type", "")
    files: list[tuple[str, IO[bytes]]]
    async with AsyncExitStack() as stack:
        if content_type.startswith("multipart/form-data"):
            form = await _form(request, max_files=max_slices + 1, max_fields=max_slices + 8)
            stack.push_async_callback(form.close)
            files = [
                (v.filename or "", v.file)
                for _, v in form.multi_items()
                if isinstance(v, UploadFile)
            ]
        else:
            spool = await _spool(request, max_bytes)
            stack.callback(spool.close)
            files = [("upload", spool)] if spool.tell() else []
        if len(files) == 1 and await anyio.to_thread.run_sync(_is_zip, files[0][1]):
            slices = await anyio.to_thread.run_sync(
                zip_slices, files[0][1], max_slices, max_bytes, max_slice_bytes
            )
        else:
            slices = [
                StudySlice(
                    name or f"slice-{i}",
                    lambda f=file, n=name: _read_file(f, max_slice_bytes, n),  # type: ignore[misc]
                )
                for i, (name, file) in enumerate(files)
            ]
        if not slices:
            raise BadRequest("no slices: send files in a multipart body, or one zip")
        if len(slices) > max_slices:
            raise PayloadTooLarge(f"{len(slices)} slices; the limit is {max_slices}")
        yield slices


async def _spool(request: Request, max_bytes: int) -> IO[bytes]:
    """The raw body in a spooled temporary file (memory up to 1 MiB), written off the loop."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
    try:
        pending, size = bytearray(), 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise StudyTooLarge(f"study exceeds {max_bytes} bytes")
            pending += chunk
            if len(pending) >= CHUNK:
                await anyio.to_thread.run_sync(spool.write, bytes(pending))
                pending.clear()
        spool.write(bytes(pending))
    except BaseException:
        spool.close()
        raise
    return spool


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as reported back: its last path part, printable, at most 100 chars."""
    base = info.filename.replace("\\", "/").rsplit("/", 1)[-1] or "member"
    return "".join(c if c.isprintable() else "?" for c in base)[:100]


class _Expansion:
    """The bytes a study's members expanded to so far, shared by the slices read at once."""

    def __init__(self, cap: int) -> None:
        self.cap, self.total, self.lock = cap, 0, threading.Lock()

    def add(self, size: int) -> None:
        with self.lock:
            self.total += size
            if self.total > self.cap:
                raise StudyTooLarge(f"zip expands beyond {self.cap} bytes")


def zip_slices(
    file: IO[bytes], max_slices: int, max_bytes: int, max_slice_bytes: int
) -> list[StudySlice]:
    """The members of one zip as slices, each at most ``max_slice_bytes``, together at most
    ``max_bytes`` once expanded. Checks what the directory says before any member is read."""
    try:
        file.seek(0)
        archive = zipfile.ZipFile(file)
        members = [m for m in archive.infolist() if not m.is_dir()]
    except ZIP_FAULTS as e:
        log.info("unreadable zip: %s", e)
        raise BadRequest("unreadable zip: not a valid archive") from e
    if len(members) > max_slices:
        raise PayloadTooLarge(f"zip holds {len(members)} files; the limit is {max_slices}")
    if sum(m.file_size for m in members) > max_bytes:  # what it admits to; checked again below
        raise StudyTooLarge(f"zip expands beyond {max_bytes} bytes")
    for info in members:
        name = _member_name(info)
        if info.flag_bits & 0x1:
            raise UnsupportedMediaType(f"zip member {name!r} is encrypted")
        if info.compress_type not in SUPPORTED_COMPRESSION:
            raise UnsupportedMediaType(
                f"zip member {name!r} uses compression method {info.compress_type}; "
                "use stored or deflate"
            )
    expansion = _Expansion(max_bytes)

    def read(info: zipfile.ZipInfo) -> bytes:
        name = _member_name(info)
        chunks, size = [], 0
        try:
            with archive.open(info) as stream:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    expansion.add(len(chunk))
                    if size > max_slice_bytes:
                        raise PayloadTooLarge(
                            f"zip member {name!r} expands beyond {max_slice_bytes} bytes"
                        )
                    chunks.append(chunk)
        except ZIP_FAULTS as e:
            log.info("corrupt zip member %r: %s", name, e)
            raise BadRequest(f"zip member {name!r} is corrupt") from e
        data = b"".join(chunks)
        if data[:4] in ZIP_MAGIC:
            raise UnsupportedMediaType(f"zip member {name!r} is itself a zip; send one level")
        return data

    return [StudySlice(m.filename, lambda m=m: read(m)) for m in members]  # type: ignore[misc]
