"""The node's metrics and its ``/status`` document (served by ``dicomnode.web``).

Nothing here carries patient data: series appear by hashed UID only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from dicomnode.records import SeriesRecord
from dicomnode.settings import NodeSettings

logger = logging.getLogger(__name__)

#: Seconds from a series' last instance to its results handed to the outbox: covers the
#: stable wait (10 s by default) and a whole series through the gateway.
END_TO_END_BUCKETS = (1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)
LAST_ERRORS = 20
STATUS_SERIES = 50  # the latest series listed by /status


class NodeMetrics:
    """Prometheus metrics in a registry of the node's own, and the last errors for /status."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances_received = Counter(
            "covidct_pacs_instances_received_total", "Instances stored in the spool", registry=r
        )
        self.instances_refused = Counter(
            "covidct_pacs_instances_refused_total",
            "C-STORE requests answered with a failure status",
            ["status"],
            registry=r,
        )
        self.associations = Counter(
            "covidct_pacs_associations_total", "Associations", ["result"], registry=r
        )
        self.series_completed = Counter(
            "covidct_pacs_series_completed_total", "Series found stable and selected", registry=r
        )
        self.series_skipped = Counter(
            "covidct_pacs_series_skipped_total", "Series that get no result", registry=r
        )
        self.series_done = Counter(
            "covidct_pacs_series_done_total", "Series processed to a result", registry=r
        )
        self.series_failed = Counter(
            "covidct_pacs_series_failed_total", "Series whose processing failed", registry=r
        )
        self.end_to_end = Histogram(
            "covidct_pacs_end_to_end_seconds",
            "Last instance received to results handed to the outbox (stable wait included)",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.processing = Histogram(
            "covidct_pacs_processing_seconds",
            "One series through process (inference, SR and SC, queued)",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.outbox_depth = Gauge(
            "covidct_pacs_outbox_depth", "Results waiting to be delivered", registry=r
        )
        self.spool_bytes = Gauge(
            "covidct_pacs_spool_bytes", "Bytes of received instances held", registry=r
        )
        self._errors: deque[dict[str, Any]] = deque(maxlen=LAST_ERRORS)
        self._lock = threading.Lock()

    def error(self, what: str) -> None:
        """Remember an error for /status (``what`` carries no PHI: hashed UIDs only)."""
        with self._lock:
            self._errors.append({"time": time.time(), "error": what[:300]})

    def last_errors(self) -> list[dict[str, Any]]:
        """The latest errors, oldest first."""
        with self._lock:
            return list(self._errors)


def status_document(
    settings: NodeSettings,
    records: list[SeriesRecord],
    hash_uid: Callable[[str | None], str | None],
    *,
    dicom_port: int,
    associations: int,
    spool_bytes: int,
    outbox_depth: int | None,
    errors: list[dict[str, Any]],
) -> dict[str, Any]:
    """The /status document: the node, counts per state, the latest series by hashed UID."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.state.value] = counts.get(record.state.value, 0) + 1
    return {
        "ae_title": settings.ae_title,
        "dicom_port": dicom_port,
        "destination": settings.destination or None,
        "associations_active": associations,
        "spool_bytes": spool_bytes,
        "outbox_depth": outbox_depth,
        "counts": counts,
        "series": [_series(r, hash_uid) for r in records[-STATUS_SERIES:]],
        "last_errors": errors,
    }


def _series(record: SeriesRecord, hash_uid: Callable[[str | None], str | None]) -> dict[str, Any]:
    return {
        "series": hash_uid(record.series_uid),
        "study": hash_uid(record.study_uid),
        "state": record.state.value,
        "reason": record.reason,
        "instances": record.instance_count,
        "attempts": record.attempts,
        "first_received": record.first_received,
        "last_received": record.last_received,
        "completed_at": record.completed_at,
        "finished_at": record.finished_at,
        "delivered_at": record.delivered_at,
        "purged": record.purged_at is not None,
        "verdict": record.outcome.get("verdict"),
        "delivery": record.outcome.get("delivery"),
    }
