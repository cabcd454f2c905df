"""The audit log (JSON lines) and the salted UID hash every log line of the node uses.

Privacy rule of the node: no PatientName, PatientID, birth date or pixel data in any log, and
Study, Series and SOP Instance UIDs only as ``hash_uid(uid, salt)``. The audit log records what
happened to each series (time, calling AE, hashed study and series UID, instance count, verdict,
model version, result UIDs, delivery status); callers pass the UIDs in the clear and this module
hashes them, so no caller can forget to.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

SALT_FILE = "salt"


def hash_uid(uid: str, salt: str) -> str:
    """A short keyed hash of ``uid`` (HMAC-SHA256 with ``salt``, 16 hex digits): the same UID
    gives the same hash under one salt, so log lines of one series can be joined, while the UID
    cannot be recovered or confirmed without the salt."""
    digest = hmac.new(salt.encode(), uid.encode(), hashlib.sha256).hexdigest()
    return digest[:16]


def resolve_salt(spool_dir: Path, configured: str | None) -> str:
    """The configured salt, or the node's own random one kept in ``spool_dir/salt`` (made on
    first use, readable by the owner only), so hashes stay the same across restarts."""
    if configured:
        return configured
    path = spool_dir / SALT_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    spool_dir.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(salt)
        f.flush()
        os.fsync(f.fileno())
    return salt


class AuditLog:
    """Append-only JSON lines, one per event, safe to write from several threads.

    Args:
        path: the log file (appended to; created with its folder).
        salt: the salt of the hashed UIDs.
    """

    def __init__(self, path: Path, salt: str) -> None:
        self.path = path
        self.salt = salt
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def hash(self, uid: str | None) -> str | None:
        """``hash_uid`` with this log's salt (None stays None)."""
        return hash_uid(uid, self.salt) if uid else None

    def write(
        self,
        event: str,
        *,
        calling_ae: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
        instances: int | None = None,
        verdict: str | None = None,
        model_version: str | None = None,
        result_uids: Sequence[str] = (),
        delivery: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Append one event. UIDs are given in the clear and written hashed (result UIDs are
        the node's own, derived by a one-way hash, and written as they are).

        Args:
            event: what happened (association, refused, complete, skipped, processed,
                failed, delivered, purged, ...).
            calling_ae: the sender's AE title.
            study_uid: the source StudyInstanceUID.
            series_uid: the source SeriesInstanceUID.
            instances: instances of the series this event concerns.
            verdict: the series label.
            model_version: the model version that made the result.
            result_uids: SOP Instance UIDs of the results.
            delivery: delivery status (queued, delivered, failed: reason).
            reason: why (a refusal, a skip, a failure).
        """
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": event,
            "calling_ae": calling_ae,
            "study": self.hash(study_uid),
            "series": self.hash(series_uid),
            "instances": instances,
            "verdict": verdict,
            "model_version": model_version,
            "result_uids": list(result_uids),
            "delivery": delivery,
            "reason": reason,
        }
        line = json.dumps({k: v for k, v in entry.items() if v not in (None, [])})
        with self._lock:
            try:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError as e:
                # The audit log must not stop the node receiving; the failure is logged.
                logger.error("audit log %s not written: %s", self.path, e)
