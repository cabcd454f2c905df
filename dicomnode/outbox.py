"""The durable outbox: result objects wait on disk until the destination has stored them.

Each item is two files in the outbox folder (``dicomnode.outboxdisk``): ``<id>.dcm`` (the
DICOM object) and ``<id>.json`` (its record: destination, state, attempts, next attempt time,
last error), each written atomically and synced. A new ``Outbox`` on the same folder resumes
whatever was pending.

A sender thread delivers due items with C-STORE (``dicomnode.storescu``), one association per
destination and pass, or with STOW-RS (``dicomnode.dicomweb``), one request per batch, when
the destination is a DICOMweb root (``stow_url``): instead of a DIMSE destination, or beside
it (then each object is two items, one per destination, settled on their own). While the
destination is down (no connection, the association refused or aborted, HTTP 401/403/408/
429/5xx) an item waits ``initial_s``, doubled after each failed try up to ``max_s``, and is
kept forever. A transient failure status (DIMSE status, or STOW-RS Failure Reason) is
retried the same way up to ``max_refusals`` times; any other failure status, or a SOP class
the destination turns down, is a permanent refusal: recorded with its reason, not retried.
A delivered item's payload is deleted, its record kept. The item id derives from the SOP
Instance UID (and the kind of destination): putting the same object again replaces the item,
and a resend is harmless (same UIDs: the PACS keeps one copy). Without a destination (none
configured yet) items are kept and not sent; an outbox opened later with a destination sends
them there.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicomnode.audit import hash_uid
from dicomnode.dicomweb import DicomWebClient, is_url
from dicomnode.errors import DicomNodeError
from dicomnode.outboxdisk import DELIVERED, PENDING, REFUSED, Item, ItemFolder, encode
from dicomnode.settings import Destination, parse_destination
from dicomnode.storescu import REFUSED as REFUSED_NOW
from dicomnode.storescu import STORED, TRANSIENT_STATUS, Outcome, send_batch

__all__ = ["DELIVERED", "PENDING", "REFUSED", "Item", "Outbox", "OutboxError"]

log = logging.getLogger(__name__)

BATCH = 64  # items per association: the rest go in the next one at once


class OutboxError(DicomNodeError):
    """An object could not be put in the outbox (unreadable, no SOP Instance UID, disk)."""


class Outbox:
    """Result objects waiting for delivery, and the thread that delivers them.

    Args:
        folder: the outbox folder (created).
        destination: where new items go (each record keeps its own), and items put without
            one; None: items are kept, not sent.
        calling_aet: the node's AE title (the calling AE of each association).
        initial_s: first wait after a failed try; doubled each time.
        max_s: the longest wait between tries.
        timeout_s: network timeout of an association (connect, each answer).
        max_refusals: transient DIMSE failures an item may get before it is refused.
        salt: the salt of the hashed UIDs in the log (``dicomnode.audit.hash_uid``); a
            random one when not given.
        stow_url: a DICOMweb root results also (or, without ``destination``, only) go to.
        stow_token: the bearer token for ``stow_url``, if it asks for one.
        on_change: called with an item's new record after each put and settlement (for the
            audit log and the metrics), on the thread that made the change (``put``'s caller
            or the sender); it must not block.
    """

    def __init__(
        self,
        folder: Path,
        destination: Destination | None,
        calling_aet: str = "COVIDCT",
        initial_s: float = 2.0,
        max_s: float = 300.0,
        timeout_s: float = 30.0,
        max_refusals: int = 5,
        salt: str | None = None,
        on_change: Callable[[Item], None] | None = None,
        stow_url: str | None = None,
        stow_token: str | None = None,
    ) -> None:
        self.folder = folder
        self.destination = destination
        self.stow_url = stow_url.rstrip("/") if stow_url else None
        self.stow_token = stow_token
        self._clients: dict[str, DicomWebClient] = {}
        self.calling_aet = calling_aet
        self.initial_s, self.max_s, self.timeout_s = initial_s, max_s, timeout_s
        self.max_refusals = max_refusals
        self.salt = salt or secrets.token_hex(16)
        self.on_change = on_change
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.disk = ItemFolder(folder)
        self._items = self.disk.load()
        first = str(destination) if destination is not None else self.stow_url
        if first:  # items put while no destination was set go there now
            for item in [i for i in self._items.values() if i.state == PENDING]:
                if not item.destination:
                    self._items[item.id] = replace(item, destination=first)
                    self.disk.save(self._items[item.id])
        pending = sum(i.state == PENDING for i in self._items.values())
        log.info("outbox %s: %d pending of %d records", folder, pending, len(self._items))

    def destinations(self) -> list[str]:
        """Where a new object goes: the DIMSE destination and the STOW-RS root, those set;
        "" (kept until one is set) when neither is."""
        found = [d for d in (str(self.destination or ""), self.stow_url or "") if d]
        return found or [""]

    def put(self, obj: Dataset | Path, group: str | None = None) -> Item:
        """Place one DICOM object (a dataset, or a DICOM file) durably in the outbox, one item
        per destination; the sender thread sends them. Returns the first item's record.

        Raises:
            OutboxError: the object has no SOP Instance UID or cannot be read or written.
        """
        try:
            data = obj.read_bytes() if isinstance(obj, Path) else encode(obj)
            ds = pydicom.dcmread(obj, stop_before_pixels=True) if isinstance(obj, Path) else obj
            sop_uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        except (OSError, AttributeError, ValueError, pydicom.errors.InvalidDicomError) as e:
            raise OutboxError(f"not a DICOM object the outbox can send: {e}") from e
        if not sop_uid or not sop_class:
            raise OutboxError("the object has no SOP Instance UID or SOP Class UID")
        items = [self._put(sop_uid, sop_class, d, group, data) for d in self.destinations()]
        self._wake.set()
        return items[0]

    def _put(
        self, sop_uid: str, sop_class: str, destination: str, group: str | None, data: bytes
    ) -> Item:
        kind = "stow\n" if is_url(destination) else ""  # one item per kind of destination
        item_id = hashlib.sha256((kind + sop_uid).encode()).hexdigest()[:32]
        now = time.time()
        with self._lock:
            old = self._items.get(item_id)
            item = Item(
                item_id, sop_uid, sop_class, destination, group, created=now, next_attempt=now,
                revision=old.revision + 1 if old else 0,
            )  # fmt: skip
            try:
                self.disk.add(item, data)
            except OSError as e:
                raise OutboxError(f"cannot write to the outbox {self.folder}: {e}") from e
            self._items[item_id] = item
        log.info("outbox: %s queued for %s", hash_uid(sop_uid, self.salt), destination or "-")
        self._notify(item)
        return item

    # -- what it holds ---------------------------------------------------------------------

    def items(self) -> list[Item]:
        """Every record, oldest first."""
        with self._lock:
            return sorted(self._items.values(), key=lambda i: i.created)

    def get(self, item_id: str) -> Item | None:
        """One record by id."""
        with self._lock:
            return self._items.get(item_id)

    @property
    def depth(self) -> int:
        """Items still to deliver (for /status and the metrics)."""
        with self._lock:
            return sum(i.state == PENDING for i in self._items.values())

    def counts(self) -> dict[str, int]:
        """Records per state."""
        with self._lock:
            states = [i.state for i in self._items.values()]
        return {s: states.count(s) for s in (PENDING, DELIVERED, REFUSED)}

    def group_state(self, group: str) -> str | None:
        """``pending`` while any item of ``group`` is, else ``refused`` if any was refused,
        else ``delivered``; None when the group has no items."""
        with self._lock:
            states = {i.state for i in self._items.values() if i.group == group}
        for state in (PENDING, REFUSED, DELIVERED):
            if state in states:
                return state
        return None

    def forget(self, older_than_s: float) -> int:
        """Drop the records of items delivered more than ``older_than_s`` ago; their count."""
        cutoff = time.time() - older_than_s
        with self._lock:
            old = [
                i for i in self._items.values() if i.state == DELIVERED
                and (i.delivered_at or 0) < cutoff
            ]  # fmt: skip
            for item in old:
                self.disk.drop(item.id)
                del self._items[item.id]
        return len(old)

    # -- delivery --------------------------------------------------------------------------

    def deliver_due(self, now: float | None = None) -> int:
        """One pass: every due item sent (a batch per association); the number settled."""
        now = time.time() if now is None else now
        with self._lock:
            due = sorted(
                (
                    i
                    for i in self._items.values()
                    if i.state == PENDING and i.destination and i.next_attempt <= now
                ),
                key=lambda i: i.created,
            )
        settled = 0
        for destination in dict.fromkeys(i.destination for i in due):
            batch = [i for i in due if i.destination == destination]
            for start in range(0, len(batch), BATCH):
                if self._stopping.is_set():
                    return settled
                settled += self._send(destination, batch[start : start + BATCH])
        return settled

    def _send(self, destination: str, batch: list[Item]) -> int:
        if is_url(destination):
            client = self._clients.get(destination)
            if client is None:
                token = self.stow_token if destination == self.stow_url else None
                client = DicomWebClient(destination, token, self.timeout_s)
                self._clients[destination] = client
            paths = [self.disk.payload(i.id) for i in batch]
            outcomes = client.store(paths, [i.sop_instance_uid for i in batch])
            return sum(self._settle(i, o) for i, o in zip(batch, outcomes, strict=True))
        try:
            address = parse_destination(destination)
        except ValueError as e:  # a record edited by hand: it can never be sent
            outcomes = [Outcome(REFUSED_NOW, None, str(e))] * len(batch)
        else:
            paths = [self.disk.payload(i.id) for i in batch]
            outcomes = send_batch(address, self.calling_aet, paths, self.timeout_s)
        return sum(self._settle(i, o) for i, o in zip(batch, outcomes, strict=True))

    def _settle(self, sent: Item, outcome: Outcome) -> int:
        """Record one try's outcome; 1 when the item was delivered."""
        now = time.time()
        with self._lock:
            item = self._items.get(sent.id)
            if item is None or item.revision != sent.revision:
                return 0  # put again meanwhile: the new payload is still to send
            attempts = item.attempts + 1
            refusals = item.refusals + (outcome.kind == TRANSIENT_STATUS)
            if outcome.kind == STORED:
                item = replace(
                    item, state=DELIVERED, attempts=attempts, status=outcome.status,
                    delivered_at=now, last_error=outcome.reason,
                )  # fmt: skip
            elif outcome.kind == REFUSED_NOW or refusals >= self.max_refusals:
                item = replace(
                    item, state=REFUSED, attempts=attempts, refusals=refusals,
                    status=outcome.status, last_error=outcome.reason,
                )  # fmt: skip
            else:
                wait = min(self.max_s, self.initial_s * 2 ** min(attempts - 1, 30))
                item = replace(
                    item, attempts=attempts, refusals=refusals, next_attempt=now + wait,
                    status=outcome.status, last_error=outcome.reason,
                )  # fmt: skip
            self.disk.save(item)
            self._items[item.id] = item
        self._log(item)
        self._notify(item)
        return int(item.state == DELIVERED)

    def _log(self, item: Item) -> None:
        uid = hash_uid(item.sop_instance_uid, self.salt)
        if item.state == DELIVERED:
            log.info("outbox: %s stored by %s (try %d)", uid, item.destination, item.attempts)
        elif item.state == REFUSED:
            log.error("outbox: %s refused by %s: %s", uid, item.destination, item.last_error)
        else:
            wait = max(0.0, item.next_attempt - time.time())
            log.warning(
                "outbox: %s not stored (try %d): %s; next try in %.1f s",
                uid, item.attempts, item.last_error, wait,
            )  # fmt: skip

    def _notify(self, item: Item) -> None:
        if self.on_change is not None:
            try:
                self.on_change(item)
            except Exception:  # a faulty listener must not stop delivery
                log.exception("outbox listener failed")

    # -- the sender thread -----------------------------------------------------------------

    def _next_wait(self) -> float:
        with self._lock:
            items = self._items.values()
            times = [i.next_attempt for i in items if i.state == PENDING and i.destination]
        return min(max(0.0, min(times) - time.time()), 5.0) if times else 5.0

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.deliver_due()
            except Exception:  # the thread must outlive any one bad pass
                log.exception("outbox pass failed")
                self._stopping.wait(1.0)
            self._wake.wait(self._next_wait())

    def start(self) -> Outbox:
        """Start the sender thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the sender thread after the association in progress; pending items stay."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is pending (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self.depth:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def __enter__(self) -> Outbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
