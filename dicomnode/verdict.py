"""What inference says about one series: the data the report writers turn into DICOM.

Plain frozen dataclasses, built by ``dicomnode.inference`` from the gateway's study answer
and read by ``dicomnode.report`` (the TID 1500 SR) and ``dicomnode.capture`` (the heatmap
Secondary Captures). Nothing here talks to the network or the disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelIdentity:
    """The algorithm that made a result, as the SR's observer device and the Contributing
    Equipment Sequence name it.

    Attributes:
        name: Triton model name (ModelSpec.name).
        version: the Triton model version that answered every slice of the series.
        spec_fingerprint: ``ModelSpec.fingerprint()`` of that version.
        synthetic: the model was trained on synthetic data (every result says so).
        intended_use: the gateway's intended-use note (not a medical device ...).
    """

    name: str
    version: str
    spec_fingerprint: str
    synthetic: bool
    intended_use: str


@dataclass(frozen=True)
class SliceVerdict:
    """One source instance and what the model gave it.

    Attributes:
        sop_instance_uid: the source CT image's SOP Instance UID.
        sop_class_uid: its SOP Class UID (CT Image Storage or Enhanced CT).
        probabilities: class name -> probability, in ModelSpec.class_names order.
        heatmap_png: the CAM overlaid on the slice (PNG bytes) for the most suspicious slices,
            else None.
    """

    sop_instance_uid: str
    sop_class_uid: str
    probabilities: dict[str, float]
    heatmap_png: bytes | None = None


@dataclass(frozen=True)
class SeriesVerdict:
    """The series finding and its evidence.

    Attributes:
        label: the series label (a class name), made by ``rule``.
        probabilities: class name -> the series probability the rule computed.
        rule: the gateway's summary rule, in words (the SR names it).
        slices: every usable slice, in series order (along the slice normal).
        suspicious: indices into ``slices`` of the most suspicious slices, most suspicious
            first (the SR's evidence; each has a heatmap).
        rejected: slices the gateway could not use: (SOP Instance UID, reason).
        model: the algorithm.
    """

    label: str
    probabilities: dict[str, float]
    rule: str
    slices: tuple[SliceVerdict, ...]
    suspicious: tuple[int, ...]
    model: ModelIdentity
    rejected: tuple[tuple[str, str], ...] = field(default_factory=tuple)
