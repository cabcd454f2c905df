"""COVIDx-CT reading and validation, on the real label file and on broken copies."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from covidct.dataset import patient_id, read_covidx


def test_real_folder_reads_clean(real_data: Path) -> None:
    root = real_data / "covidxct-real"
    ds = read_covidx(root)
    assert ds.problems == []
    # Independent count straight from the label file.
    lines = (root / "test_COVIDx-CT.txt").read_text().split("\n")
    expected = Counter(int(line.split()[1]) for line in lines if line.strip())
    counts = ds.class_counts("test")
    assert counts == {"Normal": expected[0], "Pneumonia": expected[1], "COVID-19": expected[2]}
    assert sum(counts.values()) == len(list((root / "images").glob("*.png")))
    assert ds.summary_line("test") == (
        f"test: Normal={expected[0]} Pneumonia={expected[1]} COVID-19={expected[2]}"
    )
    assert {s.patient for s in ds.splits["test"]} == {
        "COVIDCTMD-P001",
        "COVIDCTMD-cap001",
        "COVIDCTMD-normal002",
    }


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("NCP_96_1328_0032.png", "NCP_96"),
        ("CP_1_3174_0000.png", "CP_1"),
        ("Normal_2718_299_0040.png", "Normal_2718"),
        ("COVIDCTMD-P001-IM0038.png", "COVIDCTMD-P001"),
        ("COVIDCTMD-normal002-IM0001.png", "COVIDCTMD-normal002"),
        ("radiopaedia_40_86625_0_case18_0033.png", "radiopaedia_40_86625_0_case18"),
        ("study_0255_0040.png", "study_0255"),
        ("plain.png", "plain"),
    ],
)
def test_patient_ids(name: str, patient: str) -> None:
    assert patient_id(name) == patient


@pytest.fixture
def broken(fixtures: Path, tmp_path: Path) -> Path:
    """A copy of the mini folder with one problem of each kind, at known lines."""
    root = tmp_path / "broken"
    shutil.copytree(fixtures / "covidxct-real", root)
    (root / "images" / "COVIDCTMD-normal002-IM0001.png").unlink()
    (root / "images" / "not_an_image.png").write_bytes(b"this is text")
    shutil.copy(
        root / "images" / "COVIDCTMD-cap001-IM0057.png",
        root / "images" / "COVIDCTMD-cap001-IM9999.png",
    )
    lines = (root / "test_COVIDx-CT.txt").read_text().splitlines()
    lines[1] = lines[1].replace(" 1 0 97", " 7 0 97")  # bad class
    lines[2] = "COVIDCTMD-normal002-IM0042.png 0 0 147 600 405"  # box outside the 512 image
    lines += [
        "COVIDCTMD-P001-IM0038.png 2 0 101 512 412",  # duplicate (line 6)
        "only three fields",  # malformed (line 7)
        "x.png 2 a b c d",  # non-integer (line 8)
        "not_an_image.png 0 0 0 10 10",  # unreadable (line 9)
        "COVIDCTMD-cap001-IM9999.png 1 50 78 50 445",  # empty box (line 10)
    ]
    (root / "test_COVIDx-CT.txt").write_text("\n".join(lines) + "\n")
    return root


def test_broken_folder_lists_every_problem_with_its_line(broken: Path) -> None:
    ds = read_covidx(broken)
    messages = "\n".join(str(p) for p in ds.problems)
    expected = {
        2: "bad class 7",
        3: "outside the 512x512 image",
        4: "image not found",
        6: "duplicate file name (first at test_COVIDx-CT.txt:1)",
        7: "malformed line",
        8: "must be integers",
        9: "unreadable image",
        10: "empty or negative",
    }
    for line, text in expected.items():
        assert f"test_COVIDx-CT.txt:{line}: " in messages
        assert any(p.line == line and text in p.message for p in ds.problems), (line, messages)
    assert len(ds.problems) == len(expected), messages


def test_leakage_between_splits_is_reported(fixtures: Path, tmp_path: Path) -> None:
    root = tmp_path / "leaky"
    shutil.copytree(fixtures / "covidxct-real", root)
    lines = (root / "test_COVIDx-CT.txt").read_text().splitlines()
    (root / "test_COVIDx-CT.txt").write_text("\n".join(lines[:3]) + "\n")
    (root / "train_COVIDx-CT.txt").write_text("\n".join(lines[3:]) + "\n")
    ds = read_covidx(root)
    leaks = [str(p) for p in ds.problems if "leakage" in p.message]
    # normal002 (IM0042 in test, IM0001 in train) and cap001 (IM0070 / IM0057) leak.
    assert len(leaks) == 2
    assert any(
        "COVIDCTMD-normal002 appears in train (1 slices), test (1 slices)" in x
        or "COVIDCTMD-normal002 appears in test (1 slices), train (1 slices)" in x
        for x in leaks
    ), leaks


def test_folder_without_label_files(tmp_path: Path) -> None:
    ds = read_covidx(tmp_path)
    assert len(ds.problems) == 1 and "no label file found" in ds.problems[0].message


def test_synthetic_folder_is_valid_and_patient_disjoint(synth_dir: Path) -> None:
    ds = read_covidx(synth_dir)
    assert ds.problems == []
    assert set(ds.splits) == {"train", "val", "test"}
    patients = {split: {s.patient for s in samples} for split, samples in ds.splits.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    for split in ds.splits:
        assert all(v > 0 for v in ds.class_counts(split).values()), split
