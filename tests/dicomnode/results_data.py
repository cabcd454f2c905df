"""What the tests of the node's results share: made-up verdicts over a real series' headers
(probabilities derived from each slice's position, Pillow-drawn heatmaps) and the real
validators, dciodvfy (dicom3tools) and dsrdump (DCMTK)."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from covidct.config import CLASS_NAMES
from dicomnode.verdict import ModelIdentity, SeriesVerdict, SliceVerdict

MODEL = ModelIdentity(
    name="covidct_densenet",
    version="3",
    spec_fingerprint="ab" * 32,
    synthetic=True,
    intended_use=(
        "Research classifier of axial chest CT slices into Normal, Pneumonia and COVID-19. "
        "Not a medical device: for research only."
    ),
)
RULE = "mean of the slice probabilities over the usable slices; the study label is its argmax"


def read_headers(folder: Path) -> list[Dataset]:
    """Every ``.dcm`` in ``folder``, read without pixels, in file-name order."""
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


def in_series_order(headers: Sequence[Dataset]) -> list[Dataset]:
    """Sorted along the slice normal (z of ImagePositionPatient, head first)."""
    return sorted(headers, key=lambda ds: -float(ds.ImagePositionPatient[2]))


def heatmap_png(rows: int, columns: int, seed: int) -> bytes:
    """An RGB PNG of ``rows`` x ``columns``: grey ramp and a red blob (a fake overlay)."""
    grey = np.tile(np.linspace(0, 200, columns, dtype=np.uint8), (rows, 1))
    img = Image.fromarray(np.stack([grey] * 3, axis=-1))
    draw = ImageDraw.Draw(img)
    x, y = (seed * 37) % (columns // 2) + columns // 4, rows // 2
    draw.ellipse((x - 40, y - 40, x + 40, y + 40), fill=(230, 40, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def made_up_verdict(
    headers: Sequence[Dataset], k: int = 3, label: str = "COVID-19", model: ModelIdentity = MODEL
) -> SeriesVerdict:
    """A verdict over ``headers`` (series order): slice probabilities vary with position,
    the ``k`` most suspicious slices get a heatmap, the series is the mean."""
    ordered = in_series_order(headers)
    n = len(ordered)
    target = CLASS_NAMES.index(label)
    probs = []
    for i in range(n):
        p = np.array([0.2 + 0.1 * ((i + j) % 3) for j in range(len(CLASS_NAMES))])
        p[target] = 1.0 + np.sin(i / max(n, 1) * np.pi)
        probs.append(p / p.sum())
    order = sorted(range(n), key=lambda i: -probs[i][target])[:k]
    slices = []
    for i, ds in enumerate(ordered):
        heat = heatmap_png(int(ds.Rows), int(ds.Columns), i) if i in order else None
        slices.append(
            SliceVerdict(
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                probabilities={c: float(probs[i][j]) for j, c in enumerate(CLASS_NAMES)},
                heatmap_png=heat,
            )
        )
    mean = np.mean(probs, axis=0)
    return SeriesVerdict(
        label=CLASS_NAMES[int(np.argmax(mean))],
        probabilities={c: float(mean[j]) for j, c in enumerate(CLASS_NAMES)},
        rule=RULE,
        slices=tuple(slices),
        suspicious=tuple(order),
        model=model,
    )


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's lines for the file at ``path`` (it reports on stderr)."""
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (Debian's dicom3tools) is needed: apt-get install dicom3tools"
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return (done.stdout + done.stderr).splitlines()


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of dciodvfy's report that are errors."""
    return [line for line in dciodvfy(path) if line.startswith("Error")]


def dsrdump(path: Path) -> str:
    """DCMTK's dump of a Structured Report; fails the test when dsrdump does."""
    exe = shutil.which("dsrdump")
    assert exe, "dsrdump (Debian's dcmtk) is needed: apt-get install dcmtk"
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout
