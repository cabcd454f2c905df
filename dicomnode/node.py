"""The DICOM node: the SCP, a completion watcher, one worker, the status server, and the
state of every series in the spool.

Threads: pynetdicom's (one per association) store instances; the watcher finds series that
have been quiet for ``STABLE_S`` seconds and marks them complete or skipped (with the reason);
the worker hands each complete series to ``process`` (inference, SR and SC, outbox: wired in
by the caller), one at a time, oldest first. Every state change is saved in the series' record
first, so a restart carries on: a series left processing is processed again, one being
received completes ``STABLE_S`` after the restart. SIGTERM stops accepting associations, lets
those in progress finish, and keeps the spool.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from covidct.addresses import host_port
from dicomnode.audit import AuditLog, resolve_salt
from dicomnode.dicomweb import DicomWebClient
from dicomnode.errors import DicomNodeError
from dicomnode.intake import Intake
from dicomnode.pull import Puller
from dicomnode.records import SeriesRecord, SeriesState, series_key
from dicomnode.scp import Receiver
from dicomnode.series import SelectionRules, Series, load_series, selection_reason, stable_keys
from dicomnode.settings import NodeSettings
from dicomnode.spool import Spool
from dicomnode.status import NodeMetrics, status_document
from dicomnode.viewer import ViewStore
from dicomnode.web import WebServer, create_app

logger = logging.getLogger(__name__)

#: Longest a SIGTERM waits for the association in progress.
DRAIN_S = 30.0
SWEEP_EVERY_S = 10.0  # deliveries noted, source instances purged
PULL_STATE = "pull.json"  # pull mode's watermark and series seen, in the spool


@dataclass(frozen=True)
class Outcome:
    """What ``process`` reports about a series it handled (for the record and the audit log).

    Attributes:
        verdict: the series label.
        model_version: the model version that made the result.
        result_uids: SOP Instance UIDs of the results (SR, Secondary Captures).
        delivery: where the results are (queued in the outbox, delivered).
    """

    verdict: str | None = None
    model_version: str | None = None
    result_uids: tuple[str, ...] = ()
    delivery: str | None = "queued"


#: Turns one complete, selected series into results; raising marks the attempt failed.
Process = Callable[[Series], Outcome | None]


def _listen_error(what: str, host: str, port: int, setting: str, e: OSError) -> DicomNodeError:
    reason = "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
    return DicomNodeError(
        f"cannot listen for {what} on {host_port(host, port)}: {reason} (set {setting})"
    )


class Node:
    """One DICOM node over one spool.

    Args:
        settings: the node's settings.
        process: what each complete, selected series goes through.
        outbox_depth: results waiting for delivery (for /status and /metrics), if known.
        delivery_state: where a series' results are, by its SeriesInstanceUID (the outbox's
            ``pending``, ``delivered`` or ``refused``), asked at each sweep; instead of it,
            the outbox may call ``delivered``.
    """

    def __init__(
        self,
        settings: NodeSettings,
        process: Process,
        *,
        outbox_depth: Callable[[], int] | None = None,
        delivery_state: Callable[[str], str | None] | None = None,
    ) -> None:
        self.settings = settings
        self.process = process
        self.outbox_depth = outbox_depth
        self.delivery_state = delivery_state
        self.rules = SelectionRules.from_settings(settings)
        self.metrics = NodeMetrics()
        if outbox_depth is not None:
            self.metrics.outbox_depth.set_function(lambda: float(outbox_depth()))
        secret = settings.audit_salt.get_secret_value() if settings.audit_salt else None
        self.audit = AuditLog(settings.audit_path, resolve_salt(settings.spool_dir, secret))
        self.spool = Spool(
            settings.spool_dir,
            max_instance_bytes=settings.max_instance_bytes,
            max_series_instances=settings.max_series_instances,
            max_spool_bytes=settings.max_spool_bytes,
        )
        self.metrics.spool_bytes.set(self.spool.used_bytes)
        self.intake = Intake(self.spool, self.audit, self.metrics)
        self.receiver = Receiver(settings, self.intake)
        self.views = ViewStore(settings.spool_dir, settings.view_keep_hours)
        self.http_server: WebServer | None = None
        self.puller = self._puller(settings)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_sweep = 0.0
        self._recover()

    def _puller(self, settings: NodeSettings) -> Puller | None:
        if not settings.pull_url:
            return None
        token = settings.dicomweb_token.get_secret_value() if settings.dicomweb_token else None
        client = DicomWebClient(settings.pull_url, token, settings.dicomweb_timeout_s)
        return Puller(
            client,
            self.intake,
            settings.spool_dir / PULL_STATE,
            settings.pull_since or None,
            settings.max_instance_bytes,
            settings.pull_interval_s,
        )

    # --- life cycle --------------------------------------------------------------------------

    def _recover(self) -> None:
        for record in self.spool.records():
            if record.state is SeriesState.PROCESSING:  # stopped mid-way: do it again
                self.spool.update(record.key, state=SeriesState.COMPLETE, retry_at=None)
                logger.info("series %s was being processed: queued again", self._h(record))

    def start(self, *, http: bool = True) -> None:
        """Listen for DICOM (and HTTP: status, metrics, STOW-RS), and start the watcher and
        the worker.

        Raises:
            DicomNodeError: a port cannot be listened on (in use, not allowed); the port and
                its setting are named, and nothing this call started keeps listening.
        """
        host = self.settings.host
        try:
            self.receiver.start()
        except OSError as e:
            raise _listen_error("DICOM", host, self.settings.port, "COVIDCT_PACS_PORT", e) from e
        if http:
            app = create_app(self.settings, self.status, self.metrics, self.intake, self.views)
            try:
                self.http_server = WebServer(host, self.settings.http_port, app)
            except OSError as e:
                self.receiver.stop(0)
                port = self.settings.http_port
                raise _listen_error("HTTP", host, port, "COVIDCT_PACS_HTTP_PORT", e) from e
            self.http_server.start()
            logger.info("HTTP on http://%s:%d", self.settings.host, self.http_server.port)
        if self.puller is not None:
            self.puller.start()
            logger.info("pulling CT series from %s", self.settings.pull_url)
        for name, loop in (("pacs-watcher", self._watch), ("pacs-worker", self._work)):
            thread = threading.Thread(target=loop, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, drain_s: float = DRAIN_S) -> None:
        """Stop accepting associations, let those open finish (up to ``drain_s``), stop the
        threads (a series being processed finishes first, for up to ``drain_s`` more; if not,
        it is processed again after a restart). The spool stays as it is."""
        self.receiver.stop(drain_s)
        if self.puller is not None:
            self.puller.stop(drain_s)
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=drain_s)
        if self.http_server is not None:
            self.http_server.stop()
        logger.info("DICOM node stopped; the spool is kept in %s", self.settings.spool_dir)

    def _watch(self) -> None:
        interval = min(0.5, self.settings.stable_s / 4)
        while not self._stop.wait(interval):
            try:
                if self.check_stable():
                    self._wake.set()
                if time.monotonic() - self._last_sweep >= SWEEP_EVERY_S:
                    self._last_sweep = time.monotonic()
                    self.sweep()
            except Exception:
                logger.exception("completion watcher")

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while not self._stop.is_set() and self.work_once():
                pass

    # --- the steps (each callable on its own: tests drive them) ------------------------------

    def check_stable(self) -> int:
        """Mark every series quiet for ``STABLE_S`` complete or skipped, and every series
        receiving for ``MAX_SERIES_S`` skipped; returns how many."""
        settled = 0
        s = self.settings
        for key in stable_keys(self.spool, s.stable_s, s.max_series_s):
            record = self.spool.settle(
                key, s.stable_s, lambda items: selection_reason(items, self.rules), s.max_series_s
            )
            if record is None:
                continue
            settled += 1
            if record.state is SeriesState.SKIPPED:
                self.metrics.series_skipped.inc()
                logger.info("series %s skipped: %s", self._h(record), record.reason)
                self._audit("skipped", record, reason=record.reason)
            else:
                self.metrics.series_completed.inc()
                logger.info(
                    "series %s complete: %d instances", self._h(record), record.instance_count
                )
                self._audit("complete", record)
        return settled

    def work_once(self) -> bool:
        """Process the oldest complete series that is due; False when none is."""
        now = time.time()
        due = [
            r
            for r in self.spool.records()
            if r.state is SeriesState.COMPLETE and (r.retry_at is None or r.retry_at <= now)
        ]
        for record in sorted(due, key=lambda r: r.completed_at or 0.0):
            claimed = self.spool.update(
                record.key,
                expect=SeriesState.COMPLETE,
                state=SeriesState.PROCESSING,
                started_at=now,
                attempts=record.attempts + 1,
                retry_at=None,
            )
            if claimed is not None:
                self._process(claimed)
                return True
        return False

    def _process(self, record: SeriesRecord) -> None:
        series = load_series(self.spool, record)
        started = time.monotonic()
        try:
            outcome = self.process(series) or Outcome()
        except Exception as e:
            self._failed(record, f"{type(e).__name__}: {e}"[:300])
            return
        self.metrics.processing.observe(time.monotonic() - started)
        finished = time.time()
        delivered = finished if outcome.delivery == "delivered" else None
        done = self.spool.update(
            record.key,
            state=SeriesState.DONE,
            reason=None,
            finished_at=finished,
            delivered_at=delivered,
            outcome=asdict(outcome),
        )
        if done is None or done.state is not SeriesState.DONE:
            logger.info("series %s received more instances meanwhile: again", self._h(record))
            return
        self.metrics.series_done.inc()
        self.metrics.end_to_end.observe(finished - series.received_at)
        logger.info("series %s done: %s", self._h(record), outcome.verdict)
        self._audit(
            "processed",
            done,
            verdict=outcome.verdict,
            model_version=outcome.model_version,
            result_uids=outcome.result_uids,
            delivery=outcome.delivery,
        )

    def _failed(self, record: SeriesRecord, reason: str) -> None:
        attempts = record.attempts
        if attempts < self.settings.process_attempts:
            wait = self.settings.retry_backoff_s * 2 ** (attempts - 1)
            changes: dict[str, Any] = {
                "state": SeriesState.COMPLETE,
                "retry_at": time.time() + wait,
            }
            logger.warning(
                "series %s attempt %d failed (%s): again in %.0f s",
                self._h(record),
                attempts,
                reason,
                wait,
            )
        else:
            changes = {"state": SeriesState.FAILED, "finished_at": time.time()}
            self.metrics.series_failed.inc()
            logger.error(
                "series %s failed after %d attempts: %s", self._h(record), attempts, reason
            )
        failed = self.spool.update(record.key, reason=reason, **changes)
        self.metrics.error(f"series {self._h(record)}: {reason}")
        if failed is not None and failed.state is SeriesState.FAILED:
            self._audit("failed", failed, reason=reason)

    def delivered(
        self, series_uid: str, status: str = "delivered", result_uids: Sequence[str] = ()
    ) -> None:
        """Record a delivery status the outbox reports for a series' results ("delivered"
        starts the keep-hours clock of its source instances)."""
        key = series_key(series_uid)
        changes: dict[str, Any] = {}
        if status == "delivered":
            changes["delivered_at"] = time.time()
        record = self.spool.update(key, **changes) if changes else self.spool.record(key)
        if record is not None:
            self._audit("delivery", record, delivery=status, result_uids=result_uids)

    def sweep(self) -> int:
        """Note deliveries (``delivery_state``), then delete the source instances of series
        delivered (or skipped) ``keep_hours`` ago, and the viewer's copies older than
        ``view_keep_hours``; returns how many series were purged."""
        keep_s = self.settings.keep_hours * 3600
        purged = 0
        for record in self.spool.records():
            if record.purged_at is not None or record.instance_count == 0:
                continue
            if record.state is SeriesState.DONE and record.delivered_at is None:
                record = self._poll_delivery(record)
            since = {
                SeriesState.DONE: record.delivered_at,
                SeriesState.SKIPPED: record.completed_at,
            }.get(record.state)
            if since is not None and since <= time.time() - keep_s:
                self.spool.purge(record.key)
                purged += 1
                self._audit("purged", record)
        if purged:
            self.metrics.spool_bytes.set(self.spool.used_bytes)
        self.views.sweep()
        return purged

    def _poll_delivery(self, record: SeriesRecord) -> SeriesRecord:
        state = self.delivery_state(record.series_uid) if self.delivery_state else None
        if state is None or state == record.outcome.get("delivery"):
            return record
        outcome = {**record.outcome, "delivery": state}
        changes: dict[str, Any] = {"outcome": outcome}
        if state == "delivered":
            changes["delivered_at"] = time.time()
        updated = self.spool.update(record.key, expect=SeriesState.DONE, **changes)
        if updated is None:
            return record
        self._audit("delivery", updated, delivery=state, result_uids=outcome.get("result_uids", ()))
        return updated

    # --- reporting ---------------------------------------------------------------------------

    def _h(self, record: SeriesRecord) -> str | None:
        return self.audit.hash(record.series_uid)

    def _audit(self, event: str, record: SeriesRecord, **fields: Any) -> None:
        self.audit.write(
            event,
            calling_ae=",".join(record.calling_aes) or None,
            study_uid=record.study_uid,
            series_uid=record.series_uid,
            instances=record.instance_count,
            **fields,
        )

    def status(self) -> dict[str, Any]:
        """The /status document: counts, the latest series (hashed UIDs), the last errors."""
        return status_document(
            self.settings,
            self.spool.records(),
            self.audit.hash,
            dicom_port=self.receiver.port,
            associations=self.receiver.active(),
            spool_bytes=self.spool.used_bytes,
            outbox_depth=self.outbox_depth() if self.outbox_depth is not None else None,
            errors=self.metrics.last_errors(),
        )
