"""STOW-RS in (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]`` with a
``multipart/related; type="application/dicom"`` body, one Part 10 file per part.

Each part is checked as it ends and handed to the same ``Intake`` as a C-STORE (one path after
receipt: spool, completion, selection, inference, results); the body streams through, one part
in memory at a time. The answer is the Store Instances Response Module as DICOM JSON:
ReferencedSOPSequence (stored) and FailedSOPSequence (not stored, with a Failure Reason).
HTTP 200 when every instance was stored, 202 when some were, 409 when none was (PS3.18
10.5.3). A part's reason in words goes into a ``Warning: 299`` header and the log.

Failure Reasons (PS3.18 Table 10.5.3-3, the C-STORE statuses): 0xC000 a part that is not a
DICOM file or has invalid UIDs, 0xC122 a transfer syntax the node does not take, 0x0122 a SOP
class other than CT, 0xA900 no Pixel Data or a Study Instance UID other than the path's,
0xA700 a part over the instance cap, or a spool cap.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode.intake import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    SOP_CLASS_NOT_SUPPORTED,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
    TRANSFER_SYNTAXES,
    Intake,
    Refusal,
)
from dicomnode.multipart import DICOM, Part
from dicomnode.records import series_key
from dicomnode.series import CT_SOP_CLASSES

logger = logging.getLogger(__name__)

SOURCE = "STOW-RS"
#: Warning headers at most in one answer (the rest only in the log and the JSON).
MAX_WARNINGS = 20


@dataclass
class StoreResponse:
    """What one STOW-RS request came to, instance by instance."""

    stored: list[tuple[str, str]] = field(default_factory=list)  # (SOP class, instance)
    failed: list[tuple[str, str, Refusal, int]] = field(default_factory=list)  # + part index

    @property
    def status(self) -> int:
        """200 all stored, 202 some, 409 none (PS3.18 10.5.3)."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def json(self) -> dict[str, Any]:
        """The Store Instances Response Module as DICOM JSON (PS3.18 F.2)."""
        ds = Dataset()
        ds.ReferencedSOPSequence = Sequence([_ref(c, i) for c, i in self.stored])
        failed = []
        for sop_class, sop_uid, refusal, _ in self.failed:
            item = _ref(sop_class, sop_uid)
            item.FailureReason = refusal.status
            failed.append(item)
        ds.FailedSOPSequence = Sequence(failed)
        return dict(ds.to_json_dict())

    def warnings(self) -> list[str]:
        """``Warning`` header values, one per failed part (at most MAX_WARNINGS)."""
        return [
            f'299 covidct "part {index + 1}: {refusal.reason} (0x{refusal.status:04X})"'
            for _, _, refusal, index in self.failed[:MAX_WARNINGS]
        ]


def _ref(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item


class StowIntake:
    """Turns the parts of one STOW-RS request into spooled instances and a response.

    Args:
        intake: the node's shared intake.
        study: the Study Instance UID of the path, if the request named one.
        source: who sent the parts, for the record (pull mode: ``WADO-RS``).
    """

    def __init__(self, intake: Intake, study: str | None = None, source: str = SOURCE) -> None:
        self.intake = intake
        self.study = study
        self.source = source
        self.response = StoreResponse()
        self._held: set[str] = set()
        self._closed = False
        self._lock = threading.Lock()  # ``close`` may come while a part is being kept

    def __enter__(self) -> StowIntake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def part(self, part: Part) -> None:
        """Check and keep one part; its outcome goes into ``response``. The series of a kept
        part stays receiving until ``close`` (a pause between parts does not complete it)."""
        ds, refusal = self._check(part)
        sop_class = str(ds.get("SOPClassUID", "")) if ds is not None else ""
        sop_uid = str(ds.get("SOPInstanceUID", "")) if ds is not None else ""
        if refusal is None and ds is not None:
            refusal = self.intake.accept(ds, bytes(part.data), _syntax(ds), self.source)
        if refusal is None:
            self.response.stored.append((sop_class, sop_uid))
            assert ds is not None
            key = series_key(str(ds.SeriesInstanceUID))
            with self._lock:
                if not self._closed and key not in self._held:
                    self.intake.spool.hold(key)
                    self._held.add(key)
        else:
            self.response.failed.append((sop_class, sop_uid, refusal, part.index))

    def close(self) -> None:
        """The request has ended (answered, failed or cut off): its series' ``STABLE_S``
        counts from now."""
        with self._lock:
            self._closed = True
            while self._held:
                self.intake.spool.release(self._held.pop())

    def _check(self, part: Part) -> tuple[Dataset | None, Refusal | None]:
        refuse = self.intake.refuse
        if part.content_type not in ("", DICOM):
            reason = f"part of type {part.content_type!r}, not {DICOM}"
            return None, refuse(self.source, None, CANNOT_UNDERSTAND, reason)
        try:
            ds = pydicom.dcmread(io.BytesIO(part.data), stop_before_pixels=part.too_large)
            syntax = _syntax(ds)
        except Exception as e:  # pydicom raises many kinds on garbage
            ds = None
            if not part.too_large:
                reason = "not a DICOM Part 10 file"
                return None, refuse(self.source, None, CANNOT_UNDERSTAND, reason, e)
        if part.too_large:
            cap = self.intake.spool.max_instance_bytes
            reason = f"instance over the cap of {cap} bytes"
            return ds, refuse(self.source, ds, OUT_OF_RESOURCES, reason)
        assert ds is not None
        if syntax not in TRANSFER_SYNTAXES:
            return ds, refuse(self.source, ds, TRANSFER_SYNTAX_NOT_SUPPORTED, "transfer syntax")
        if str(ds.get("SOPClassUID", "")) not in CT_SOP_CLASSES:
            return ds, refuse(self.source, ds, SOP_CLASS_NOT_SUPPORTED, "not a CT image SOP class")
        if self.study is not None and str(ds.get("StudyInstanceUID", "")) != self.study:
            reason = "StudyInstanceUID differs from the study asked for"
            return ds, refuse(self.source, ds, DATASET_MISMATCH, reason)
        return ds, None


def _syntax(ds: Dataset) -> str:
    """The transfer syntax of a Part 10 file (its file meta); raises without one."""
    return str(ds.file_meta.TransferSyntaxUID)
