"""Secondary Captures of the most suspicious slices: the gateway's heatmap overlay with a
burned-in "NOT FOR DIAGNOSTIC USE" banner, one SC Image per slice, in the source study.

The gateway draws the class activation map over the decoded slice in the slice's own pixel
grid (``SliceVerdict.heatmap_png``), so the capture keeps the source's rows, columns and
pixel spacing; the banners are drawn over the top and bottom rows rather than added to
them, which keeps that geometry. BurnedInAnnotation is YES: the text is in the pixels, so no
viewer can hide it.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Sequence
from typing import cast

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.report import (
    DISCLAIMER,
    ReportError,
    algorithm_equipment,
    check_sources,
    notes,
    series_description,
    source_header,
)
from dicomnode.uids import ResultUids
from dicomnode.verdict import ModelIdentity, SeriesVerdict, SliceVerdict

logger = logging.getLogger(__name__)

SC_SERIES_NUMBER = 9902
_BANNER = (0, 0, 0)
_WARNING = (255, 220, 0)
_TEXT = (255, 255, 255)

# Patient direction letters of a direction cosine's dominant axis (PS3.3 C.7.6.1.1.1).
_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "H", (2, -1): "F"}


def _orientation(source: Dataset) -> tuple[str, str]:
    """PatientOrientation (row, column directions) from ImageOrientationPatient; axial
    head-first supine when the source has none."""
    iop = source.get("ImageOrientationPatient")
    if not iop or len(iop) != 6:
        return ("L", "P")
    letters = []
    for cosines in (iop[:3], iop[3:]):
        axis = int(np.argmax(np.abs(np.asarray(cosines, dtype=float))))
        letters.append(_LETTERS[(axis, 1 if float(cosines[axis]) > 0 else -1)])
    return (letters[0], letters[1])


def _fitted(draw: ImageDraw.ImageDraw, text: str, size: int, room: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size``, shrunk until ``text`` fits in ``room`` pixels."""
    font = ImageFont.load_default(size=size)
    while size > 6 and draw.textlength(text, font=font) > room:
        size -= 1
        font = ImageFont.load_default(size=size)
    return font  # type: ignore[return-value]


def burn_banner(rgb: np.ndarray, top: str, bottom: str) -> np.ndarray:
    """``rgb`` ([H, W, 3] uint8) with a black banner over its top rows saying ``top`` in
    yellow and one over its bottom rows saying ``bottom`` in white."""
    img = Image.fromarray(rgb)
    width, height = img.size
    band = max(16, height // 12)
    margin = band // 4
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, width - 1, band - 1), fill=_BANNER)
    font = _fitted(draw, top, int(band * 0.7), width - 2 * margin)
    draw.text((margin, band // 8), top, fill=_WARNING, font=font)
    small = max(12, band // 2)
    draw.rectangle((0, height - small - 4, width - 1, height - 1), fill=_BANNER)
    font = _fitted(draw, bottom, small - 2, width - 2 * margin)
    draw.text((margin, height - small - 2), bottom, fill=_TEXT, font=font)
    return np.asarray(img, dtype=np.uint8)


def _pixels(sl: SliceVerdict) -> np.ndarray:
    if sl.heatmap_png is None:
        raise ReportError("a suspicious slice has no heatmap")
    try:
        with Image.open(io.BytesIO(sl.heatmap_png)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise ReportError(f"a heatmap is not a readable image: {e}") from e


def _spacing(source: Dataset, rgb: np.ndarray) -> tuple[int, int] | None:
    """The source's PixelSpacing when the heatmap is in the source's pixel grid."""
    spacing = source.get("PixelSpacing")
    same_grid = rgb.shape[:2] == (int(source.get("Rows", 0)), int(source.get("Columns", 0)))
    if not same_grid or not spacing or len(spacing) != 2:
        return None
    # highdicom's annotation says int; the values are millimetres (floats)
    return cast("tuple[int, int]", (float(spacing[0]), float(spacing[1])))


def _caption(model: ModelIdentity, sl: SliceVerdict, label: str) -> str:
    text = f"{model.name} v{model.version}: {label} {sl.probabilities.get(label, 0.0):.2f}"
    return f"{text} | synthetic-data model" if model.synthetic else text


def _capture(
    source: Dataset,
    sl: SliceVerdict,
    rank: int,
    verdict: SeriesVerdict,
    uids: ResultUids,
    when: dt.datetime,
    manufacturer: str,
    series_number: int,
) -> hd.sc.SCImage:
    model = verdict.model
    rgb = burn_banner(_pixels(sl), DISCLAIMER, _caption(model, sl, verdict.label))
    ref = source_header(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.sc_series,
        series_number=series_number,
        sop_instance_uid=uids.sc_instance(rank),
        instance_number=rank,
        manufacturer=manufacturer,
        pixel_spacing=_spacing(source, rgb),
        patient_orientation=_orientation(source),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[algorithm_equipment(model, manufacturer, when)],
        series_description=series_description("heatmaps", model),
        manufacturer_model_name=model.name,
        software_versions=model.version,
        device_serial_number=model.spec_fingerprint,
        content_date=when.date(),
        content_time=when.time(),
    )
    sc.copy_patient_and_study_information(ref)
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    else:
        # Type 2C, required for a paired body part: unknown here, so present and empty.
        sc.Laterality = ""
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"  # made by a workstation's software, not scanned or copied
    sc.ImageComments = " ".join([*notes(model), f"Most suspicious slice #{rank}."])[:10240]
    sc.DerivationDescription = (
        f"Class activation map of {verdict.label} by model {model.name} version "
        f"{model.version} over the source slice. {DISCLAIMER}."
    )
    item = Dataset()
    item.ReferencedSOPClassUID = sl.sop_class_uid
    item.ReferencedSOPInstanceUID = sl.sop_instance_uid
    sc.SourceImageSequence = [item]
    return sc


def build_captures(
    sources: Sequence[Dataset],
    verdict: SeriesVerdict,
    *,
    manufacturer: str = "covidct",
    series_number: int = SC_SERIES_NUMBER,
    created: dt.datetime | None = None,
) -> list[hd.sc.SCImage]:
    """One Secondary Capture per suspicious slice, most suspicious first (InstanceNumber 1).

    Args:
        sources: the source series' datasets (headers are enough), any order.
        verdict: what inference said; each suspicious slice carries its heatmap PNG.
        manufacturer: the Manufacturer of the captures and of the algorithm.
        series_number: the captures' SeriesNumber.
        created: the content date and time (default: now).

    Returns:
        The captures (empty when the verdict names no suspicious slice).

    Raises:
        ReportError: the sources do not hold the verdict's slices, or a suspicious slice
            has no readable heatmap.
    """
    by_uid = check_sources(sources, verdict)
    uids = ResultUids(str(sources[0].SeriesInstanceUID), verdict.model.version)
    when = created or dt.datetime.now()
    captures = []
    for rank, index in enumerate(verdict.suspicious, start=1):
        sl = verdict.slices[index]
        source = by_uid[sl.sop_instance_uid]
        captures.append(
            _capture(source, sl, rank, verdict, uids, when, manufacturer, series_number)
        )
    logger.info("built %d Secondary Capture(s)", len(captures))
    return captures
