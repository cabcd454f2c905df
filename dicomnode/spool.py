"""The spool: received instances on disk, durably, one folder per series.

Layout (every name a hash, so no UID appears in a path)::

    SPOOL/series/<series key>/record.json      the SeriesRecord (state), atomic writes
    SPOOL/series/<series key>/instances.jsonl  one InstanceInfo per line, appended
    SPOOL/series/<series key>/<instance>.dcm   the instance as received (DICOM file format)

An instance counts as received only once it is on disk: written to a temporary file in its
folder, fsynced, renamed, the folder fsynced, and then its line appended to the journal and
fsynced; only then does the SCP answer success. What a crash leaves half-way (temporary files,
a file without its journal line, a journal line cut short) was never answered success and is
removed when the spool is opened again. Caps are checked before anything is written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from covidct.files import atomic_write_text
from dicomnode.errors import DicomNodeError
from dicomnode.records import InstanceInfo, SeriesRecord, SeriesState, series_key

logger = logging.getLogger(__name__)

RECORD = "record.json"
JOURNAL = "instances.jsonl"
TEMP_PREFIX = ".tmp-"
#: A new instance arriving while its series is processed: the result is made again after.
_REOPENABLE = {SeriesState.COMPLETE, SeriesState.SKIPPED, SeriesState.DONE, SeriesState.FAILED}


class CapExceeded(DicomNodeError):
    """An instance would take the spool over one of its caps (answered 0xA700)."""


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(folder: Path, name: str, data: bytes) -> None:
    """``data`` as ``folder/name``: temporary file, fsync, rename, fsync of the folder."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(folder)


class Spool:
    """Received series on disk, safe to use from the SCP's association threads and the worker.

    Args:
        root: the spool folder (created).
        max_instance_bytes: cap on one instance.
        max_series_instances: cap on the instances of one series.
        max_spool_bytes: cap on all instances held.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_instance_bytes: int,
        max_series_instances: int,
        max_spool_bytes: int,
    ) -> None:
        self.root = root
        self.series_root = root / "series"
        self.max_instance_bytes = max_instance_bytes
        self.max_series_instances = max_series_instances
        self.max_spool_bytes = max_spool_bytes
        self._lock = threading.RLock()
        self._records: dict[str, SeriesRecord] = {}
        self._instances: dict[str, dict[str, InstanceInfo]] = {}
        self._activity: dict[str, float] = {}  # monotonic time of the latest instance
        self._since: dict[str, float] = {}  # monotonic time it started receiving (again)
        self._held: dict[str, int] = {}  # open requests still delivering the series
        self._reopened: set[str] = set()
        self._reserved = 0
        self.used_bytes = 0
        self.series_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for folder in sorted(self.series_root.iterdir()):
            if folder.is_dir():
                self._load(folder)

    # --- opening -----------------------------------------------------------------------------

    def _load(self, folder: Path) -> None:
        for leftover in folder.glob(TEMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)
        try:
            record = SeriesRecord.from_json(json.loads((folder / RECORD).read_text("utf-8")))
        except FileNotFoundError:
            # Made just before a crash, before its first instance was answered: nothing kept.
            shutil.rmtree(folder, ignore_errors=True)
            return
        except (ValueError, TypeError, KeyError) as e:
            logger.error("spool folder %s has an unreadable record (%s): left alone", folder, e)
            return
        instances = self._read_journal(folder)
        for path in folder.glob("*.dcm"):
            if path.name not in {i.file for i in instances.values()}:
                path.unlink()  # renamed, but its journal line was never written: not answered
        if record.purged_at is None:  # the journal is the truth about what is held
            record.instance_count = len(instances)
            latest = (i.received_at for i in instances.values())
            record.last_received = max(latest, default=record.last_received)
        key = folder.name
        self._records[key] = record
        self._instances[key] = instances
        self._activity[key] = time.monotonic()  # a series being received gets STABLE_S again
        self._since[key] = self._activity[key]  # and MAX_SERIES_S
        self.used_bytes += sum(i.size for i in instances.values())

    def _read_journal(self, folder: Path) -> dict[str, InstanceInfo]:
        journal = folder / JOURNAL
        if not journal.is_file():
            return {}
        data = journal.read_bytes()
        if data and not data.endswith(b"\n"):
            # A line cut short by a crash: that instance was never answered success.
            data = data[: data.rfind(b"\n") + 1]
            with journal.open("r+b") as f:
                f.truncate(len(data))
        instances: dict[str, InstanceInfo] = {}
        for line in data.splitlines():
            try:
                info = InstanceInfo.from_json(json.loads(line))
            except (ValueError, TypeError) as e:
                logger.error("spool journal %s: a bad line skipped (%s)", journal, e)
                continue
            if (folder / info.file).is_file():
                instances[info.sop_uid] = info
        return instances

    # --- receiving ---------------------------------------------------------------------------

    def store(
        self,
        info: InstanceInfo,
        data: bytes,
        *,
        study_uid: str,
        series_uid: str,
        calling_ae: str,
    ) -> SeriesRecord:
        """Keep one instance durably; returns its series' record (a copy).

        Raises:
            CapExceeded: the instance, its series or the spool would exceed a cap; nothing
                was written.
            OSError: the disk failed (nothing counts as received).
        """
        key = series_key(series_uid)
        folder = self.series_root / key
        with self._lock:
            self._reserve(key, info)
            self._reserved += info.size
        try:
            with self._lock:
                record = self._open_series(key, folder, study_uid, series_uid, calling_ae)
            write_durably(folder, info.file, data)
            with self._lock:
                with (folder / JOURNAL).open("a", encoding="utf-8") as f:
                    f.write(json.dumps(info.to_json()) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                old = self._instances[key].get(info.sop_uid)
                self._instances[key][info.sop_uid] = info
                self.used_bytes += info.size - (old.size if old else 0)
                record.last_received = info.received_at
                record.instance_count = len(self._instances[key])
                self._activity[key] = time.monotonic()
                return replace(record)
        finally:
            with self._lock:
                self._reserved -= info.size

    def _reserve(self, key: str, info: InstanceInfo) -> None:
        if info.size > self.max_instance_bytes:
            raise CapExceeded(
                f"instance of {info.size} bytes: over the cap of {self.max_instance_bytes}"
            )
        held = self._instances.get(key, {})
        old = held.get(info.sop_uid)
        if old is None and len(held) >= self.max_series_instances:
            raise CapExceeded(f"series already holds its cap of {self.max_series_instances}")
        replaced = old.size if old else 0  # sent again: the new file replaces the old
        if self.used_bytes - replaced + self._reserved + info.size > self.max_spool_bytes:
            raise CapExceeded(f"spool full (cap {self.max_spool_bytes} bytes)")

    def _open_series(
        self, key: str, folder: Path, study_uid: str, series_uid: str, calling_ae: str
    ) -> SeriesRecord:
        """The series' record, made (or reopened for new instances) as needed."""
        now = time.time()
        record = self._records.get(key)
        if record is None:
            folder.mkdir(mode=0o700, exist_ok=True)
            record = SeriesRecord(series_uid, study_uid, first_received=now)
            self._records[key], self._instances[key] = record, {}
            self._since[key] = time.monotonic()
            self._save(record)
            fsync_dir(self.series_root)
        changed = False
        if record.state in _REOPENABLE:
            if record.purged_at is not None:  # its old instances are gone: a new start
                self._instances[key] = {}
                record.first_received = now
            self._reset(record)
            self._since[key] = time.monotonic()
            changed = True
        elif record.state is SeriesState.PROCESSING:
            self._reopened.add(key)
        if calling_ae not in record.calling_aes:
            record.calling_aes.append(calling_ae)
            changed = True
        if changed:
            self._save(record)
        return record

    @staticmethod
    def _reset(record: SeriesRecord) -> None:
        record.state, record.reason, record.attempts = SeriesState.RECEIVING, None, 0
        record.completed_at = record.started_at = record.finished_at = None
        record.delivered_at = record.purged_at = record.retry_at = None

    # --- the node's view ---------------------------------------------------------------------

    def records(self) -> list[SeriesRecord]:
        """Every series' record (copies), oldest first."""
        with self._lock:
            return sorted((replace(r) for r in self._records.values()), key=_first)

    def record(self, key: str) -> SeriesRecord:
        """One series' record (a copy).

        Raises:
            DicomNodeError: no such series.
        """
        with self._lock:
            if key not in self._records:
                raise DicomNodeError(f"no series {key} in the spool")
            return replace(self._records[key])

    def instances(self, key: str) -> list[InstanceInfo]:
        """The instances held for a series, in the order received."""
        with self._lock:
            return sorted(self._instances.get(key, {}).values(), key=lambda i: i.received_at)

    def path(self, key: str, info: InstanceInfo) -> Path:
        """Where an instance's file is."""
        return self.series_root / key / info.file

    def quiet_s(self, key: str) -> float:
        """Seconds since the series' latest instance (monotonic; from the spool's opening
        for series received before it); 0 while a request delivering it is still open
        (``hold``)."""
        with self._lock:
            if self._held.get(key):
                return 0.0
            return time.monotonic() - self._activity.get(key, 0.0)

    def hold(self, key: str) -> None:
        """A request delivering this series is open (a STOW-RS request, a pull's WADO-RS
        retrieval): the series is not quiet until the request ``release``s it, however long
        it pauses between instances. ``MAX_SERIES_S`` still applies (``receiving_s``)."""
        with self._lock:
            self._held[key] = self._held.get(key, 0) + 1

    def release(self, key: str) -> None:
        """A request that held the series (``hold``) has ended: ``STABLE_S`` counts from now."""
        with self._lock:
            left = self._held.get(key, 0) - 1
            if left > 0:
                self._held[key] = left
            else:
                self._held.pop(key, None)
            self._activity[key] = time.monotonic()

    def receiving_s(self, key: str) -> float:
        """Seconds since the series started receiving (or received again after it was
        settled; monotonic, from the spool's opening for series received before it)."""
        with self._lock:
            return time.monotonic() - self._since.get(key, 0.0)

    def update(
        self, key: str, *, expect: SeriesState | None = None, **changes: Any
    ) -> SeriesRecord | None:
        """Change fields of a series' record and save it; returns the new record (a copy), or
        None when ``expect`` is given and the series is in another state (nothing changed).

        A series that received new instances while it was processed goes back to receiving
        instead of ending done or failed, so its result is made again from all of them.
        """
        with self._lock:
            record = self._records[key]
            if expect is not None and record.state is not expect:
                return None
            ending = changes.get("state") in (SeriesState.DONE, SeriesState.FAILED)
            if record.state is SeriesState.PROCESSING and key in self._reopened and ending:
                self._reopened.discard(key)
                self._reset(record)
                changes = {"outcome": changes.get("outcome", record.outcome)}
            elif "state" in changes:
                self._reopened.discard(key)
            for name, value in changes.items():
                setattr(record, name, value)
            self._save(record)
            return replace(record)

    def settle(
        self,
        key: str,
        stable_s: float,
        reason_of: Callable[[list[InstanceInfo]], str | None],
        max_s: float = math.inf,
    ) -> SeriesRecord | None:
        """Mark a series complete (or skipped, with ``reason_of``'s reason) if it is still
        receiving and has had no instance for ``stable_s`` seconds; one step under the lock,
        so an instance arriving meanwhile keeps it receiving. A series still receiving
        ``max_s`` seconds after it started is skipped, with that reason: a sender that never
        stops must not hold it forever. Returns the new record or None.
        """
        with self._lock:
            record = self._records.get(key)
            if record is None or record.state is not SeriesState.RECEIVING:
                return None
            if self.quiet_s(key) >= stable_s:
                reason = reason_of(self.instances(key))
            elif self.receiving_s(key) >= max_s:
                reason = f"still receiving after {max_s:g} s (MAX_SERIES_S)"
            else:
                return None
            state = SeriesState.SKIPPED if reason else SeriesState.COMPLETE
            return self.update(key, state=state, reason=reason, completed_at=time.time())

    def purge(self, key: str) -> None:
        """Delete a series' instance files (the record stays, marked purged)."""
        with self._lock:
            folder = self.series_root / key
            for info in self._instances.pop(key, {}).values():
                (folder / info.file).unlink(missing_ok=True)
                self.used_bytes -= info.size
            self._instances[key] = {}
            (folder / JOURNAL).unlink(missing_ok=True)
            self._records[key].purged_at = time.time()
            self._save(self._records[key])
            fsync_dir(folder)

    def _save(self, record: SeriesRecord) -> None:
        folder = self.series_root / record.key
        atomic_write_text(folder / RECORD, json.dumps(record.to_json(), indent=1), mode=0o600)
        fsync_dir(folder)


def _first(record: SeriesRecord) -> float:
    return record.first_received
