"""The real-data training gate's data: covidxct-128 of the real-data collection (3,621 real
COVIDx-CT slices at 128x128, 208 patients, split by patient), or a patient-stratified part of
its train split, written as a COVIDx-CT folder whose ``images`` links to the original."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from bench.corpus import real_data_dir
from covidct.dataset import label_file, patient_id

COLLECTION = "covidxct-128"


def covidxct128() -> Path | None:
    """The real 128x128 collection when this checkout can see it ($COVIDCT_REAL_DATA or
    ../shared/data), else None."""
    folder = real_data_dir() / COLLECTION
    return folder if label_file(folder, "train").is_file() else None


def patient_subset(src: Path, dst: Path, keep_every: int = 2) -> Path:
    """``dst``: the val and test splits of ``src`` whole, and of its train split every
    ``keep_every``-th patient of each class (patients in name order), so every class keeps
    its share of patients and no patient is cut in two. Idempotent."""
    dst.mkdir(parents=True, exist_ok=True)
    images = dst / "images"
    if not images.exists():
        images.symlink_to((src / "images").resolve(), target_is_directory=True)
    for split in ("train", "val", "test"):
        lines = label_file(src, split).read_text().splitlines()
        if split == "train":
            by_class: dict[str, set[str]] = defaultdict(set)
            for line in lines:
                name, cls = line.split()[:2]
                by_class[cls].add(patient_id(name))
            kept = {p for pts in by_class.values() for p in sorted(pts)[::keep_every]}
            lines = [line for line in lines if patient_id(line.split()[0]) in kept]
        label_file(dst, split).write_text("\n".join(lines) + "\n")
    return dst
