"""Series completion, selection and slice order.

A series is complete when no instance of it has arrived for ``STABLE_S`` seconds (as Orthanc's
``StableAge`` and mercure's series timeout); one still receiving ``MAX_SERIES_S`` after it
started is skipped with that reason. A complete series is selected for a result only if
it is an original axial CT series: the rules are ``SelectionRules`` (from the settings), and a
series that does not qualify is recorded with the first rule it fails. Slices are ordered along
the slice normal (ImagePositionPatient projected on row x column of ImageOrientationPatient),
with InstanceNumber as the fallback where the geometry is missing or mixed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicomnode.records import InstanceInfo, SeriesRecord, SeriesState
from dicomnode.settings import NodeSettings
from dicomnode.spool import Spool

#: The SOP classes the node takes (the SCP offers no other presentation context).
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
CT_SOP_CLASSES = (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE)
#: Direction cosines closer than this count as one orientation.
ORIENTATION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SelectionRules:
    """Which complete series get a result.

    Attributes:
        modality: the Modality every instance must have.
        min_slices: at least this many slices (frames of Enhanced CT count one by one).
        min_thickness_mm: SliceThickness at least this.
        max_thickness_mm: SliceThickness at most this.
    """

    modality: str = "CT"
    min_slices: int = 20
    min_thickness_mm: float = 0.5
    max_thickness_mm: float = 5.0

    @classmethod
    def from_settings(cls, settings: NodeSettings) -> SelectionRules:
        """The rules a node's settings name."""
        return cls(
            min_slices=settings.min_slices,
            min_thickness_mm=settings.min_slice_thickness_mm,
            max_thickness_mm=settings.max_slice_thickness_mm,
        )


@dataclass(frozen=True)
class SeriesInstance:
    """One source instance of a series handed to processing: its file and header fields."""

    path: Path
    info: InstanceInfo


@dataclass(frozen=True)
class Series:
    """A complete, selected series, as ``process`` receives it.

    Attributes:
        key: its spool folder name.
        series_uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        calling_aes: the AE titles that sent it.
        instances: its instances in slice order (along the slice normal).
        received_at: wall-clock time of its latest instance (end-to-end time starts there).
    """

    key: str
    series_uid: str
    study_uid: str
    calling_aes: tuple[str, ...]
    instances: tuple[SeriesInstance, ...]
    received_at: float

    @property
    def paths(self) -> list[Path]:
        """The instance files in slice order."""
        return [i.path for i in self.instances]


def _count(instances: Sequence[InstanceInfo], bad: list[InstanceInfo]) -> str:
    return f"{len(bad)} of {len(instances)} instances"


def selection_reason(instances: Sequence[InstanceInfo], rules: SelectionRules) -> str | None:
    """Why a complete series gets no result, or None when it qualifies.

    The rules, in this order: instances present, Modality, SOP class, no localizer, ImageType
    ORIGINAL/PRIMARY and AXIAL, slice thickness within range, at least ``min_slices`` slices.
    """
    if not instances:
        return "no instances"
    checks: list[tuple[str, list[InstanceInfo]]] = [
        (
            f"Modality not {rules.modality}",
            [i for i in instances if i.modality != rules.modality],
        ),
        ("not a CT image SOP class", [i for i in instances if i.sop_class not in CT_SOP_CLASSES]),
        ("localizer images", [i for i in instances if "LOCALIZER" in i.image_type]),
        (
            "ImageType not ORIGINAL/PRIMARY",
            [i for i in instances if i.image_type[:2] != ("ORIGINAL", "PRIMARY")],
        ),
        ("ImageType not AXIAL", [i for i in instances if "AXIAL" not in i.image_type[2:]]),
        ("SliceThickness missing", [i for i in instances if i.slice_thickness is None]),
        (
            f"SliceThickness outside {rules.min_thickness_mm:g}..{rules.max_thickness_mm:g} mm",
            [
                i
                for i in instances
                if i.slice_thickness is not None
                and not rules.min_thickness_mm <= i.slice_thickness <= rules.max_thickness_mm
            ],
        ),
    ]
    for reason, bad in checks:
        if bad:
            return f"{reason} ({_count(instances, bad)})"
    slices = sum(i.frames for i in instances)
    if slices < rules.min_slices:
        return f"{slices} slices, fewer than {rules.min_slices}"
    return None


def _by_number(info: InstanceInfo) -> tuple[bool, int, float]:
    number = info.instance_number
    return (number is None, number or 0, info.received_at)


def slice_order(instances: Sequence[InstanceInfo]) -> list[InstanceInfo]:
    """``instances`` along the slice normal (ascending ImagePositionPatient . (row x column)),
    InstanceNumber breaking ties; by InstanceNumber alone when any instance lacks a position or
    an orientation, or when the orientations differ."""
    items = list(instances)
    geometry = [(i.position, i.orientation) for i in items]
    if not items or any(p is None or o is None for p, o in geometry):
        return sorted(items, key=_by_number)
    orientations = np.array([o for _, o in geometry], dtype=np.float64)
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        return sorted(items, key=_by_number)
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    if np.linalg.norm(normal) < 0.5:  # degenerate cosines: no usable normal
        return sorted(items, key=_by_number)
    distance = {id(i): float(np.dot(np.array(i.position), normal)) for i in items}
    return sorted(items, key=lambda i: (distance[id(i)], _by_number(i)))


def stable_keys(spool: Spool, stable_s: float, max_s: float = math.inf) -> list[str]:
    """Series still receiving that have had no instance for ``stable_s`` seconds, or that
    started receiving ``max_s`` seconds ago or more."""
    return [
        record.key
        for record in spool.records()
        if record.state is SeriesState.RECEIVING
        and (spool.quiet_s(record.key) >= stable_s or spool.receiving_s(record.key) >= max_s)
    ]


def load_series(spool: Spool, record: SeriesRecord) -> Series:
    """The series of ``record`` with its instances in slice order."""
    ordered = slice_order(spool.instances(record.key))
    return Series(
        key=record.key,
        series_uid=record.series_uid,
        study_uid=record.study_uid,
        calling_aes=tuple(record.calling_aes),
        instances=tuple(SeriesInstance(spool.path(record.key, i), i) for i in ordered),
        received_at=record.last_received,
    )
