"""STOW-RS into the node (``dicomnode.web``, ``dicomnode.stow``): the node served by uvicorn
on a free port, real CT files in, the DICOM JSON answer and the spool checked; bad input gets
the status and Failure Reason PS3.18 gives it, and what was stored before a fault stays."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from dicomnode.multipart import encode_related, parse_related
from dicomnode.records import SeriesState
from tests.dicomnode.scanner import Recorder, node_settings, running_node
from tests.dicomnode.series_data import fixture_series
from tests.rawhttp import refused_mid_body
from tests.waiting import wait_for

REFERENCED, FAILED, REASON = "00081199", "00081198", "00081197"
SOP_INSTANCE = "00081155"


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return sorted(fixture_series(tmp_path_factory.mktemp("stow") / "s", slices=20).glob("*.dcm"))


def _post(port: int, parts: list[bytes], study: str | None = None, **headers: str):
    content_type, body = encode_related(parts)
    url = f"http://127.0.0.1:{port}/dicomweb/studies" + (f"/{study}" if study else "")
    return httpx.post(
        url, content=body, headers={"Content-Type": content_type, **headers}, timeout=60
    )


def _failures(answer: dict) -> list[tuple[str, int]]:
    items = answer[FAILED].get("Value", [])
    return [(i.get(SOP_INSTANCE, {}).get("Value", [""])[0], i[REASON]["Value"][0]) for i in items]


def _as(path: Path, **changes: str) -> bytes:
    ds = pydicom.dcmread(path)
    for name, value in changes.items():
        setattr(ds, name, value)
        if name == "SOPClassUID":
            ds.file_meta.MediaStorageSOPClassUID = value
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_series_stowed_is_received_completed_and_processed_as_a_c_store_would_be(
    tmp_path: Path, series: list[Path]
) -> None:
    recorder = Recorder()
    with running_node(node_settings(tmp_path), recorder, http=True) as node:
        assert node.http_server is not None
        study = str(pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
        r = _post(node.http_server.port, [p.read_bytes() for p in series], study)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/dicom+json")
        answer = r.json()
        stored = [i[SOP_INSTANCE]["Value"][0] for i in answer[REFERENCED]["Value"]]
        expected = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in series]
        assert stored == expected and _failures(answer) == []
        try:
            wait_for(
                lambda: (
                    recorder.calls and [r.state for r in node.spool.records()] == [SeriesState.DONE]
                ),
                timeout=30,
            )
        except AssertionError:  # say where the series stopped (it did once in a full run)
            states = [(r.state, r.reason, r.instance_count) for r in node.spool.records()]
            raise AssertionError(
                f"processed {len(recorder.calls)} times; spool: {states}"
            ) from None
        [record] = node.spool.records()
        assert record.state is SeriesState.DONE and record.instance_count == len(series)
        assert record.calling_aes == ["STOW-RS"]
        # byte for byte as sent
        kept = sorted(p.read_bytes() for p in recorder.calls[0].paths)
        assert kept == sorted(p.read_bytes() for p in series)


def test_each_bad_part_fails_with_its_reason_and_the_good_ones_are_kept(
    tmp_path: Path, series: list[Path]
) -> None:
    settings = node_settings(tmp_path, max_instance_bytes=series[0].stat().st_size + 10)
    with running_node(settings, http=True) as node:
        assert node.http_server is not None
        port = node.http_server.port
        first = pydicom.dcmread(series[0], stop_before_pixels=True)
        big = pydicom.dcmread(series[2])
        big.ImageComments = "x" * 4096  # over the instance cap
        out = io.BytesIO()
        big.save_as(out, enforce_file_format=True)
        no_pixels = pydicom.dcmread(series[3])
        del no_pixels.PixelData
        no_pixels_file = io.BytesIO()
        no_pixels.save_as(no_pixels_file, enforce_file_format=True)
        parts = [
            series[0].read_bytes(),
            b"%PDF-1.4 not DICOM at all",
            _as(series[1], SOPClassUID="1.2.840.10008.5.1.4.1.1.7"),  # Secondary Capture
            out.getvalue(),
            no_pixels_file.getvalue(),
        ]
        r = _post(port, parts)
        assert r.status_code == 202, r.text
        answer = r.json()
        assert [i[SOP_INSTANCE]["Value"][0] for i in answer[REFERENCED]["Value"]] == [
            str(first.SOPInstanceUID)
        ]
        assert _failures(answer) == [
            ("", 0xC000),
            (str(pydicom.dcmread(series[1], stop_before_pixels=True).SOPInstanceUID), 0x0122),
            (str(big.SOPInstanceUID), 0xA700),
            (str(no_pixels.SOPInstanceUID), 0xA900),
        ]
        warnings = r.headers.get_list("warning")
        assert len(warnings) == 4 and "part 2: not a DICOM Part 10 file" in warnings[0]
        assert node.spool.records()[0].instance_count == 1

        # none stored: 409
        r = _post(port, [b"garbage"])
        assert r.status_code == 409 and _failures(r.json()) == [("", 0xC000)]
        # an instance of another study than the path's: 0xA900, not stored
        r = _post(port, [series[4].read_bytes()], "1.2.3.4")
        assert r.status_code == 409 and _failures(r.json())[0][1] == 0xA900
        assert node.spool.records()[0].instance_count == 1


@pytest.mark.parametrize(
    ("content_type", "status", "detail"),
    [
        ("application/dicom", 415, "expected multipart/related"),
        (None, 415, "no Content-Type"),
        ("multipart/related; type=application/dicom", 400, "without a boundary"),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415, "only application"),
    ],
)
def test_a_request_that_is_not_multipart_related_of_dicom_is_refused_with_a_reason(
    tmp_path: Path, series: list[Path], content_type: str | None, status: int, detail: str
) -> None:
    with running_node(node_settings(tmp_path), http=True) as node:
        assert node.http_server is not None
        headers = {"Content-Type": content_type} if content_type else {}
        r = httpx.post(
            f"http://127.0.0.1:{node.http_server.port}/dicomweb/studies",
            content=series[0].read_bytes(),
            headers=headers,
            timeout=30,
        )
        assert r.status_code == status, r.text
        assert detail in r.json()["detail"]
        assert node.spool.records() == []


def test_a_body_cut_off_keeps_the_parts_before_it_and_says_how_many(
    tmp_path: Path, series: list[Path]
) -> None:
    with running_node(node_settings(tmp_path), http=True) as node:
        assert node.http_server is not None
        content_type, body = encode_related([p.read_bytes() for p in series[:3]])
        boundary = content_type.rsplit("boundary=", 1)[1].encode()
        third = [i for i in range(len(body)) if body.startswith(b"--" + boundary, i)][2]
        cut = body[: third + 300]  # inside the third part
        r = httpx.post(
            f"http://127.0.0.1:{node.http_server.port}/dicomweb/studies",
            content=cut,
            headers={"Content-Type": content_type},
            timeout=30,
        )
        assert r.status_code == 400, r.text
        assert "2 instance(s) before the fault were stored" in r.json()["detail"]
        assert node.spool.records()[0].instance_count == 2


def test_a_request_that_pauses_between_parts_keeps_its_series_receiving_to_its_end(
    tmp_path: Path, series: list[Path]
) -> None:
    """A pause of more than STABLE_S inside one request does not complete the series: it would
    be skipped with the slices so far (fewer than MIN_SLICES) and, with KEEP_HOURS 0, purged
    before the rest arrived. STABLE_S counts from the request's end."""
    recorder = Recorder()
    with running_node(node_settings(tmp_path), recorder, http=True) as node:
        assert node.http_server is not None
        content_type, body = encode_related([p.read_bytes() for p in series])
        boundary = content_type.rsplit("boundary=", 1)[1].encode()
        delimiter = b"--" + boundary + b"\r\n"
        half = [i for i in range(len(body)) if body.startswith(delimiter, i)][10] + len(delimiter)
        during: list[tuple[SeriesState, int]] = []

        def slowly() -> Iterator[bytes]:
            yield body[:half]
            # the first ten stored (slow under load), then the pause
            wait_for(lambda: [r.instance_count for r in node.spool.records()] == [10], 30)
            time.sleep(node.settings.stable_s * 3)
            during.extend((r.state, r.instance_count) for r in node.spool.records())
            yield body[half:]

        r = httpx.post(
            f"http://127.0.0.1:{node.http_server.port}/dicomweb/studies",
            content=slowly(),
            headers={"Content-Type": content_type},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert during == [(SeriesState.RECEIVING, 10)]
        wait_for(lambda: [r.state for r in node.spool.records()] == [SeriesState.DONE], 30)
        assert len(recorder.calls) == 1 and len(recorder.calls[0].paths) == len(series)
        assert node.spool.records()[0].instance_count == len(series)


def test_the_api_key_is_asked_for_and_the_body_is_capped_before_it_is_read(
    tmp_path: Path, series: list[Path]
) -> None:
    settings = node_settings(tmp_path, api_key="s3cret", max_stow_bytes=1_000_000)
    with running_node(settings, http=True) as node:
        assert node.http_server is not None
        port = node.http_server.port
        one = [series[0].read_bytes()]
        assert _post(port, one).status_code == 401
        assert _post(port, one, **{"X-API-Key": "wrong"}).status_code == 401
        assert _post(port, one, **{"X-API-Key": "s3cret"}).status_code == 200
        assert _post(port, one, Authorization="Bearer s3cret").status_code == 200
        too_much = [p.read_bytes() for p in series] * 3
        r = _post(port, too_much, **{"X-API-Key": "s3cret"})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=10)
        assert status.status_code == 200  # no key: no patient data there


def test_a_client_still_sending_gets_the_whole_413_and_a_clean_close(tmp_path: Path) -> None:
    """A body declared over the cap, of which the client has sent 2 MB before it reads: the
    answer comes whole and the connection ends with a FIN. Closed with those bytes unread, the
    socket would be reset and the client could lose the answer."""
    settings = node_settings(tmp_path, api_key="s3cret", max_stow_bytes=1_000_000)
    with running_node(settings, http=True) as node:
        assert node.http_server is not None
        head, body = refused_mid_body(
            node.http_server.port,
            "/dicomweb/studies",
            {"X-API-Key": "s3cret", "Content-Type": "multipart/related; boundary=b"},
            50_000_000,
            2_000_000,
        )
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"limit" in body and body.endswith(b"}"), body


def test_multipart_related_round_trips_in_any_chunking() -> None:
    parts = [b"\x00" * 10, b"--not-a-boundary\r\n", b"DICM" * 1000]
    content_type, body = encode_related(parts)
    assert [bytes(p.data) for p in parse_related(body, content_type, 1 << 20)] == parts

    from dicomnode.multipart import RelatedParser, parse_content_type

    got: list[bytes] = []
    parser = RelatedParser(
        parse_content_type(content_type).boundary, lambda p: got.append(bytes(p.data)), 1 << 20
    )
    for i in range(0, len(body), 7):
        parser.write(body[i : i + 7])
    parser.close()
    assert got == parts


@pytest.mark.parametrize("chunk", [7, 4096, 1 << 22])
def test_a_part_over_the_cap_keeps_its_head_however_the_body_is_chunked(
    series: list[Path], chunk: int
) -> None:
    from dicomnode.multipart import HEAD_BYTES, RelatedParser, parse_content_type

    data = series[0].read_bytes()
    content_type, body = encode_related([data])
    got = []
    parser = RelatedParser(parse_content_type(content_type).boundary, got.append, 1000)
    for i in range(0, len(body), chunk):
        parser.write(body[i : i + chunk])
    parser.close()
    [part] = got
    assert part.too_large and part.size == len(data)
    assert bytes(part.data) == data[:HEAD_BYTES]
