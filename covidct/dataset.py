"""Reading and validating COVIDx-CT folders.

A COVIDx-CT folder holds ``images/`` (or the PNGs beside the label files) and up to three
label files ``{train,val,test}_COVIDx-CT.txt`` with lines ``filename class xmin ymin xmax
ymax`` (class: Normal=0, Pneumonia=1, COVID-19=2; box: the body region, xmax/ymax
exclusive). :func:`read_covidx` checks everything and reports every problem at once, with
file and line, instead of stopping at the first.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from covidct.config import CLASS_NAMES
from covidct.errors import CovidctError

SPLITS = ("train", "val", "test")
IMAGE_DIR = "images"

_CTMD = re.compile(r"^(COVIDCTMD-[^-]+)-IM\d+$")
_CNCB = re.compile(r"^(.+?_\d+)_\d+_\d+$")  # NCP_96_1328_0032 -> NCP_96
_CNCB_SCAN = re.compile(r"^(.+?_\d+_\d+)_\d+$")  # NCP_96_1328_0032 -> NCP_96_1328
_TRAILING_INDEX = re.compile(r"^(.+?)[-_]\d+$")


SYNTHETIC_MARKER = "SYNTHETIC.json"


def is_synthetic(root: Path) -> bool:
    """A folder written by ``covidct data synth`` carries a marker naming its generator."""
    return (Path(root) / SYNTHETIC_MARKER).is_file()


def label_file(root: Path, split: str) -> Path:
    return root / f"{split}_COVIDx-CT.txt"


def patient_id(filename: str) -> str:
    """The patient a slice belongs to, from its COVIDx-CT file name.

    ``NCP_96_1328_0032.png`` (source prefix, patient, scan, slice) gives ``NCP_96``;
    ``COVIDCTMD-P001-IM0038.png`` gives ``COVIDCTMD-P001``. Other names lose one trailing
    ``-N``/``_N`` slice index (``radiopaedia_40_86625_0_case18_0033.png`` gives the part
    before ``_0033``), so slices of one scan still group together.
    """
    stem = Path(filename).stem
    for pattern in (_CTMD, _CNCB, _TRAILING_INDEX):
        m = pattern.match(stem)
        if m:
            return m.group(1)
    return stem


def scan_id(filename: str) -> str:
    """The scan (one CT series) a slice belongs to, from its COVIDx-CT file name.

    A CNCB name carries patient and scan: ``NCP_96_1328_0032.png`` gives ``NCP_96_1328``
    (patient ``NCP_96``, scan 1328); a patient may have several scans. Names without a scan
    field (``COVIDCTMD-P001-IM0038.png``: one series per patient) give the patient.
    """
    m = _CNCB_SCAN.match(Path(filename).stem)
    return m.group(1) if m else patient_id(filename)


@dataclass(frozen=True)
class Sample:
    """One labelled slice."""

    filename: str
    label: int
    box: tuple[int, int, int, int]
    patient: str
    split: str
    line: int

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


@dataclass(frozen=True)
class Problem:
    """Something wrong with a folder; ``line`` is 0 for problems of a whole file or split."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


@dataclass
class Dataset:
    """A read COVIDx-CT folder: samples per split, the problems found, the image folder."""

    root: Path
    image_dir: Path
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def image_path(self, sample: Sample) -> Path:
        return self.image_dir / sample.filename

    def class_counts(self, split: str) -> dict[str, int]:
        counts = Counter(s.label for s in self.splits[split])
        return {name: counts.get(i, 0) for i, name in enumerate(CLASS_NAMES)}

    def summary_line(self, split: str) -> str:
        """``test: Normal=42 Pneumonia=40 COVID-19=41``."""
        counts = self.class_counts(split)
        return f"{split}: " + " ".join(f"{k}={v}" for k, v in counts.items())

    def fingerprint(self) -> str:
        """sha256 over the split label files present (name and content), in split order."""
        digest = hashlib.sha256()
        for split in self.splits:
            path = label_file(self.root, split)
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    def label_file_checksums(self) -> dict[str, str]:
        return {
            split: hashlib.sha256(label_file(self.root, split).read_bytes()).hexdigest()
            for split in self.splits
        }


class DatasetError(CovidctError):
    """A folder cannot be used; ``problems`` lists every reason."""

    def __init__(self, root: Path, problems: list[Problem]) -> None:
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{root}: {len(problems)} problem(s)\n{shown}{more}")


def find_image_dir(root: Path) -> Path:
    """``root/images`` when it exists (the COVIDx-CT layout), else ``root`` itself."""
    candidate = root / IMAGE_DIR
    return candidate if candidate.is_dir() else root


def read_covidx(root: str | Path, check_images: bool = True) -> Dataset:
    """Read and validate every split label file of a COVIDx-CT folder.

    Args:
        root: the folder holding ``*_COVIDx-CT.txt`` files.
        check_images: open each image's header to check it exists, decodes, and contains
            its box (fast: no pixels are decoded).

    Returns:
        The dataset, with ``problems`` listing every problem (empty when all is well).
    """
    root = Path(root)
    ds = Dataset(root=root, image_dir=find_image_dir(root))
    if not root.is_dir():
        ds.problems.append(Problem(str(root), 0, "not a directory"))
        return ds
    present = [s for s in SPLITS if label_file(root, s).is_file()]
    if not present:
        names = ", ".join(label_file(root, s).name for s in SPLITS)
        ds.problems.append(Problem(str(root), 0, f"no label file found (expected {names})"))
        return ds

    first_seen: dict[str, str] = {}  # file name -> "file:line" where it first appeared
    for split in present:
        path = label_file(root, split)
        ds.splits[split] = _read_label_file(path, split, ds, first_seen, check_images)
    ds.problems.extend(_leakage(ds))
    return ds


def _read_label_file(
    path: Path,
    split: str,
    ds: Dataset,
    first_seen: dict[str, str],
    check_images: bool,
) -> list[Sample]:
    samples: list[Sample] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        ds.problems.append(Problem(str(path), 0, f"cannot read label file: {e}"))
        return samples
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue

        def bad(msg: str, lineno: int = lineno) -> None:
            ds.problems.append(Problem(str(path), lineno, msg))

        parts = line.split()
        if len(parts) != 6:
            bad(f"malformed line (expected 'filename class xmin ymin xmax ymax'): {line!r}")
            continue
        name, *numbers = parts
        try:
            label, xmin, ymin, xmax, ymax = (int(v) for v in numbers)
        except ValueError:
            bad(f"malformed line (class and box must be integers): {line!r}")
            continue
        ok = True
        if not 0 <= label < len(CLASS_NAMES):
            bad(f"{name}: bad class {label} (expected 0=Normal, 1=Pneumonia, 2=COVID-19)")
            ok = False
        if not (0 <= xmin < xmax and 0 <= ymin < ymax):
            bad(f"{name}: box {[xmin, ymin, xmax, ymax]} is empty or negative")
            ok = False
        if name in first_seen:
            bad(f"{name}: duplicate file name (first at {first_seen[name]})")
            ok = False
        else:
            first_seen[name] = f"{path.name}:{lineno}"
        if check_images:
            ok = _check_image(ds.image_dir / name, (xmin, ymin, xmax, ymax), bad) and ok
        if ok:
            samples.append(
                Sample(name, label, (xmin, ymin, xmax, ymax), patient_id(name), split, lineno)
            )
    return samples


def _check_image(path: Path, box: tuple[int, int, int, int], bad: Callable[[str], None]) -> bool:
    """Header-only check: the image exists, is a readable image, and contains the box."""
    if not path.is_file():
        bad(f"{path.name}: image not found at {path}")
        return False
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError) as e:
        bad(f"{path.name}: unreadable image: {e}")
        return False
    _, _, xmax, ymax = box
    if xmax > width or ymax > height:
        bad(f"{path.name}: box {list(box)} lies outside the {width}x{height} image")
        return False
    return True


def _leakage(ds: Dataset) -> list[Problem]:
    """A patient in more than one split leaks between training and evaluation."""
    where: dict[str, Counter[str]] = defaultdict(Counter)
    for split, samples in ds.splits.items():
        for s in samples:
            where[s.patient][split] += 1
    problems = []
    for patient, counts in sorted(where.items()):
        if len(counts) > 1:
            spread = ", ".join(f"{split} ({n} slices)" for split, n in counts.items())
            problems.append(
                Problem(str(ds.root), 0, f"patient leakage: {patient} appears in {spread}")
            )
    return problems
