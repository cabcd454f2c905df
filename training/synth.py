"""Synthetic chest CT in the exact COVIDx-CT layout: cohort, splits, PNGs and label files.

Patients get balanced classes and patient-disjoint splits; each slice is rendered by
``training.phantom`` and written as PNG with the body box (table excluded) in the label
files. Deterministic per seed, whatever the number of workers.

Anatomy varies far more than the disease changes a slice's mean or spread, so a classifier
must look at the lungs: a logistic regression on per-image mean and standard deviation
stays near chance (tests/training/test_synth.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from covidct.config import CLASS_NAMES
from covidct.dataset import SPLITS, SYNTHETIC_MARKER, label_file
from training.phantom import Patient, render_slice

SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


# ----------------------------------------------------------------- cohort and splits


def plan_patients(n_patients: int, seed: int) -> list[Patient]:
    """Balanced classes, patient-disjoint splits, every split with every class when possible."""
    if n_patients < 1:
        raise ValueError("need at least one patient")
    rng = np.random.default_rng([seed, 0xC0])
    labels = np.arange(n_patients) % len(CLASS_NAMES)
    rng.shuffle(labels)
    splits = [""] * n_patients
    for label in range(len(CLASS_NAMES)):
        members = [i for i in range(n_patients) if labels[i] == label]
        n = len(members)
        n_val = max(1, round(n * SPLIT_FRACTIONS[1])) if n >= 3 else 0
        n_test = max(1, round(n * SPLIT_FRACTIONS[2])) if n >= 3 else 0
        for k, i in enumerate(members):
            splits[i] = "val" if k < n_val else "test" if k < n_val + n_test else "train"
    return [Patient(i, int(labels[i]), splits[i], seed) for i in range(n_patients)]


# ----------------------------------------------------------------- writing


def write_patient(patient: Patient, out: Path, slices: int, size: int) -> list[str]:
    """Render and write one patient's slices; return their COVIDx-CT label lines."""
    lines = []
    for k in range(slices):
        grey, box = render_slice(patient, k, slices, size)
        name = patient.filename(k)
        tmp = out / "images" / f".{name}.tmp"
        Image.fromarray(grey).save(tmp, format="PNG", compress_level=1)
        tmp.replace(out / "images" / name)
        lines.append(f"{name} {patient.label} {box[0]} {box[1]} {box[2]} {box[3]}")
    return lines


def _write_patient_job(args: tuple[Patient, Path, int, int]) -> tuple[int, list[str]]:
    patient, out, slices, size = args
    return patient.index, write_patient(patient, out, slices, size)


def synthesize(
    out: str | Path,
    patients: int,
    slices_per_patient: int,
    seed: int,
    size: int = 512,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write a synthetic COVIDx-CT folder; return the number of slices per split.

    Label files are written last (atomically), so an interrupted run never leaves a folder
    whose label files name missing images.
    """
    out = Path(out)
    if size < 128:
        raise ValueError(f"size {size} too small: synthetic slices need at least 128 pixels")
    if slices_per_patient < 1:
        raise ValueError("need at least one slice per patient")
    (out / "images").mkdir(parents=True, exist_ok=True)
    cohort = plan_patients(patients, seed)
    jobs = [(p, out, slices_per_patient, size) for p in cohort]
    results: dict[int, list[str]] = {}
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            for index, lines in pool.imap_unordered(_write_patient_job, jobs):
                results[index] = lines
                if progress:
                    progress(len(lines))
    else:
        for job in jobs:
            index, lines = _write_patient_job(job)
            results[index] = lines
            if progress:
                progress(len(lines))
    marker = {
        "generator": "covidct data synth",
        "seed": seed,
        "patients": patients,
        "slices_per_patient": slices_per_patient,
        "size": size,
        "note": "synthetic CT: not patient data",
    }
    (out / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    counts = {}
    for split in SPLITS:
        lines = [ln for p in cohort if p.split == split for ln in results[p.index]]
        path = label_file(out, split)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")
        tmp.replace(path)
        counts[split] = len(lines)
    return counts
