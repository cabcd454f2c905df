"""What the study viewer (``/studies`` on the node's HTTP port) shows of each processed series,
kept in the spool beside the series' record: ``SPOOL/view/<series key>/``.

At the end of processing, ``save_view`` writes ``summary.json`` (the verdict, the rule that
made it, every usable slice's probabilities in series order, the SR's UIDs, the model, and
the patient's name, ID and the study date only when ``VIEW_PATIENT_DATA`` allows it), a
preview PNG of each slice (the lung window of the one preprocessing implementation, at most
``PREVIEW_PX`` a side), the heatmap PNG of each most suspicious slice, and the SR itself (for
download). Files are 0600 in a 0700 folder, written atomically; the view is deleted
``VIEW_KEEP_HOURS`` after it was made (``ViewStore.sweep``). The series key is the hash the
spool names the series by, so no UID appears in a URL.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from pydicom.dataset import Dataset

from covidct.files import atomic_write_text
from covidct.preprocessing.dicom import decode_dicom
from covidct.preprocessing.errors import Limits
from dicomnode.records import series_key
from dicomnode.spool import write_durably
from dicomnode.verdict import SeriesVerdict

logger = logging.getLogger(__name__)

VIEW_FOLDER = "view"
SUMMARY = "summary.json"
SR_FILE = "sr.dcm"
PREVIEW_PX = 256


def _png(image: Image.Image) -> bytes:
    image.thumbnail((PREVIEW_PX, PREVIEW_PX))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def preview(path: Path) -> bytes | None:
    """A slice's preview PNG (lung window, at most PREVIEW_PX a side); None when the slice
    cannot be decoded as one CT image (an Enhanced CT frame, say)."""
    try:
        grey = decode_dicom(path.read_bytes(), Limits())
    except Exception as e:  # the viewer shows a gap; processing is not affected
        logger.info("no preview for a slice: %s", type(e).__name__)
        return None
    return _png(Image.fromarray(grey))


def save_view(
    root: Path,
    series_uid: str,
    files: Sequence[Path],
    headers: Sequence[Dataset],
    verdict: SeriesVerdict,
    sr: Dataset,
    sr_bytes: bytes,
    patient_data: bool,
) -> Path:
    """Write the view of one processed series (replacing an older one); its folder."""
    folder = root / VIEW_FOLDER / series_key(series_uid)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    by_uid = {str(h.SOPInstanceUID): f for h, f in zip(headers, files, strict=True)}
    slices = []
    for i, sl in enumerate(verdict.slices):
        png = preview(by_uid[sl.sop_instance_uid]) if sl.sop_instance_uid in by_uid else None
        if png is not None:
            write_durably(folder, f"slice-{i:04d}.png", png)
        if sl.heatmap_png is not None:
            with Image.open(io.BytesIO(sl.heatmap_png)) as heat:
                write_durably(folder, f"heatmap-{i:04d}.png", _png(heat.convert("RGB")))
        slices.append(
            {
                "index": i,
                "probabilities": sl.probabilities,
                "preview": png is not None,
                "heatmap": sl.heatmap_png is not None,
            }
        )
    write_durably(folder, SR_FILE, sr_bytes)
    first = headers[0]
    summary: dict[str, Any] = {
        "key": folder.name,
        "made_at": time.time(),
        "label": verdict.label,
        "probabilities": verdict.probabilities,
        "rule": verdict.rule,
        "suspicious": list(verdict.suspicious),
        "rejected": len(verdict.rejected),
        "slices": slices,
        "model": {
            "name": verdict.model.name,
            "version": verdict.model.version,
            "synthetic": verdict.model.synthetic,
            "intended_use": verdict.model.intended_use,
        },
        "sr": {
            "sop_instance_uid": str(sr.SOPInstanceUID),
            "series_instance_uid": str(sr.SeriesInstanceUID),
        },
        "description": str(first.get("SeriesDescription", "") or ""),
        "patient": (
            {
                "name": str(first.get("PatientName", "") or ""),
                "id": str(first.get("PatientID", "") or ""),
                "study_date": str(first.get("StudyDate", "") or ""),
            }
            if patient_data
            else None
        ),
    }
    atomic_write_text(folder / SUMMARY, json.dumps(summary), mode=0o600)
    return folder


class ViewStore:
    """The views in a spool, for the web routes.

    Args:
        root: the spool folder.
        keep_hours: a view older than this is deleted by ``sweep``.
    """

    def __init__(self, root: Path, keep_hours: float) -> None:
        self.folder = root / VIEW_FOLDER
        self.keep_hours = keep_hours

    def summaries(self) -> list[dict[str, Any]]:
        """Every view's summary without its slices, newest first."""
        found = []
        for path in self.folder.glob(f"*/{SUMMARY}"):
            try:
                summary = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            summary["slice_count"] = len(summary.pop("slices", []))
            found.append(summary)
        return sorted(found, key=lambda s: -float(s.get("made_at", 0)))

    def summary(self, key: str) -> dict[str, Any] | None:
        """One view's summary, or None (an unknown or malformed key)."""
        path = self.file(key, SUMMARY)
        if path is None:
            return None
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None

    def file(self, key: str, name: str) -> Path | None:
        """A file of one view, or None: ``key`` must be a series key (32 hex digits) and
        ``name`` a plain file name, so nothing outside the view folder can be asked for."""
        if len(key) != 32 or any(c not in "0123456789abcdef" for c in key):
            return None
        if "/" in name or name.startswith("."):
            return None
        path = self.folder / key / name
        return path if path.is_file() else None

    def sweep(self) -> int:
        """Delete the views older than ``keep_hours``; how many."""
        cutoff = time.time() - self.keep_hours * 3600
        removed = 0
        for path in self.folder.glob(f"*/{SUMMARY}"):
            try:
                made = float(json.loads(path.read_text()).get("made_at", 0))
            except (OSError, ValueError):
                made = path.stat().st_mtime
            if made < cutoff:
                shutil.rmtree(path.parent, ignore_errors=True)
                removed += 1
        return removed
