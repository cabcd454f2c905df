"""One way in for every received instance, whatever brought it: C-STORE (``dicomnode.scp``),
STOW-RS (``dicomnode.stow``) or a WADO-RS pull (``dicomnode.pull``).

``Intake.accept`` checks an instance the same way for all three (valid Study, Series and SOP
Instance UIDs, Pixel Data) and keeps it in the spool, where series completion, selection,
inference and results take over: nothing after receipt knows how an instance came. A refusal
is a DIMSE status (the same numbers serve as STOW-RS Failure Reasons, PS3.18 Table 10.5.3-3)
with a reason, logged with hashed UIDs only, counted and audited.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicomnode.audit import AuditLog
from dicomnode.records import InstanceInfo
from dicomnode.spool import CapExceeded, Spool
from dicomnode.status import NodeMetrics

logger = logging.getLogger(__name__)

#: DIMSE statuses of C-STORE (PS3.4 B.2.3), also STOW-RS Failure Reasons.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
#: Transfer syntaxes accepted for CT: uncompressed, JPEG (baseline, extended, lossless),
#: JPEG-LS, JPEG 2000, RLE and deflate.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, first-order prediction (SV1)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass(frozen=True)
class Refusal:
    """An instance not kept: the status to answer and why (at most 64 characters: it is
    also a DICOM ErrorComment)."""

    status: int
    reason: str


def uid_problem(ds: Dataset) -> str | None:
    """What is wrong with the instance's Study, Series and SOP Instance UIDs, or None."""
    for name in UIDS:
        value = str(ds.get(name, "") or "").strip()
        if not value:
            return f"{name} missing or empty"
        if not UID(value).is_valid:
            return f"{name} is not a valid DICOM UID"
    return None


class Intake:
    """The checks and the spool every receiving path shares.

    Args:
        spool: where instances go.
        audit: the audit log (refusals).
        metrics: the node's metrics (received, refused, spool bytes, last errors).
    """

    def __init__(self, spool: Spool, audit: AuditLog, metrics: NodeMetrics) -> None:
        self.spool = spool
        self.audit = audit
        self.metrics = metrics

    def accept(self, ds: Dataset, data: bytes, transfer_syntax: str, source: str) -> Refusal | None:
        """Check ``ds`` (its encoded file ``data``, with file meta) and keep it in the spool;
        None when kept, else the refusal (already logged, counted and audited).

        Args:
            ds: the decoded data set (pixel data need not be decoded).
            data: the Part 10 file as it will be kept, byte for byte.
            transfer_syntax: the transfer syntax ``data`` is encoded in.
            source: who sent it, for the record: the calling AE title, or ``STOW-RS``.
        """
        if problem := uid_problem(ds):
            return self.refuse(source, ds, CANNOT_UNDERSTAND, problem)
        if "PixelData" not in ds:
            return self.refuse(source, ds, DATASET_MISMATCH, "no Pixel Data")
        info = InstanceInfo.from_dataset(
            ds, transfer_syntax=transfer_syntax, size=len(data), received_at=time.time()
        )
        try:
            self.spool.store(
                info,
                data,
                study_uid=str(ds.StudyInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                calling_ae=source,
            )
        except (CapExceeded, OSError) as e:
            reason = str(e) if isinstance(e, CapExceeded) else "spool write failed"
            return self.refuse(source, ds, OUT_OF_RESOURCES, reason, e)
        self.metrics.instances_received.inc()
        self.metrics.spool_bytes.set(self.spool.used_bytes)
        return None

    def refuse(
        self,
        source: str,
        ds: Dataset | None,
        status: int,
        reason: str,
        cause: BaseException | None = None,
    ) -> Refusal:
        """Log, count and audit a refusal; returns it (``reason`` cut to 64 characters)."""
        study = str(ds.get("StudyInstanceUID", "")) if ds is not None else ""
        series = str(ds.get("SeriesInstanceUID", "")) if ds is not None else ""
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        logger.warning(
            "instance from %s refused with 0x%04X: %s%s (series %s)",
            source,
            status,
            reason,
            detail,
            self.audit.hash(series),
        )
        self.metrics.instances_refused.labels(f"0x{status:04X}").inc()
        self.metrics.error(f"instance from {source} refused 0x{status:04X}: {reason}")
        self.audit.write(
            "refused", calling_ae=source, study_uid=study, series_uid=series, reason=reason
        )
        return Refusal(status, reason[:64])
