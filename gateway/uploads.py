"""Reading uploads with every size enforced while reading: one slice, a series, a zip.

A zip is never trusted: its member count is capped before anything is read, and members are
decompressed in 1 MiB chunks against a running byte cap, so a small archive that declares
small members but expands to gigabytes stops at the cap (a zip bomb costs at most the cap in
memory). Encrypted members, compression methods other than stored and deflate, nested
archives and corrupt streams are answered 4xx in our own words; the library's message goes to
the log only.
"""

from __future__ import annotations

import io
import logging
import zipfile
import zlib

from fastapi import Request

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger(__name__)

#: A zip starts with a local file header, or (empty) with the end-of-central-directory record.
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
CHUNK = 1 << 20
SUPPORTED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
#: What a broken archive or member raises inside zipfile/zlib (never the client's to read).
ZIP_FAULTS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError)


async def read_upload(request: Request, limit: int) -> bytes:
    """The slice's bytes: multipart field ``file``, or the raw body. 413 past ``limit``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLarge(f"upload of {declared} bytes; the limit is {limit}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as e:  # malformed multipart bodies raise assorted parser errors
            log.info("malformed multipart body: %s", e)
            raise BadRequest("malformed multipart body") from e
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest("multipart upload needs one file in the field named 'file'")
        data = await upload.read(limit + 1)
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


async def read_study(
    request: Request, max_slices: int, max_bytes: int, max_slice_bytes: int
) -> list[tuple[str, bytes]]:
    """Slices of one series: several multipart files (any field name), or one zip of them."""
    content_type = request.headers.get("content-type", "")
    items: list[tuple[str, bytes]] = []
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_slices + 1, max_fields=max_slices + 8)
        except Exception as e:  # malformed multipart bodies raise assorted parser errors
            log.info("malformed multipart body: %s", e)
            raise BadRequest("malformed multipart body") from e
        total = 0
        for _, value in form.multi_items():
            if isinstance(value, str):
                continue
            data = await value.read(max_bytes + 1)
            total += len(data)
            if total > max_bytes:
                raise PayloadTooLarge(f"study exceeds {max_bytes} bytes")
            items.append((value.filename or f"slice-{len(items)}", data))
    else:
        items = [("upload", await read_upload(request, max_bytes))]
    if len(items) == 1 and items[0][1][:4] in ZIP_MAGIC:
        items = unzip_slices(items[0][1], max_slices, max_bytes, max_slice_bytes)
    if not items:
        raise BadRequest("no slices: send files in a multipart body, or one zip")
    if len(items) > max_slices:
        raise PayloadTooLarge(f"{len(items)} slices; the limit is {max_slices}")
    return items


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as reported back: its last path part, printable, at most 100 chars."""
    base = info.filename.replace("\\", "/").rsplit("/", 1)[-1] or "member"
    return "".join(c if c.isprintable() else "?" for c in base)[:100]


def unzip_slices(
    blob: bytes, max_slices: int, max_bytes: int, max_slice_bytes: int
) -> list[tuple[str, bytes]]:
    """The files of one zip, each at most ``max_slice_bytes``, together at most ``max_bytes``."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except ZIP_FAULTS as e:
        log.info("unreadable zip: %s", e)
        raise BadRequest("unreadable zip: not a valid archive") from e
    if len(members) > max_slices:
        raise PayloadTooLarge(f"zip holds {len(members)} files; the limit is {max_slices}")
    if sum(m.file_size for m in members) > max_bytes:  # what it admits to; checked again below
        raise PayloadTooLarge(f"zip expands beyond {max_bytes} bytes")
    out: list[tuple[str, bytes]] = []
    total = 0
    with archive:
        for info in members:
            name = _member_name(info)
            if info.flag_bits & 0x1:
                raise UnsupportedMediaType(f"zip member {name!r} is encrypted")
            if info.compress_type not in SUPPORTED_COMPRESSION:
                raise UnsupportedMediaType(
                    f"zip member {name!r} uses compression method {info.compress_type}; "
                    "use stored or deflate"
                )
            chunks, size = [], 0
            try:
                with archive.open(info) as stream:
                    while chunk := stream.read(CHUNK):
                        size += len(chunk)
                        total += len(chunk)
                        if size > max_slice_bytes:
                            raise PayloadTooLarge(
                                f"zip member {name!r} expands beyond {max_slice_bytes} bytes"
                            )
                        if total > max_bytes:
                            raise PayloadTooLarge(f"zip expands beyond {max_bytes} bytes")
                        chunks.append(chunk)
            except ZIP_FAULTS as e:
                log.info("corrupt zip member %r: %s", name, e)
                raise BadRequest(f"zip member {name!r} is corrupt") from e
            data = b"".join(chunks)
            if data[:4] in ZIP_MAGIC:
                raise UnsupportedMediaType(f"zip member {name!r} is itself a zip; send one level")
            out.append((info.filename, data))
    return out
