"""Pull mode: for archives that cannot push, the node polls a DICOMweb server.

Every ``PULL_INTERVAL_S`` a QIDO-RS search asks for CT series with a SeriesDate from the
watermark on (``SeriesDate=YYYYMMDD-``, paged with ``limit``/``offset``), with their
instance counts. A series is retrieved (WADO-RS) once two polls in a row give it the same
count: stable in the archive. Its instances go through the same ``Intake`` as C-STORE and
STOW-RS (checked like a STOW-RS part), and from there the node's usual path applies (the
spool's completion ``STABLE_S`` after the last instance, selection, inference, results).

The state (``SPOOL/pull.json``, written atomically after each series) keeps the watermark
and, per series on or after it, the count last seen and whether that count was retrieved: a
restart neither retrieves a series twice nor misses one; a series that grows in the archive
is retrieved again (same SOP Instance UIDs: the spool replaces, the results keep their UIDs).
The watermark moves to the earliest SeriesDate still waiting, else the latest retrieved, and
series before it are forgotten, as is a waiting series no longer listed (deleted). A malformed
answer, an archive that does not answer in ``DICOMWEB_TIMEOUT_S``, or a failed retrieval is
logged and counted, and the next poll tries again; nothing half-retrieved is marked done.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from covidct.files import atomic_write_text
from dicomnode.dicomweb import DicomWebClient, DicomWebError, tag_value
from dicomnode.intake import Intake
from dicomnode.stow import StowIntake

logger = logging.getLogger(__name__)

SOURCE = "WADO-RS"
PAGE = 100  # QIDO-RS results per request
STUDY_UID, SERIES_UID, SERIES_DATE = "0020000D", "0020000E", "00080021"
INSTANCES = "00201209"  # Number of Series Related Instances


@dataclass
class Seen:
    """What the state keeps about one series of the archive."""

    study: str
    date: str
    count: int
    retrieved: bool = False


class Puller:
    """The poller of one DICOMweb archive.

    Args:
        client: the archive.
        intake: where retrieved instances go.
        state_path: the JSON file of the watermark and the series seen.
        since: the first SeriesDate (YYYYMMDD) when no state is kept; None: today.
        max_instance_bytes: the instance cap (a bigger instance is refused, as in STOW-RS).
        interval_s: seconds between polls (the thread's loop).
    """

    def __init__(
        self,
        client: DicomWebClient,
        intake: Intake,
        state_path: Path,
        since: str | None,
        max_instance_bytes: int,
        interval_s: float = 30.0,
    ) -> None:
        self.client = client
        self.intake = intake
        self.state_path = state_path
        self.max_instance_bytes = max_instance_bytes
        self.interval_s = interval_s
        self.watermark, self.seen = self._load(since)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load(self, since: str | None) -> tuple[str, dict[str, Seen]]:
        first = since or dt.date.today().strftime("%Y%m%d")
        if not self.state_path.is_file():
            return first, {}
        try:
            data = json.loads(self.state_path.read_text())
            return str(data["watermark"]), {k: Seen(**v) for k, v in data["series"].items()}
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.error("pull state %s unreadable (%s): from %s on", self.state_path, e, first)
            return first, {}

    def _save(self) -> None:
        data = {"watermark": self.watermark, "series": {k: asdict(v) for k, v in self.seen.items()}}
        atomic_write_text(self.state_path, json.dumps(data, indent=1))
        self.state_path.chmod(0o600)

    # -- one poll ----------------------------------------------------------------------------

    def search(self) -> list[tuple[str, Seen]]:
        """Every CT series of the archive from the watermark on: (series UID, what it is).

        Raises:
            DicomWebError: the archive did not answer, or answered malformed DICOM JSON.
        """
        found: list[tuple[str, Seen]] = []
        offset = 0
        while True:
            page = self.client.search_series(
                {
                    "Modality": "CT",
                    "SeriesDate": f"{self.watermark}-",
                    "includefield": f"{SERIES_DATE},{INSTANCES},{STUDY_UID}",
                    "limit": str(PAGE),
                    "offset": str(offset),
                }
            )
            for item in page:
                try:
                    found.append(_series(item))
                except DicomWebError as e:  # one bad result must not hide the others
                    self.intake.metrics.error(f"pull: {e}")
                    logger.warning("pull: result skipped: %s", e)
            if len(page) < PAGE:
                return found
            offset += len(page)

    def poll_once(self) -> int:
        """One poll: search, then retrieve every series stable since the last poll; the
        number retrieved.

        Raises:
            DicomWebError: the search failed (nothing changed; the next poll tries again).
        """
        retrieved = 0
        found = self.search()
        listed = {uid for uid, _ in found}
        gone = [k for k, v in self.seen.items() if k not in listed and not v.retrieved]
        for series_uid in gone:  # deleted from the archive before it was stable: forgotten
            del self.seen[series_uid]
        if gone:
            self._save()
        for series_uid, now in found:
            before = self.seen.get(series_uid)
            if before is not None and before.count == now.count:
                if before.retrieved:
                    continue
                try:
                    self.retrieve(series_uid, now)
                except DicomWebError as e:
                    self.intake.metrics.error(f"pull: retrieval failed: {e}")
                    logger.warning("pull: retrieval of a series failed: %s", e)
                    continue
                now.retrieved = True
                retrieved += 1
            self.seen[series_uid] = now
            self._save()
        self._advance()
        return retrieved

    def retrieve(self, series_uid: str, series: Seen) -> None:
        """WADO-RS of one series into the intake (each instance checked as a STOW-RS part).

        Raises:
            DicomWebError: the archive did not answer, or not with a multipart of DICOM.
        """
        started = time.perf_counter()
        with StowIntake(self.intake, series.study, source=SOURCE) as receiver:
            parts = self.client.retrieve_series(series.study, series_uid, self.max_instance_bytes)
            for part in parts:
                receiver.part(part)
        answer = receiver.response
        logger.info(
            "pull: series %s retrieved: %d kept, %d refused in %.2f s",
            self.intake.audit.hash(series_uid),
            len(answer.stored),
            len(answer.failed),
            time.perf_counter() - started,
        )

    def _advance(self) -> None:
        waiting = [s.date for s in self.seen.values() if not s.retrieved and s.date]
        done = [s.date for s in self.seen.values() if s.retrieved and s.date]
        mark = min(waiting) if waiting else max(done, default=self.watermark)
        if mark > self.watermark:
            self.watermark = mark
            self.seen = {k: v for k, v in self.seen.items() if v.date >= mark}
            self._save()

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except DicomWebError as e:
                self.intake.metrics.error(f"pull: {e}")
                logger.warning("pull: %s", e)
            except Exception:  # the thread must outlive any one bad poll
                logger.exception("pull: poll failed")
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        """Poll every ``interval_s`` from now on, in a thread."""
        self._thread = threading.Thread(target=self._run, name="pacs-pull", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the poll in progress (a retrieval half done is retrieved again)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.client.close()


def _series(item: dict[str, Any]) -> tuple[str, Seen]:
    """One QIDO-RS result as (series UID, Seen).

    Raises:
        DicomWebError: a UID missing or invalid, or a count that is not a number.
    """
    study, series = tag_value(item, STUDY_UID), tag_value(item, SERIES_UID)
    for name, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series)):
        if not isinstance(uid, str) or not UID(uid).is_valid:
            raise DicomWebError(f"QIDO-RS result without a valid {name}")
    count = tag_value(item, INSTANCES)
    try:
        number = int(count) if count is not None else 0
    except (TypeError, ValueError) as e:
        raise DicomWebError("QIDO-RS result with a malformed NumberOfSeriesRelatedInstances") from e
    date = tag_value(item, SERIES_DATE)
    return str(series), Seen(str(study), str(date or ""), number)
