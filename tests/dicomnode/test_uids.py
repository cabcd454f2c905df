"""The result UIDs: deterministic, distinct per input and role, valid DICOM UIDs."""

from __future__ import annotations

import re

import pytest
from pydicom.uid import UID

from dicomnode.uids import ResultUids, device_uid, result_uid

SERIES = "1.3.12.2.1107.5.1.4.93005.30000020030507333373200012427"
UID_FORM = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


def test_same_inputs_give_the_same_uid() -> None:
    assert result_uid(SERIES, "3", "sr") == result_uid(SERIES, "3", "sr")
    assert ResultUids(SERIES, "3") == ResultUids(SERIES, "3")
    assert ResultUids(SERIES, "3").sc_instance(2) == ResultUids(SERIES, "3").sc_instance(2)


def test_the_derivation_is_pinned() -> None:
    # Changing the namespace or the name encoding would rename every result already filed
    # in a PACS: resends would then duplicate instead of replace.
    assert result_uid("1.2.3", "1", "sr") == "2.25.107647833332836996454302463567666688842"
    assert device_uid("ab" * 32) == "2.25.25549848159320187380715187555123194265"


@pytest.mark.parametrize(
    ("series", "version", "role"),
    [
        (SERIES + "1", "3", "sr"),  # another source series
        (SERIES, "4", "sr"),  # another model version
        (SERIES, "3", "sr-series"),  # another role
    ],
)
def test_any_changed_input_gives_another_uid(series: str, version: str, role: str) -> None:
    assert result_uid(series, version, role) != result_uid(SERIES, "3", "sr")


def test_parts_are_kept_apart() -> None:
    # a plain concatenation would make these equal
    assert result_uid("1.2", "3", "sr") != result_uid("1.23", "", "sr")
    assert result_uid("1.2", "3", "sr") != result_uid("1.2", "3s", "r")


def test_every_role_of_a_series_is_distinct_and_valid() -> None:
    uids = ResultUids(SERIES, "3")
    every = [
        uids.sr_series,
        uids.sr_instance,
        uids.sc_series,
        *(uids.sc_instance(i) for i in range(1, 11)),
        uids.tracking("series"),
        uids.tracking(SERIES + ".7"),
        device_uid("ab" * 32),
    ]
    assert len(set(every)) == len(every)
    for uid in every:
        assert UID_FORM.match(uid), uid
        assert len(uid) <= 64
        assert UID(uid).is_valid


def test_device_uid_follows_the_fingerprint_only() -> None:
    assert device_uid("ab" * 32) == device_uid("ab" * 32)
    assert device_uid("ab" * 32) != device_uid("cd" * 32)
    assert len({device_uid(f) for f in ("0" * 64, "f" * 64, "ab" * 32)}) == 3
    # the device is the model, whatever series it reads
    assert device_uid("ab" * 32) not in {result_uid(SERIES, "3", r) for r in ("sr", "device")}


def test_capture_indices_count_from_one() -> None:
    with pytest.raises(ValueError, match="count from 1"):
        ResultUids(SERIES, "3").sc_instance(0)
