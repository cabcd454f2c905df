"""The series verdict as a DICOM Comprehensive 3D SR following TID 1500 (Measurement Report).

Content tree (docs/dicom-node.md, "What the SR contains"):

- the observer is the algorithm, as a device (TID 1004): its Device UID comes from the
  ModelSpec fingerprint, which is also its serial number;
- one measurement group (TID 1501) for the series: the finding as a coded qualitative
  evaluation, each class's series probability, the algorithm (TID 4019: name, version, the
  fingerprint and the summary rule as parameters) and the most suspicious slices, most
  suspicious first, as its source images;
- one measurement group per usable slice: the three class probabilities and that slice as
  the source image;
- the Qualitative Evaluations container of TID 1500: "NOT FOR DIAGNOSTIC USE", the
  intended-use note, the synthetic-data note where it applies, the rule that made the
  verdict and the slices the gateway could not use, as TEXT items.

Patient and Study come from the source series (same StudyInstanceUID); the series is new and
every UID comes from ``dicomnode.uids``, so rebuilding the same verdict gives the same object.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from copy import deepcopy

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from covidct.config import CLASS_NAMES, NOT_A_MEDICAL_DEVICE, SYNTHETIC_DATA_NOTE
from dicomnode.errors import DicomNodeError
from dicomnode.uids import ResultUids, device_uid
from dicomnode.verdict import ModelIdentity, SeriesVerdict

logger = logging.getLogger(__name__)

#: The designator of this project's private codes (PS3.16 8.2: "99" prefix), declared in
#: every result's Coding Scheme Identification Sequence.
SCHEME = "99COVIDCT"
DISCLAIMER = "NOT FOR DIAGNOSTIC USE"
#: Series numbers of the results: high, so viewers list them after the acquired series.
SR_SERIES_NUMBER = 9901

#: The series finding per class name (SNOMED CT where a concept exists).
FINDINGS: Mapping[str, Code] = {
    "COVID-19": Code("840539006", "SCT", "COVID-19"),
    # Exclusive of COVID-19 here: the three findings partition the series.
    "Pneumonia": Code("233604007", "SCT", "Pneumonia"),
    # "Normal" in COVIDx-CT means neither disease was found, not a normal chest.
    "Normal": Code("NOEVIDENCE", SCHEME, "No evidence of COVID-19 or other pneumonia"),
}
PROBABILITIES: Mapping[str, Code] = {
    "COVID-19": Code("PROB-COVID19", SCHEME, "Probability of COVID-19"),
    "Pneumonia": Code("PROB-PNEUMONIA", SCHEME, "Probability of other pneumonia"),
    "Normal": Code(
        "PROB-NOEVIDENCE", SCHEME, "Probability of no evidence of COVID-19 or other pneumonia"
    ),
}
SUMMARY_RULE = Code("SUMMARY-RULE", SCHEME, "Series summary rule")
INTENDED_USE = Code("INTENDED-USE", SCHEME, "Intended use")
TRAINING_DATA = Code("TRAINING-DATA", SCHEME, "Training data")
NOT_USED = Code("NOT-USED", SCHEME, "Slices not used")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
CT_CHEST = Code("24627-2", "LN", "CT Chest")
#: The name of the series finding (a qualitative evaluation): the classifier's output.
CLASSIFICATION = Code("278201002", "SCT", "Classification")
UNIT_ONE = codes.UCUM.NoUnits  # probabilities in [0, 1], UCUM "1"

#: Patient and Study attributes highdicom reads from the first source; type 2 in the
#: source IODs, so a conformant source may omit them (P001 has no PatientName).
_TYPE2 = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
]


class ReportError(DicomNodeError):
    """The results cannot be built from this series and verdict (the message says why)."""


def coding_schemes() -> list[hd.coding_schemes.CodingSchemeIdentificationItem]:
    """The Coding Scheme Identification Sequence items: the private scheme."""
    return [
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=SCHEME,
            name="covidct result codes",
            version="1",
            responsible_organization="covidct project",
        )
    ]


def series_description(kind: str, model: ModelIdentity) -> str:
    """The Series Description of a result series (LO: at most 64 characters)."""
    text = f"{DISCLAIMER} - covidct {kind}"
    if model.synthetic:
        text += " - synthetic-data model"
    return text[:64]


def notes(model: ModelIdentity) -> list[str]:
    """The warnings every result carries, first line first."""
    lines = [f"{DISCLAIMER}. {NOT_A_MEDICAL_DEVICE}"]
    if model.synthetic:
        lines.append(SYNTHETIC_DATA_NOTE)
    return lines


def algorithm_equipment(
    model: ModelIdentity, manufacturer: str, when: dt.datetime
) -> hd.ContributingEquipment:
    """The algorithm as an item of the Contributing Equipment Sequence (IHE AIR)."""
    item = hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        device_serial_number=model.spec_fingerprint,
        contribution_description=(
            f"Classified the source series (model {model.name}, version {model.version}). "
            f"{DISCLAIMER}."
        ),
        contribution_datetime=when,
    )
    item.DeviceUID = device_uid(model.spec_fingerprint)
    return item


def source_header(source: Dataset) -> Dataset:
    """A copy of a source's header without pixels, with the type 2 Patient and Study
    attributes present (empty where the source omits them)."""
    head = Dataset()
    for elem in source:
        if elem.tag.group < 0x7FE0:
            head.add(deepcopy(elem))
    for keyword in _TYPE2:
        if keyword not in head:
            setattr(head, keyword, None)
    return head


def _reference(source: Dataset) -> Dataset:
    ref = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(ref, keyword, source.get(keyword))
    return ref


def check_sources(sources: Sequence[Dataset], verdict: SeriesVerdict) -> dict[str, Dataset]:
    """The sources by SOP Instance UID, once it is sure they are one series of one study
    and hold every slice of the verdict; raises ReportError otherwise."""
    if not sources or not verdict.slices:
        raise ReportError("a result needs at least one source instance and one usable slice")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in sources}
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in sources}
    if len(series) != 1 or len(studies) != 1 or "" in series | studies:
        raise ReportError("the sources must be one series of one study, with their UIDs")
    if set(verdict.probabilities) != set(CLASS_NAMES) or verdict.label not in CLASS_NAMES:
        raise ReportError(f"the verdict's classes must be {', '.join(CLASS_NAMES)}")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    missing = [s.sop_instance_uid for s in verdict.slices if s.sop_instance_uid not in by_uid]
    if missing:
        raise ReportError(f"{len(missing)} slice(s) of the verdict are not among the sources")
    if any(not 0 <= i < len(verdict.slices) for i in verdict.suspicious):
        raise ReportError("a suspicious slice index is outside the verdict's slices")
    return by_uid


def _probabilities(probabilities: Mapping[str, float]) -> list[hd.sr.Measurement]:
    return [
        hd.sr.Measurement(name=PROBABILITIES[c], value=float(probabilities[c]), unit=UNIT_ONE)
        for c in CLASS_NAMES
    ]


def _series_group(
    verdict: SeriesVerdict, uids: ResultUids
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    model = verdict.model
    evidence = [verdict.slices[i] for i in verdict.suspicious]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking("series"), identifier="series finding"
        ),
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=model.name,
            version=model.version,
            parameters=[f"ModelSpec fingerprint {model.spec_fingerprint}", verdict.rule],
        ),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=CLASSIFICATION, value=FINDINGS[verdict.label])
        ],
        measurements=_probabilities(verdict.probabilities),
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(s.sop_class_uid, s.sop_instance_uid)
            for s in evidence
        ]
        or None,
    )


def _slice_groups(
    verdict: SeriesVerdict, uids: ResultUids
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    rank = {index: r for r, index in enumerate(verdict.suspicious, start=1)}
    total = len(verdict.slices)
    groups = []
    for index, sl in enumerate(verdict.slices):
        label = f"slice {index + 1} of {total}"
        if index in rank:
            label += f", most suspicious #{rank[index]}"
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.tracking(sl.sop_instance_uid), identifier=label
                ),
                measurements=_probabilities(sl.probabilities),
                source_images=[
                    hd.sr.SourceImageForMeasurementGroup(sl.sop_class_uid, sl.sop_instance_uid)
                ],
            )
        )
    return groups


def _evaluations(verdict: SeriesVerdict) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: the Qualitative Evaluations container, TEXT items only."""
    model = verdict.model
    lines = notes(model)
    texts = [(codes.DCM.Comment, lines[0]), (INTENDED_USE, model.intended_use)]
    if model.synthetic:
        texts.append((TRAINING_DATA, lines[1]))
    texts.append((SUMMARY_RULE, verdict.rule))
    if verdict.rejected:
        # each slice named by its SOP Instance UID, grouped by reason (a reader must find it)
        by_reason: dict[str, list[str]] = {}
        for uid, reason in verdict.rejected:
            by_reason.setdefault(reason, []).append(uid)
        named = "; ".join(f"{r}: {', '.join(by_reason[r])}" for r in sorted(by_reason))
        texts.append((NOT_USED, f"{len(verdict.rejected)}: {named}"[:1024]))
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            for name, value in texts
        ]
    )
    return container


def build_sr(
    sources: Sequence[Dataset],
    verdict: SeriesVerdict,
    *,
    manufacturer: str = "covidct",
    series_number: int = SR_SERIES_NUMBER,
    created: dt.datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of one series' verdict.

    Args:
        sources: the source series' datasets (headers are enough), any order.
        verdict: what inference said about the series; its slices must be among ``sources``.
        manufacturer: the Manufacturer of the report and of the algorithm.
        series_number: the report's SeriesNumber.
        created: the content date and time (default: now).

    Returns:
        The report, ready for ``save_as`` or a C-STORE.

    Raises:
        ReportError: the sources are not one series holding every slice, or the verdict's
            classes are not the project's.
    """
    by_uid = check_sources(sources, verdict)
    model = verdict.model
    uids = ResultUids(str(sources[0].SeriesInstanceUID), model.version)
    first = source_header(by_uid[verdict.slices[0].sop_instance_uid])
    # highdicom copies Patient and Study from the first; the rest are only referenced.
    evidence = [first] + [_reference(by_uid[s.sop_instance_uid]) for s in verdict.slices[1:]]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model.spec_fingerprint),
            name=f"{model.name} version {model.version}",
            manufacturer_name=manufacturer,
            model_name=model.name,
            serial_number=model.spec_fingerprint,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CT_CHEST,
        imaging_measurements=[_series_group(verdict, uids), *_slice_groups(verdict, uids)],
    )
    report[0].ContentSequence.append(_evaluations(verdict))
    when = created or dt.datetime.now()
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=uids.sr_series,
        series_number=series_number,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        series_description=series_description("report", model),
        manufacturer_model_name=model.name,
        software_versions=model.version,
        device_serial_number=model.spec_fingerprint,
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
        coding_schemes=coding_schemes(),
        contributing_equipment=[algorithm_equipment(model, manufacturer, when)],
    )
    logger.info(
        "built the report of %d slice(s): %s by model %s version %s",
        len(verdict.slices),
        verdict.label,
        model.name,
        model.version,
    )
    return sr
