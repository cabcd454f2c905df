"""What the node does with a complete, selected series: one inference path, one report, one
outbox.

``ResultPipeline`` is the ``process`` of ``dicomnode.node.Node``: the series' files go to the
gateway's study path (``dicomnode.inference``: one model version, the summary the gateway
computes), the verdict becomes a TID 1500 SR and heatmap Secondary Captures in the source
study (``dicomnode.report``, ``dicomnode.capture``: UIDs derived from the source series and
the model version, so a reprocessing files the same objects), and those go into the durable
outbox, grouped by the series, for the sender to deliver; the study viewer's copy is kept
(``dicomnode.viewer``). ``serve`` is ``covidct pacs serve``.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time

import pydicom

from dicomnode.audit import resolve_salt
from dicomnode.capture import build_captures
from dicomnode.inference import infer_series
from dicomnode.node import Node, Outcome
from dicomnode.outbox import Outbox
from dicomnode.outboxdisk import encode
from dicomnode.report import build_sr
from dicomnode.series import Series
from dicomnode.settings import NodeSettings
from dicomnode.viewer import save_view

log = logging.getLogger(__name__)

OUTBOX_FOLDER = "outbox"


class ResultPipeline:
    """Series in, result objects queued in ``outbox`` (the node's ``process``)."""

    def __init__(self, settings: NodeSettings, outbox: Outbox) -> None:
        self.settings = settings
        self.outbox = outbox
        #: Seconds of the last series' parts (infer, build, queue, the viewer's copy): for
        #: ``covidct bench pacs``.
        self.timings: dict[str, float] = {}

    def __call__(self, series: Series) -> Outcome:
        s = self.settings
        key = s.gateway_api_key.get_secret_value() if s.gateway_api_key else None
        started = time.perf_counter()
        verdict = infer_series(series.paths, s.gateway_url, key, s.top_k, s.gateway_timeout_s)
        inferred = time.perf_counter()
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.paths]
        created = dt.datetime.now(dt.UTC).replace(microsecond=0)  # the same in SR and SC
        results = [
            build_sr(headers, verdict, created=created),
            *build_captures(headers, verdict, created=created),
        ]
        built = time.perf_counter()
        for result in results:
            self.outbox.put(result, group=series.series_uid)
        queued = time.perf_counter()
        if s.view_keep_hours > 0:  # after queuing: the results do not wait for the viewer
            sr = results[0]
            save_view(
                s.spool_dir, series.series_uid, series.paths, headers, verdict, sr, encode(sr),
                s.view_patient_data,
            )  # fmt: skip
        self.timings = {
            "infer_s": inferred - started,
            "build_s": built - inferred,
            "queue_s": queued - built,
            "view_s": time.perf_counter() - queued,
        }
        log.debug("series timings (s): %s", {k: round(v, 3) for k, v in self.timings.items()})
        return Outcome(
            verdict=verdict.label,
            model_version=verdict.model.version,
            result_uids=tuple(str(r.SOPInstanceUID) for r in results),
            delivery="queued",
        )


def open_outbox(settings: NodeSettings) -> Outbox:
    """The node's outbox in its spool, sending to ``settings.destination`` and
    ``settings.dicomweb_destination`` (those set)."""
    secret = settings.audit_salt.get_secret_value() if settings.audit_salt else None
    return Outbox(
        settings.spool_dir / OUTBOX_FOLDER,
        settings.destination_address(),
        settings.ae_title,
        initial_s=settings.send_retry_initial_s,
        max_s=settings.send_retry_max_s,
        timeout_s=settings.network_timeout_s,
        salt=resolve_salt(settings.spool_dir, secret),
        stow_url=settings.dicomweb_destination or None,
        stow_token=settings.dicomweb_token.get_secret_value() if settings.dicomweb_token else None,
    )


def build_node(settings: NodeSettings, outbox: Outbox) -> Node:
    """A node whose series go through ``ResultPipeline`` into ``outbox``."""
    return Node(
        settings,
        ResultPipeline(settings, outbox),
        outbox_depth=lambda: outbox.depth,
        delivery_state=outbox.group_state,
    )


def serve(settings: NodeSettings) -> None:
    """Run the node and its outbox until SIGTERM or SIGINT; both keep their folders."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    outbox = open_outbox(settings).start()
    node = build_node(settings, outbox)
    try:
        node.start()
    except BaseException:
        outbox.stop()
        raise
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        log.info("stopping: finishing the association(s) in progress")
        node.stop()
        outbox.stop()
