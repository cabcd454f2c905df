"""The outbox on disk: one record (``<id>.json``) and one payload (``<id>.dcm``) per item.

Writes go to a temporary name, are synced and renamed, the payload before its record, and the
folder is synced after a new item: a record on disk always has its payload. ``load`` removes
what a crash can leave (temporary files, a payload without a record) and sets aside a record
it cannot read. Settling an item rewrites its record without syncing the folder: a crash
just after may bring back the old (pending) record, and the object is sent once more, which
is harmless (the same UIDs).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from covidct.files import atomic_write_text

log = logging.getLogger(__name__)

PENDING, DELIVERED, REFUSED = "pending", "delivered", "refused"


@dataclass(frozen=True)
class Item:
    """One object's record (``<id>.json``).

    Attributes:
        id: the file stem: a hash of the destination and the SOP Instance UID.
        sop_instance_uid: the object's SOP Instance UID (on disk only, never logged).
        sop_class_uid: its SOP Class UID.
        destination: ``AET@host:port``.
        group: the caller's key (e.g. the source series), to ask about several items at once.
        state: ``pending``, ``delivered`` or ``refused``.
        attempts: tries so far (associations asked for, or C-STOREs sent).
        refusals: transient DIMSE failures so far.
        created: when it was put (epoch seconds).
        next_attempt: not tried before this time (epoch seconds).
        last_error: why the last try failed, or why it was refused.
        status: the last DIMSE status answered, if any.
        delivered_at: when it was stored (epoch seconds).
        revision: bumped by each ``put`` of the same object (a try started before it does
            not settle the new payload).
    """

    id: str
    sop_instance_uid: str
    sop_class_uid: str
    destination: str
    group: str | None = None
    state: str = PENDING
    attempts: int = 0
    refusals: int = 0
    created: float = 0.0
    next_attempt: float = 0.0
    last_error: str | None = None
    status: int | None = None
    delivered_at: float | None = None
    revision: int = 0


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a synced temporary file and one rename."""
    tmp = path.with_name(f".tmp-{path.name}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def encode(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


class ItemFolder:
    """The records and payloads of one outbox folder (the caller holds the lock)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, Item]:
        """Records on disk; temporary files and payloads without a record are removed."""
        for tmp in self.folder.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)
        items: dict[str, Item] = {}
        for path in sorted(self.folder.glob("*.json")):
            try:
                item = Item(**json.loads(path.read_text()))
            except (ValueError, TypeError) as e:
                log.error("outbox record %s unreadable, left aside: %s", path.name, e)
                path.rename(path.with_suffix(".unreadable"))
                continue
            if item.state == PENDING and not self.payload(item.id).exists():
                item = replace(item, state=REFUSED, last_error="payload missing from the outbox")
                self.save(item)
            items[item.id] = item
        for payload in self.folder.glob("*.dcm"):
            if payload.stem not in items or items[payload.stem].state != PENDING:
                payload.unlink()  # a put that crashed before its record, or a settled item
        return items

    def payload(self, item_id: str) -> Path:
        return self.folder / f"{item_id}.dcm"

    def save(self, item: Item) -> None:
        """The record, atomically; a settled item's payload is deleted."""
        atomic_write_text(self.folder / f"{item.id}.json", json.dumps(asdict(item)))
        if item.state != PENDING:
            self.payload(item.id).unlink(missing_ok=True)

    def add(self, item: Item, data: bytes) -> None:
        """A new (or replaced) item: payload, record, then the folder synced."""
        _write_bytes(self.payload(item.id), data)
        self.save(item)
        _fsync_dir(self.folder)

    def drop(self, item_id: str) -> None:
        (self.folder / f"{item_id}.json").unlink(missing_ok=True)
        self.payload(item_id).unlink(missing_ok=True)
