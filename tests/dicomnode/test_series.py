"""Selection rules (each reason), slice order along the normal, and the real series' order."""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from dicomnode.records import InstanceInfo
from dicomnode.series import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    SelectionRules,
    selection_reason,
    slice_order,
    stable_keys,
)
from tests.dicomnode.series_data import ct_series

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
RULES = SelectionRules(min_slices=20, min_thickness_mm=0.5, max_thickness_mm=5.0)


def ct(n: int, z: float | None = None, **changes: Any) -> InstanceInfo:
    base = InstanceInfo(
        sop_uid=f"1.2.3.{n}",
        sop_class=CT_IMAGE_STORAGE,
        transfer_syntax="1.2.840.10008.1.2.1",
        file=f"{n}.dcm",
        size=1,
        received_at=float(n),
        modality="CT",
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        instance_number=n + 1,
        position=(0.0, 0.0, -2.0 * n if z is None else z),
        orientation=AXIAL,
        slice_thickness=2.0,
    )
    return replace(base, **changes)


def series(count: int = 30, **changes: Any) -> list[InstanceInfo]:
    return [ct(n, **changes) for n in range(count)]


@pytest.mark.parametrize(
    ("instances", "reason"),
    [
        (series(), None),
        (series(20), None),
        ([], "no instances"),
        (series(19), "19 slices, fewer than 20"),
        (series(modality="MR"), "Modality not CT (30 of 30 instances)"),
        ([*series()[:29], ct(29, modality="")], "Modality not CT (1 of 30 instances)"),
        (series(sop_class="1.2.840.10008.5.1.4.1.1.7"), "not a CT image SOP class"),
        (
            [*series()[:29], ct(29, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))],
            "localizer images (1 of 30 instances)",
        ),
        (series(image_type=("DERIVED", "SECONDARY", "AXIAL")), "ImageType not ORIGINAL/PRIMARY"),
        (series(image_type=("ORIGINAL", "PRIMARY", "OTHER")), "ImageType not AXIAL"),
        (series(image_type=()), "ImageType not ORIGINAL/PRIMARY"),
        (series(slice_thickness=None), "SliceThickness missing"),
        (series(slice_thickness=10.0), "SliceThickness outside 0.5..5 mm (30 of 30"),
        (series(slice_thickness=0.3), "SliceThickness outside 0.5..5 mm"),
        # Enhanced CT: one instance, its frames count as slices
        ([ct(0, sop_class=ENHANCED_CT_IMAGE_STORAGE, frames=40)], None),
        ([ct(0, sop_class=ENHANCED_CT_IMAGE_STORAGE, frames=5)], "5 slices, fewer than 20"),
    ],
)
def test_selection_reasons(instances: list[InstanceInfo], reason: str | None) -> None:
    got = selection_reason(instances, RULES)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason), got


def test_rules_are_configurable() -> None:
    assert selection_reason(series(10), replace(RULES, min_slices=10)) is None
    thick = series(slice_thickness=8.0)
    assert selection_reason(thick, replace(RULES, max_thickness_mm=10.0)) is None


def test_slices_are_ordered_along_the_normal_not_by_number_or_arrival() -> None:
    items = series(12)
    shuffled = random.Random(1).sample(items, len(items))
    numbers = [replace(i, instance_number=100 - (i.instance_number or 0)) for i in shuffled]
    ordered = slice_order(numbers)
    z = [i.position[2] for i in ordered if i.position]
    assert z == sorted(z) and len(z) == 12


def test_an_oblique_series_is_ordered_along_its_own_normal() -> None:
    angle = np.deg2rad(30)
    row = (1.0, 0.0, 0.0)
    col = (0.0, float(np.cos(angle)), float(np.sin(angle)))
    normal = np.cross(row, col)
    items = [
        ct(n, orientation=row + col, position=tuple(float(v) for v in normal * (5 - n) * 1.5))
        for n in range(8)
    ]
    # the normal's z runs the other way than the number: position decides
    assert [i.sop_uid for i in slice_order(items)] == [f"1.2.3.{n}" for n in range(7, -1, -1)]


@pytest.mark.parametrize(
    "spoil",
    [
        {"position": None},
        {"orientation": None},
        {"orientation": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)},  # a sagittal slice among axial ones
    ],
)
def test_instance_number_is_the_fallback(spoil: dict[str, object]) -> None:
    items = [ct(n, z=float(n % 3), instance_number=10 - n) for n in range(6)]
    items[2] = replace(items[2], **spoil)  # type: ignore[arg-type]
    assert [i.instance_number for i in slice_order(items)] == [5, 6, 7, 8, 9, 10]


def test_the_real_series_is_ordered_along_the_normal(tmp_path: Path) -> None:
    folder = ct_series(tmp_path)
    infos = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        infos.append(
            InstanceInfo.from_dataset(
                ds, transfer_syntax=str(ds.file_meta.TransferSyntaxUID), size=1, received_at=0.0
            )
        )
    assert selection_reason(infos, RULES) is None
    ordered = slice_order(infos)
    z = [i.position[2] for i in ordered if i.position]
    assert len(z) == len(infos) >= 20
    assert all(b > a for a, b in itertools.pairwise(z))  # strictly along the normal
    numbers = [i.instance_number or 0 for i in ordered]
    # the files' names are not in that order; InstanceNumber runs one way along it
    assert numbers == sorted(numbers) or numbers == sorted(numbers, reverse=True)
    assert [i.sop_uid for i in infos] != [i.sop_uid for i in ordered]


def test_header_fields_of_an_enhanced_ct_come_from_its_functional_groups() -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def item(**values: Any) -> Dataset:
        ds = Dataset()
        for name, value in values.items():
            setattr(ds, name, value)
        return ds

    ds = item(
        SOPInstanceUID="1.2.3.9",
        SOPClassUID=ENHANCED_CT_IMAGE_STORAGE,
        Modality="CT",
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"],
        NumberOfFrames=30,
        InstanceNumber="7",
    )
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            item(
                PixelMeasuresSequence=Sequence([item(SliceThickness=1.5)]),
                PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=list(AXIAL))]),
            )
        ]
    )
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [item(PlanePositionSequence=Sequence([item(ImagePositionPatient=[1, 2, -30 - n])]))
         for n in range(30)]
    )  # fmt: skip
    info = InstanceInfo.from_dataset(
        ds, transfer_syntax="1.2.840.10008.1.2.1", size=9, received_at=0
    )
    assert (info.slice_thickness, info.orientation, info.position) == (1.5, AXIAL, (1, 2, -30))
    assert (info.frames, info.instance_number, info.image_type[2]) == (30, 7, "AXIAL")
    assert selection_reason([info], RULES) is None


def test_a_series_that_never_stops_receiving_is_skipped_after_max_series_s(
    tmp_path: Path,
) -> None:
    from dicomnode.records import SeriesState, series_key
    from dicomnode.spool import Spool

    spool = Spool(tmp_path, max_instance_bytes=100, max_series_instances=100, max_spool_bytes=10**4)
    key = series_key("1.2.3")

    def arrive(n: int) -> None:
        spool.store(ct(n), b"x", study_uid="1.2", series_uid="1.2.3", calling_ae="SCANNER")

    arrive(0)
    time.sleep(0.3)
    arrive(1)  # never quiet for stable_s, but receiving for longer than max_s
    assert stable_keys(spool, stable_s=10.0) == []
    assert spool.settle(key, 10.0, lambda items: None) is None
    assert stable_keys(spool, stable_s=10.0, max_s=0.25) == [key]
    record = spool.settle(key, 10.0, lambda items: None, max_s=0.25)
    assert record is not None and record.state is SeriesState.SKIPPED
    assert record.reason == "still receiving after 0.25 s (MAX_SERIES_S)"
    arrive(2)  # received again: a new window, not skipped at once
    assert spool.record(key).state is SeriesState.RECEIVING
    assert spool.settle(key, 10.0, lambda items: None, max_s=0.25) is None
    # a quiet series completes by STABLE_S as before, whatever its age
    time.sleep(0.3)
    done = spool.settle(key, 0.2, lambda items: None, max_s=0.25)
    assert done is not None and done.state is SeriesState.COMPLETE
