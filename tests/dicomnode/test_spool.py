"""The spool: durable writes, what a crash leaves cleaned up, caps, and series states."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from dicomnode.records import InstanceInfo, SeriesState, series_key
from dicomnode.spool import JOURNAL, RECORD, CapExceeded, Spool

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
KEY = series_key(SERIES)


def info(n: int, size: int = 100) -> InstanceInfo:
    sop = f"1.2.826.0.1.3680043.8.498.3.{n}"
    return InstanceInfo(
        sop_uid=sop,
        sop_class="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.4.70",
        file=f"{n:032d}.dcm",
        size=size,
        received_at=time.time(),
        modality="CT",
        instance_number=n,
    )


def spool(root: Path, **caps: int) -> Spool:
    limits = {"max_instance_bytes": 1000, "max_series_instances": 10, "max_spool_bytes": 10_000}
    limits.update(caps)
    return Spool(root, **limits)


def store(s: Spool, n: int, size: int = 100, series: str = SERIES) -> None:
    s.store(info(n, size), bytes([n % 256]) * size, study_uid=STUDY, series_uid=series,
            calling_ae="SCANNER")  # fmt: skip


def test_an_instance_is_on_disk_and_synced_before_store_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    s = spool(tmp_path)
    store(s, 0)  # the series' first instance also writes its record
    synced.clear()
    store(s, 1, 120)
    folder = tmp_path / "series" / KEY
    data = folder / info(1).file
    assert data.read_bytes() == bytes([1]) * 120
    assert stat.S_IMODE(data.stat().st_mode) == 0o600  # patient data: the owner only
    # the data under its temporary name, the folder after the rename, then the journal line
    assert synced[0].startswith(str(folder / ".tmp-")) and synced[1] == str(folder)
    assert synced[2] == str(folder / JOURNAL)
    assert s.used_bytes == 220 and s.record(KEY).instance_count == 2
    assert len(synced) == 3


def test_a_reopened_spool_has_what_was_stored(tmp_path: Path) -> None:
    s = spool(tmp_path)
    for n in range(3):
        store(s, n)
    store(s, 1)  # sent again: one instance
    again = spool(tmp_path)
    assert [i.sop_uid for i in again.instances(KEY)] == [info(n).sop_uid for n in (0, 2, 1)]
    assert again.used_bytes == 300
    record = again.record(KEY)
    assert (record.series_uid, record.study_uid, record.calling_aes) == (SERIES, STUDY, ["SCANNER"])
    assert record.state is SeriesState.RECEIVING and record.instance_count == 3
    assert record.last_received == max(i.received_at for i in again.instances(KEY))


def test_what_a_crash_leaves_half_way_is_removed_at_start(tmp_path: Path) -> None:
    s = spool(tmp_path)
    store(s, 1)
    store(s, 2)
    folder = tmp_path / "series" / KEY
    (folder / ".tmp-abc.part").write_bytes(b"half")  # written, never renamed
    (folder / ".tmp-record.json-x").write_text("{")  # an atomic record write cut short
    (folder / f"{9:032d}.dcm").write_bytes(b"x" * 50)  # renamed, journal line never written
    journal = folder / JOURNAL
    journal.write_text(journal.read_text() + '{"sop_uid": "1.2.3", "fi')  # a cut line
    lost = tmp_path / "series" / ("f" * 32)
    lost.mkdir()  # made just before a crash, no record: nothing was answered
    again = spool(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [RECORD, JOURNAL, info(1).file, info(2).file]
    )
    assert journal.read_text().endswith("\n") and len(journal.read_text().splitlines()) == 2
    assert len(again.instances(KEY)) == 2 and again.used_bytes == 200
    assert not lost.exists()
    store(again, 3)  # the journal goes on cleanly after the cut line
    assert len(spool(tmp_path).instances(KEY)) == 3


@pytest.mark.parametrize(
    ("caps", "stored", "size", "words"),
    [
        ({"max_instance_bytes": 99}, 0, 100, "over the cap of 99"),
        ({"max_series_instances": 3}, 3, 100, "cap of 3"),
        ({"max_spool_bytes": 450}, 4, 100, "spool full"),
    ],
)
def test_a_cap_refuses_before_anything_is_written(
    tmp_path: Path, caps: dict[str, int], stored: int, size: int, words: str
) -> None:
    s = spool(tmp_path, **caps)
    for n in range(stored):
        store(s, n, size)
    with pytest.raises(CapExceeded, match=words):
        store(s, 99, size)
    folder = tmp_path / "series" / KEY
    files = list(folder.glob("*.dcm")) if folder.exists() else []
    assert len(files) == stored and s.used_bytes == stored * size
    if stored:
        store(s, 0, size)  # an instance already held may still be sent again


def test_a_series_cap_does_not_touch_other_series(tmp_path: Path) -> None:
    s = spool(tmp_path, max_series_instances=2)
    store(s, 1)
    store(s, 2)
    store(s, 3, series=SERIES + ".9")
    assert len(s.records()) == 2


def test_new_instances_reopen_a_finished_series(tmp_path: Path) -> None:
    s = spool(tmp_path)
    store(s, 1)
    s.update(KEY, state=SeriesState.DONE, finished_at=time.time(), delivered_at=time.time())
    store(s, 2)
    record = s.record(KEY)
    assert record.state is SeriesState.RECEIVING and record.delivered_at is None
    assert record.instance_count == 2
    s.update(KEY, state=SeriesState.DONE)
    s.purge(KEY)
    assert s.used_bytes == 0 and not list((tmp_path / "series" / KEY).glob("*.dcm"))
    assert s.record(KEY).purged_at is not None and s.record(KEY).instance_count == 2
    store(s, 3)  # sent again after its instances were deleted: a fresh start
    assert [i.sop_uid for i in s.instances(KEY)] == [info(3).sop_uid]
    assert s.record(KEY).purged_at is None


def test_instances_arriving_while_processing_send_the_series_round_again(
    tmp_path: Path,
) -> None:
    s = spool(tmp_path)
    store(s, 1)
    s.update(KEY, state=SeriesState.COMPLETE)
    assert s.update(KEY, expect=SeriesState.RECEIVING, state=SeriesState.DONE) is None
    assert s.update(KEY, expect=SeriesState.COMPLETE, state=SeriesState.PROCESSING)
    store(s, 2)
    assert s.record(KEY).state is SeriesState.PROCESSING
    ended = s.update(KEY, state=SeriesState.DONE, outcome={"verdict": "Normal"})
    assert ended is not None and ended.state is SeriesState.RECEIVING
    assert ended.outcome == {"verdict": "Normal"}


def test_settle_marks_a_quiet_series_complete_or_skipped(tmp_path: Path) -> None:
    s = spool(tmp_path)
    store(s, 1)
    assert s.settle(KEY, 60.0, lambda items: None) is None  # not quiet long enough
    settled = s.settle(KEY, 0.0, lambda items: f"{len(items)} slices")
    assert settled is not None and settled.state is SeriesState.SKIPPED
    assert settled.reason == "1 slices" and settled.completed_at is not None
    assert s.settle(KEY, 0.0, lambda items: None) is None  # no longer receiving
    saved = json.loads((tmp_path / "series" / KEY / RECORD).read_text())
    assert saved["state"] == "skipped" and saved["reason"] == "1 slices"


def test_a_held_series_is_not_quiet_until_released_and_max_s_still_applies(
    tmp_path: Path,
) -> None:
    s = spool(tmp_path)
    store(s, 1)
    s.hold(KEY)
    s.hold(KEY)  # two requests deliver it
    time.sleep(0.3)
    assert s.quiet_s(KEY) == 0.0
    assert s.settle(KEY, 0.2, lambda items: None) is None  # paused, but still being delivered
    s.release(KEY)
    assert s.settle(KEY, 0.2, lambda items: None) is None  # the other request is still open
    s.release(KEY)
    assert s.quiet_s(KEY) < 0.2  # STABLE_S counts from the end of the last request
    time.sleep(0.3)
    settled = s.settle(KEY, 0.2, lambda items: None)
    assert settled is not None and settled.state is SeriesState.COMPLETE

    other = "1.2.826.0.1.3680043.8.498.9"
    store(s, 2, series=other)
    s.hold(series_key(other))  # a request that never ends
    time.sleep(0.3)
    skipped = s.settle(series_key(other), 0.1, lambda items: None, max_s=0.25)
    assert skipped is not None and skipped.state is SeriesState.SKIPPED
    assert skipped.reason is not None and "MAX_SERIES_S" in skipped.reason
