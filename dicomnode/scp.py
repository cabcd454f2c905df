"""The node's DICOM listener: a pynetdicom AE answering C-ECHO and C-STORE of CT images.

Only CT Image Storage and Enhanced CT Image Storage are offered (in the usual transfer
syntaxes, JPEG Lossless included); a request for any other SOP class gets no presentation
context. Calling AE titles outside the allow-list, and associations addressed to another AE
title, are refused at association. Each C-STORE is answered only after the spool has the
instance on disk; a refusal carries a DIMSE failure status and a reason (ErrorComment), which
is also logged and audited. pynetdicom's own per-message logging would print UIDs, so it is
turned off (``quiet_pynetdicom``).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, cast

import pydicom.config
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.intake import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    TRANSFER_SYNTAXES,
    Intake,
    Refusal,
    uid_problem,
)
from dicomnode.series import CT_SOP_CLASSES
from dicomnode.settings import NodeSettings

logger = logging.getLogger(__name__)

C_STORE_RQ = 0x0001  # CommandField of a C-STORE request


def quiet_pynetdicom() -> None:
    """Keep pynetdicom and pydicom from logging UIDs in the clear (the node logs only hashed
    ones): pynetdicom's line per message sent and received, and pydicom's warning on reading
    a malformed UID, which quotes the value (a refusal names the problem instead)."""
    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def _failure(refusal: Refusal) -> Dataset:
    ds = Dataset()
    ds.Status = refusal.status
    ds.ErrorComment = refusal.reason[:64]  # LO: 64 characters at most
    return ds


class Receiver:
    """The C-STORE SCP, storing into a spool.

    Args:
        settings: AE title, host, port, allow-list, caps and timeouts.
        intake: the checks and the spool every receiving path shares.
    """

    def __init__(self, settings: NodeSettings, intake: Intake) -> None:
        quiet_pynetdicom()
        self.settings = settings
        self.intake = intake
        self.audit = intake.audit
        self.metrics = intake.metrics
        self._counts: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self._port = settings.port
        ae = AE(ae_title=settings.ae_title)
        ae.require_calling_aet = list(settings.allowed_ae_titles)
        ae.require_called_aet = True
        ae.maximum_associations = settings.max_associations
        ae.network_timeout = settings.network_timeout_s
        ae.acse_timeout = ae.dimse_timeout = min(30.0, settings.network_timeout_s)
        ae.add_supported_context(Verification)
        for sop_class in CT_SOP_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self.ae = ae

    @property
    def port(self) -> int:
        """The port listened on (the real one when the settings said 0)."""
        return self._port

    def start(self) -> None:
        """Listen from now on (associations are handled in threads of their own)."""
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_DIMSE_RECV, self._on_dimse),
        ]
        server = self.ae.start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
        )
        assert server is not None  # non-blocking: the server is returned
        self._server, self._port = server, int(server.server_address[1])
        logger.info(
            "DICOM node %s listening on %s:%d",
            self.settings.ae_title,
            self.settings.host,
            self.port,
        )

    def active(self) -> int:
        """Associations in progress."""
        return len(self._server.active_associations) if self._server else 0

    def stop(self, drain_s: float) -> None:
        """Stop accepting associations, let those in progress finish for up to ``drain_s``
        seconds, then abort what is left (its completed instances stay in the spool)."""
        if self._server is None:
            return
        self._server.shutdown()  # closes the listening socket; running associations go on
        deadline = time.monotonic() + drain_s
        while self._server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        if left := len(self._server.active_associations):
            logger.warning("aborting %d association(s) still open after %.0f s", left, drain_s)
        self.ae.shutdown()
        self._server = None

    # --- events ------------------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_accepted(self, event: evt.Event) -> None:
        self.metrics.associations.labels("accepted").inc()
        requestor = event.assoc.requestor
        logger.info("association from %s (%s)", requestor.ae_title, requestor.address)

    def _on_rejected(self, event: evt.Event) -> None:
        self.metrics.associations.labels("refused").inc()
        calling = event.assoc.requestor.ae_title
        allowed = self.settings.allowed_ae_titles
        if allowed and calling.strip() not in allowed:
            reason = "calling AE title not in the allow-list"
        else:
            reason = "called AE title or association limit"
        logger.warning("association from %r refused: %s", calling, reason)
        self.metrics.error(f"association from {calling!r} refused: {reason}")
        self.audit.write("association refused", calling_ae=calling, reason=reason)

    def _on_aborted(self, event: evt.Event) -> None:
        with self._lock:
            count = self._counts.get(event.assoc, 0)
        logger.warning(
            "association from %s aborted; its %d stored instance(s) are kept",
            event.assoc.requestor.ae_title,
            count,
        )

    def _on_dimse(self, event: evt.Event) -> None:
        """Answer a C-STORE request without an Affected SOP Instance UID (as a file with an
        empty SOP Instance UID gives): pynetdicom drops such a request unanswered, which
        would leave the sender waiting for its timeout."""
        command = event.message.command_set
        if command.get("CommandField") != C_STORE_RQ:
            return
        if str(command.get("AffectedSOPInstanceUID", "") or "").strip():
            return
        reason = "SOPInstanceUID missing or empty"
        calling = event.assoc.requestor.ae_title
        refusal = self.intake.refuse(calling, None, CANNOT_UNDERSTAND, reason)
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = command.MessageID
        rsp.AffectedSOPClassUID = command.get("AffectedSOPClassUID")
        rsp.Status = refusal.status
        rsp.ErrorComment = refusal.reason  # type: ignore[assignment]
        event.assoc.dimse.send_msg(rsp, cast(int, event.message.context_id))

    def _on_store(self, event: evt.Event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        try:
            refusal = self._store(event, calling)
        except Exception as e:
            logger.exception("C-STORE from %s failed", calling)
            refusal = self.intake.refuse(calling, None, CANNOT_UNDERSTAND, "internal error", e)
        return SUCCESS if refusal is None else _failure(refusal)

    def _store(self, event: evt.Event, calling: str) -> Refusal | None:
        refuse = self.intake.refuse
        try:
            ds = event.dataset
        except Exception as e:
            return refuse(calling, None, CANNOT_UNDERSTAND, "data set cannot be decoded", e)
        request = cast(C_STORE, event.request)
        requested = str(request.AffectedSOPClassUID)
        if str(ds.get("SOPClassUID", "")) != requested:
            return refuse(calling, ds, DATASET_MISMATCH, "SOPClassUID differs from request")
        if problem := uid_problem(ds):
            return refuse(calling, ds, CANNOT_UNDERSTAND, problem)
        if str(request.AffectedSOPInstanceUID) != str(ds.SOPInstanceUID):
            return refuse(calling, ds, DATASET_MISMATCH, "SOPInstanceUID differs")
        with self._lock:
            count = self._counts.get(event.assoc, 0)
            if count >= self.settings.max_association_instances:
                cap = self.settings.max_association_instances
                return refuse(calling, ds, OUT_OF_RESOURCES, f"association cap {cap}")
            self._counts[event.assoc] = count + 1  # reserved; given back if not kept
        data = event.encoded_dataset(include_meta=True)
        refusal = self.intake.accept(ds, data, str(event.context.transfer_syntax), calling)
        if refusal is not None:
            with self._lock:
                self._counts[event.assoc] -= 1
        return refusal
