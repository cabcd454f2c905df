"""Real reference CT slices shipped inside the package (``covidct/reference_slices/``).

Export's parity check and the redeploy smoke test read them, so both work from an installed
wheel in any directory; benchmarks and tests that want all 123 slices read the shared data.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from covidct.config import CLASS_NAMES

LABELS = "labels.txt"


@dataclass(frozen=True)
class Sample:
    """One packaged slice: its file, official class and body box (xmin, ymin, xmax, ymax)."""

    path: Path
    label: int
    box: tuple[int, int, int, int]

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


def samples_dir() -> Path:
    """The folder holding the packaged slices (a real directory: the package is not zipped)."""
    return Path(str(resources.files("covidct") / "reference_slices"))


def reference_samples() -> list[Sample]:
    """Every packaged slice with its label, in the order of ``labels.txt``."""
    root = samples_dir()
    out = []
    for line in (root / LABELS).read_text().splitlines():
        if line.strip():
            name, label, *box = line.split()
            out.append(
                Sample(
                    root / name, int(label), (int(box[0]), int(box[1]), int(box[2]), int(box[3]))
                )
            )
    if not out:
        raise FileNotFoundError(f"no reference slices listed in {root / LABELS}")
    return out


def reference_slices() -> list[Path]:
    """The packaged slices' paths (PNG, 512x512, 8-bit)."""
    return [s.path for s in reference_samples()]
