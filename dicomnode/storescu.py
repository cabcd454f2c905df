"""C-STORE SCU: a batch of DICOM files to one remote AE in one association (pynetdicom).

Each file gets an ``Outcome`` the outbox records: ``stored`` (success or warning),
``transient`` (no connection, the association refused or lost, no answer: try again later),
``transient-status`` (a failure status that can pass: out of resources, processing failure)
or ``refused`` (any other failure status, or a SOP class the destination does not accept:
sending it again would get the same answer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from dicomnode.settings import Destination

log = logging.getLogger(__name__)

STORED, TRANSIENT, TRANSIENT_STATUS, REFUSED = "stored", "transient", "transient-status", "refused"
#: Failure statuses a later try may not get: 0xA7xx out of resources, 0x0213 resource
#: limitation, 0x0110 processing failure (what an SCP answers when its own storage failed).
TRANSIENT_FAILURES = (0x0110, 0x0213)
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Outcome:
    """What one C-STORE came to.

    Attributes:
        kind: ``stored``, ``transient``, ``transient-status`` or ``refused``.
        status: the DIMSE status, when one was answered.
        reason: in words, for the record (None for a plain success).
    """

    kind: str
    status: int | None = None
    reason: str | None = None


def classify(status: int) -> Outcome:
    """The outcome of a C-STORE answered with ``status``."""
    category = code_to_category(status)
    if category == "Success":
        return Outcome(STORED, status)
    if category == "Warning":
        return Outcome(STORED, status, f"stored with warning status 0x{status:04X}")
    if category == "Failure" and (status >> 8 == 0xA7 or status in TRANSIENT_FAILURES):
        return Outcome(TRANSIENT_STATUS, status, f"failure status 0x{status:04X} (transient)")
    if category == "Failure":
        return Outcome(REFUSED, status, f"refused with failure status 0x{status:04X}")
    return Outcome(TRANSIENT, status, f"unexpected status 0x{status:04X} ({category})")


def _read(path: Path) -> Dataset | Outcome:
    try:
        ds = pydicom.dcmread(path)
    except (OSError, ValueError, pydicom.errors.InvalidDicomError) as e:
        return Outcome(REFUSED, None, f"outbox payload unreadable: {e}")
    if "SOPClassUID" not in ds or "TransferSyntaxUID" not in ds.file_meta:
        return Outcome(REFUSED, None, "outbox payload has no SOP class or transfer syntax")
    return ds


def _contexts(ae: AE, datasets: Sequence[Dataset | Outcome]) -> None:
    """One requested context per SOP class: the files' own transfer syntaxes, and both
    uncompressed little-endian ones for an uncompressed file (pynetdicom converts those)."""
    syntaxes: dict[str, list[UID]] = {}
    for ds in datasets:
        if isinstance(ds, Dataset):
            own = UID(ds.file_meta.TransferSyntaxUID)
            wanted = [own, *UNCOMPRESSED] if own in UNCOMPRESSED else [own]
            listed = syntaxes.setdefault(str(ds.SOPClassUID), [])
            listed += [s for s in wanted if s not in listed]
    for sop_class, transfer in syntaxes.items():
        ae.add_requested_context(sop_class, transfer)


def _store(assoc: Association, ds: Dataset, destination: Destination) -> Outcome:
    accepted = {c.abstract_syntax for c in assoc.accepted_contexts}
    if ds.SOPClassUID not in accepted:
        name = UID(ds.SOPClassUID).name
        return Outcome(REFUSED, None, f"{destination} does not accept SOP class {name}")
    try:
        answer = assoc.send_c_store(ds)
    except ValueError as e:  # no context with a usable transfer syntax
        return Outcome(REFUSED, None, f"{destination} cannot take this encoding: {e}")
    except (OSError, RuntimeError) as e:
        return Outcome(TRANSIENT, None, f"association lost: {e}")
    if "Status" not in answer:
        return Outcome(TRANSIENT, None, "no answer to the C-STORE (timeout or abort)")
    return classify(int(answer.Status))


def _not_established(
    assoc: Association, datasets: Sequence[Dataset | Outcome], destination: Destination
) -> list[Outcome]:
    """Outcomes when no association came up: a SOP class the destination turned down is
    refused; for the rest, the destination is down, busy or refusing us (try again later)."""
    where = str(destination)
    if assoc.is_rejected:
        reason = f"association rejected by {where}"
    elif assoc.acceptor.primitive is None:  # no A-ASSOCIATE answer at all
        reason = f"no connection to {where}"
    else:  # pynetdicom aborts when every context was turned down
        reason = f"association with {where} aborted"
    turned_down = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
    outcomes = []
    for ds in datasets:
        if isinstance(ds, Outcome):
            outcomes.append(ds)
        elif str(ds.SOPClassUID) in turned_down:
            name = UID(ds.SOPClassUID).name
            outcomes.append(Outcome(REFUSED, None, f"{where} does not accept SOP class {name}"))
        else:
            outcomes.append(Outcome(TRANSIENT, None, reason))
    return outcomes


def send_batch(
    destination: Destination, calling_aet: str, files: Sequence[Path], timeout_s: float
) -> list[Outcome]:
    """C-STORE each file to ``destination`` in one association; an outcome per file."""
    datasets = [_read(path) for path in files]
    sendable = [ds for ds in datasets if isinstance(ds, Dataset)]
    if not sendable:
        return [d for d in datasets if isinstance(d, Outcome)]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    _contexts(ae, sendable)
    where = str(destination)
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except (OSError, RuntimeError, ValueError) as e:
        return [d if isinstance(d, Outcome) else Outcome(TRANSIENT, None, str(e)) for d in datasets]
    if not assoc.is_established:
        return _not_established(assoc, datasets, destination)
    outcomes: list[Outcome] = []
    try:
        for ds in datasets:
            if isinstance(ds, Outcome):
                outcomes.append(ds)
            elif not assoc.is_established:
                outcomes.append(Outcome(TRANSIENT, None, f"association with {where} lost"))
            else:
                outcomes.append(_store(assoc, ds, destination))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes
