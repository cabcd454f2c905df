"""The TID 1500 report: built from a real series' headers and a made-up verdict, written to
disk, checked by dciodvfy and dsrdump (the real binaries) and read back by highdicom."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from pathlib import Path
from typing import cast

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from covidct.config import CLASS_NAMES
from dicomnode.report import (
    CLASSIFICATION,
    FINDINGS,
    PROBABILITIES,
    SCHEME,
    ReportError,
    build_sr,
)
from dicomnode.uids import ResultUids, device_uid
from dicomnode.verdict import SeriesVerdict
from tests.dicomnode.results_data import (
    MODEL,
    dciodvfy,
    dciodvfy_errors,
    dsrdump,
    made_up_verdict,
    read_headers,
)
from tests.dicomnode.series_data import ct_series

WHEN = dt.datetime(2026, 12, 4, 10, 30, 0)


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return read_headers(ct_series(tmp_path_factory.mktemp("series")))


@pytest.fixture(scope="module")
def verdict(headers: list[Dataset]) -> SeriesVerdict:
    return made_up_verdict(headers, k=3, label="COVID-19")


@pytest.fixture(scope="module")
def sr_file(
    headers: list[Dataset], verdict: SeriesVerdict, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    build_sr(headers, verdict, created=WHEN).save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def sr(sr_file: Path) -> hd.sr.Comprehensive3DSR:
    return cast(hd.sr.Comprehensive3DSR, hd.sr.srread(sr_file))


def _groups(sr: hd.sr.Comprehensive3DSR) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    content = cast(hd.sr.MeasurementReport, sr.content)
    return list(content.get_image_measurement_groups())


def _probabilities(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, float]:
    names = {PROBABILITIES[c].value: c for c in CLASS_NAMES}
    return {names[m.name.value]: m.value for m in group.get_measurements()}


def _texts(sr: hd.sr.Comprehensive3DSR) -> dict[str, str]:
    items = hd.sr.utils.find_content_items(
        sr.ContentSequence[-1], value_type=hd.sr.ValueTypeValues.TEXT
    )
    return {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue for item in items}


def test_dciodvfy_finds_no_error(sr_file: Path) -> None:
    lines = dciodvfy(sr_file)
    assert lines, "dciodvfy said nothing"
    assert [line for line in lines if line.startswith("Error")] == []


def test_dsrdump_reads_the_report(sr_file: Path) -> None:
    text = dsrdump(sr_file)
    assert "Comprehensive 3D SR Document" in text
    assert '(840539006,SCT,"COVID-19")' in text
    assert "NOT FOR DIAGNOSTIC USE" in text
    assert '"Imaging Measurement Report"' in text


def test_the_series_finding_is_coded(sr: hd.sr.Comprehensive3DSR, verdict: SeriesVerdict) -> None:
    series = _groups(sr)[0]
    assert series.tracking_identifier == "series finding"
    [finding] = series.get_qualitative_evaluations(name=CLASSIFICATION)
    value = cast(hd.sr.CodedConcept, finding.value)
    assert (value.value, value.scheme_designator) == ("840539006", "SCT")
    assert _probabilities(series) == pytest.approx(verdict.probabilities, abs=1e-12)


def test_every_slice_is_referenced_with_its_probabilities(
    sr: hd.sr.Comprehensive3DSR, verdict: SeriesVerdict, headers: list[Dataset]
) -> None:
    slices = _groups(sr)[1:]
    assert len(slices) == len(verdict.slices) == len(headers)
    for group, expected in zip(slices, verdict.slices, strict=True):
        [source] = group.source_images
        ref = source.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == expected.sop_instance_uid
        assert ref.ReferencedSOPClassUID == expected.sop_class_uid
        assert _probabilities(group) == pytest.approx(expected.probabilities, abs=1e-12)
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {str(ds.SOPInstanceUID) for ds in headers}


def test_the_most_suspicious_slices_are_the_evidence(
    sr: hd.sr.Comprehensive3DSR, verdict: SeriesVerdict
) -> None:
    series = _groups(sr)[0]
    referenced = [s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for s in series.source_images]
    assert referenced == [verdict.slices[i].sop_instance_uid for i in verdict.suspicious]
    most = _groups(sr)[1 + verdict.suspicious[0]]
    assert str(most.tracking_identifier).endswith("most suspicious #1")


def test_uids_study_and_patient(
    sr: hd.sr.Comprehensive3DSR, headers: list[Dataset], verdict: SeriesVerdict
) -> None:
    uids = ResultUids(str(headers[0].SeriesInstanceUID), verdict.model.version)
    assert sr.SOPInstanceUID == uids.sr_instance
    assert sr.SeriesInstanceUID == uids.sr_series
    assert sr.SeriesInstanceUID != headers[0].SeriesInstanceUID
    assert sr.StudyInstanceUID == headers[0].StudyInstanceUID
    assert sr.PatientID == headers[0].PatientID
    assert sr.get("StudyDescription") == headers[0].get("StudyDescription")
    assert (sr.SeriesNumber, sr.InstanceNumber, sr.Modality) == (9901, 1, "SR")
    assert (sr.ContentDate, sr.ContentTime) == ("20261204", "103000")
    trackers = [g.tracking_uid for g in _groups(sr)]
    assert trackers[0] == uids.tracking("series")
    assert len(set(trackers)) == len(trackers)


def test_the_algorithm_is_the_observer_and_contributing_equipment(
    sr: hd.sr.Comprehensive3DSR,
) -> None:
    content = cast(hd.sr.MeasurementReport, sr.content)
    [observer] = content.get_observer_contexts(observer_type=codes.DCM.Device)
    attrs = cast(
        hd.sr.DeviceObserverIdentifyingAttributes, observer.observer_identifying_attributes
    )
    assert attrs.uid == device_uid(MODEL.spec_fingerprint)
    assert attrs.serial_number == MODEL.spec_fingerprint
    ours = [e for e in sr.ContributingEquipmentSequence if "DeviceUID" in e]
    assert len(ours) == 1
    assert ours[0].DeviceUID == device_uid(MODEL.spec_fingerprint)
    assert ours[0].SoftwareVersions == MODEL.version
    assert ours[0].ManufacturerModelName == MODEL.name
    assert ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    algorithm = [
        (item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue)
        for item in hd.sr.utils.find_content_items(
            _groups(sr)[0][0], value_type=hd.sr.ValueTypeValues.TEXT
        )
        if item.ConceptNameCodeSequence[0].CodeMeaning.startswith("Algorithm")
    ]
    assert ("Algorithm Name", MODEL.name) in algorithm
    assert ("Algorithm Version", MODEL.version) in algorithm
    assert ("Algorithm Parameters", f"ModelSpec fingerprint {MODEL.spec_fingerprint}") in algorithm


def test_warnings_rule_and_private_scheme(
    sr: hd.sr.Comprehensive3DSR, verdict: SeriesVerdict
) -> None:
    texts = _texts(sr)
    assert texts["Comment"].startswith("NOT FOR DIAGNOSTIC USE")
    assert texts["Intended use"] == MODEL.intended_use
    assert "synthetic data" in texts["Training data"]
    assert texts["Series summary rule"] == verdict.rule
    assert sr.SeriesDescription.startswith("NOT FOR DIAGNOSTIC USE")
    assert "synthetic" in sr.SeriesDescription
    assert [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence] == [SCHEME]


@pytest.mark.parametrize("label", CLASS_NAMES)
def test_each_class_has_its_finding_code(
    label: str, headers: list[Dataset], tmp_path: Path
) -> None:
    verdict = made_up_verdict(headers[:12], k=2, label=label)
    assert verdict.label == label
    path = tmp_path / "sr.dcm"
    build_sr(headers[:12], verdict).save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    series = _groups(cast(hd.sr.Comprehensive3DSR, hd.sr.srread(path)))[0]
    [finding] = series.get_qualitative_evaluations(name=CLASSIFICATION)
    assert cast(hd.sr.CodedConcept, finding.value).value == FINDINGS[label].value


def test_a_real_data_model_says_nothing_about_synthetic_data(headers: list[Dataset]) -> None:
    model = dataclasses.replace(MODEL, synthetic=False)
    sr = build_sr(headers[:6], made_up_verdict(headers[:6], k=1, model=model))
    assert "synthetic" not in sr.SeriesDescription
    assert "Training data" not in _texts(sr)
    assert _texts(sr)["Comment"].startswith("NOT FOR DIAGNOSTIC USE")


def test_slices_not_used_are_named(headers: list[Dataset]) -> None:
    verdict = made_up_verdict(headers[:6], k=1)
    rejected = (("1.2.3.1", "the slice does not decode"), ("1.2.3.2", "not axial"))
    sr = build_sr(headers[:6], dataclasses.replace(verdict, rejected=rejected))
    assert _texts(sr)["Slices not used"] == (
        "2: not axial: 1.2.3.2; the slice does not decode: 1.2.3.1"
    )
    assert "Slices not used" not in _texts(build_sr(headers[:6], verdict))


def _without_times(ds: Dataset) -> bytes:
    """The dataset's encoding after every date, time and datetime is removed."""
    copy = pydicom.dcmread(_encode(ds))

    def strip(d: Dataset) -> None:
        for elem in list(d):
            if elem.VR in ("DA", "TM", "DT"):
                del d[elem.tag]
            elif elem.VR == "SQ":
                for item in elem.value:
                    strip(item)

    strip(copy)
    return _encode(copy).getvalue()


def _encode(ds: Dataset) -> pydicom.filebase.DicomBytesIO:
    buf = pydicom.filebase.DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return buf


def test_building_twice_gives_the_same_object(
    headers: list[Dataset], verdict: SeriesVerdict
) -> None:
    first = build_sr(headers, verdict, created=WHEN)
    again = build_sr(list(reversed(headers)), verdict, created=WHEN + dt.timedelta(hours=1))
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (
        again.SOPInstanceUID,
        again.SeriesInstanceUID,
    )
    assert first.ContentTime != again.ContentTime
    assert _without_times(first) == _without_times(again)


def test_another_model_version_files_another_report(
    headers: list[Dataset], verdict: SeriesVerdict
) -> None:
    other = dataclasses.replace(verdict, model=dataclasses.replace(MODEL, version="4"))
    a, b = (
        build_sr(headers[:6], made_up_verdict(headers[:6])),
        build_sr(headers[:6], made_up_verdict(headers[:6], model=other.model)),
    )
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.StudyInstanceUID == b.StudyInstanceUID


def test_refuses_a_slice_that_is_not_among_the_sources(
    headers: list[Dataset], verdict: SeriesVerdict
) -> None:
    with pytest.raises(ReportError, match="not among the sources"):
        build_sr(headers[1:], verdict)


def test_refuses_sources_of_two_series(headers: list[Dataset], verdict: SeriesVerdict) -> None:
    other = copy.deepcopy(headers[0])
    other.SeriesInstanceUID = "1.2.3.4"
    other.SOPInstanceUID = "1.2.3.4.5"
    with pytest.raises(ReportError, match="one series of one study"):
        build_sr([*headers, other], verdict)


def test_refuses_other_class_names(headers: list[Dataset], verdict: SeriesVerdict) -> None:
    odd = dataclasses.replace(verdict, probabilities={"Normal": 0.5, "Tumour": 0.5})
    with pytest.raises(ReportError, match="classes"):
        build_sr(headers, odd)
