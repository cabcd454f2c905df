"""What the spool keeps about each series: its state and the header fields of its instances.

Plain data, no disk access: ``dicomnode.spool`` reads and writes these as JSON. The record
holds no patient data beyond the UIDs the results must copy; the DICOM files themselves keep
the patient module.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from pydicom.dataset import Dataset


class SeriesState(StrEnum):
    """Where a series is: receiving -> complete | skipped -> processing -> done | failed."""

    RECEIVING = "receiving"
    COMPLETE = "complete"  # stable and selected, waiting for the worker
    SKIPPED = "skipped"  # stable, but it does not qualify (reason recorded); no result
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


def series_key(series_uid: str) -> str:
    """The series' folder name in the spool: a hash, so no UID appears in a path."""
    return hashlib.sha256(series_uid.encode()).hexdigest()[:32]


def instance_file(sop_uid: str) -> str:
    """An instance's file name in its series folder (hashed as the folder is)."""
    return hashlib.sha256(sop_uid.encode()).hexdigest()[:32] + ".dcm"


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _number(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _frame_item(ds: Dataset, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` in the shared, else the first per-frame, functional
    group of a multi-frame (Enhanced CT) dataset."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = ds.get(groups)
        if items and sequence in items[0] and items[0][sequence].value:
            item: Dataset = items[0][sequence][0]
            return item
    return None


@dataclass(frozen=True)
class InstanceInfo:
    """The header fields of one received instance that selection and ordering need.

    Attributes:
        sop_uid: SOP Instance UID.
        sop_class: SOP Class UID.
        transfer_syntax: as received (and as kept on disk).
        file: file name in the series folder.
        size: bytes on disk.
        received_at: wall-clock time it was stored (seconds since the epoch).
        modality: Modality.
        image_type: ImageType values, upper case.
        instance_number: InstanceNumber, if any.
        position: ImagePositionPatient (the first frame's, for Enhanced CT).
        orientation: ImageOrientationPatient (row then column direction cosines).
        slice_thickness: SliceThickness in mm.
        frames: NumberOfFrames (1 for single-frame images).
    """

    sop_uid: str
    sop_class: str
    transfer_syntax: str
    file: str
    size: int
    received_at: float
    modality: str = ""
    image_type: tuple[str, ...] = ()
    instance_number: int | None = None
    position: tuple[float, ...] | None = None
    orientation: tuple[float, ...] | None = None
    slice_thickness: float | None = None
    frames: int = 1

    @classmethod
    def from_dataset(
        cls, ds: Dataset, *, transfer_syntax: str, size: int, received_at: float
    ) -> InstanceInfo:
        """The fields of ``ds`` (already checked to have a valid SOP Instance UID); a field
        that is missing or malformed is left empty, for selection to judge."""
        position = _floats(ds.get("ImagePositionPatient"), 3)
        orientation = _floats(ds.get("ImageOrientationPatient"), 6)
        thickness = _number(ds.get("SliceThickness"))
        if position is None and (plane := _frame_item(ds, "PlanePositionSequence")):
            position = _floats(plane.get("ImagePositionPatient"), 3)
        if orientation is None and (plane := _frame_item(ds, "PlaneOrientationSequence")):
            orientation = _floats(plane.get("ImageOrientationPatient"), 6)
        if thickness is None and (pixel := _frame_item(ds, "PixelMeasuresSequence")):
            thickness = _number(pixel.get("SliceThickness"))
        number = _number(ds.get("InstanceNumber"))
        frames = _number(ds.get("NumberOfFrames"))
        image_type = ds.get("ImageType") or ()
        if isinstance(image_type, str):
            image_type = image_type.split("\\")
        return cls(
            sop_uid=str(ds.SOPInstanceUID),
            sop_class=str(ds.get("SOPClassUID", "")),
            transfer_syntax=transfer_syntax,
            file=instance_file(str(ds.SOPInstanceUID)),
            size=size,
            received_at=received_at,
            modality=str(ds.get("Modality", "") or "").strip().upper(),
            image_type=tuple(str(v).strip().upper() for v in image_type),
            instance_number=int(number) if number is not None else None,
            position=position,
            orientation=orientation,
            slice_thickness=thickness,
            frames=max(1, int(frames)) if frames else 1,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceInfo:
        """The inverse of ``to_json`` (tuples restored)."""
        data = dict(data)
        for name in ("image_type", "position", "orientation"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)


@dataclass
class SeriesRecord:
    """One series in the spool: identity, state and timestamps (wall clock, epoch seconds).

    Attributes:
        series_uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        state: where it is.
        reason: why it was skipped or failed.
        calling_aes: the AE titles that sent it.
        first_received: first instance stored.
        last_received: latest instance stored.
        completed_at: found stable (complete or skipped).
        started_at: processing started.
        finished_at: processing ended (done or failed).
        delivered_at: its results were delivered.
        purged_at: its source instances were deleted.
        attempts: processing attempts so far.
        retry_at: a failed attempt is retried from this time on.
        instance_count: instances held (kept after a purge, for the record).
        outcome: what processing reported (verdict, model version, result UIDs).
    """

    series_uid: str
    study_uid: str
    state: SeriesState = SeriesState.RECEIVING
    reason: str | None = None
    calling_aes: list[str] = field(default_factory=list)
    first_received: float = 0.0
    last_received: float = 0.0
    completed_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    delivered_at: float | None = None
    purged_at: float | None = None
    attempts: int = 0
    retry_at: float | None = None
    instance_count: int = 0
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The series' folder name."""
        return series_key(self.series_uid)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeriesRecord:
        """The inverse of ``to_json``; fields unknown to this version are ignored."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["state"] = SeriesState(known.get("state", SeriesState.RECEIVING))
        return cls(**known)
