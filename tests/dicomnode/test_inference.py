"""The node's gateway client: slice results mapped back to their SOP instances, one model
version for the series, the most suspicious slices with heatmaps, and every failure named
(retryable or not). httpx.MockTransport for the error handling; the real gateway (with a fake
Triton) for the HTTP path itself."""

from __future__ import annotations

import base64
import io
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from covidct.config import ModelSpec, Provenance
from dicomnode.inference import InferenceError, infer_series
from gateway.settings import GatewaySettings
from tests.dicomnode.series_data import ct_series, fixture_series
from tests.gateway.test_app import SPEC as GATEWAY_SPEC
from tests.gateway.test_app import FakeTriton
from tests.integration.conftest import running_gateway

SPEC = ModelSpec(image_size=64, provenance=Provenance(synthetic=True))
CLASSES = SPEC.class_names
PNG = b"\x89PNG\r\n\x1a\nheatmap-of-"


def _names(request: httpx.Request) -> list[str]:
    return [n.decode() for n in re.findall(rb'filename="([^"]+)"', request.read())]


class FakeGateway:
    """Answers the three routes the client uses like the gateway does. ``probs(i)`` gives
    slice i's probabilities; ``bad`` slices are answered with an error; ``versions`` is the
    sequence of served versions /v1/models reports (the last one repeats)."""

    def __init__(
        self,
        probs: Callable[[int], list[float]],
        bad: frozenset[int] = frozenset(),
        versions: tuple[str, ...] = ("3",),
        heatmap_version: str | None = None,
    ) -> None:
        self.probs, self.bad, self.versions = probs, bad, list(versions)
        self.heatmap_version = heatmap_version
        self.calls: list[str] = []
        self.study_names: list[list[str]] = []
        self.api_keys: set[str | None] = set()
        self.folder = Path("/nonexistent")
        self.open_after_body: list[int] = []

    def _prediction(self, p: list[float], version: str, heatmap: bytes | None = None) -> dict:
        answer: dict[str, Any] = {
            "label": CLASSES[p.index(max(p))],
            "probabilities": dict(zip(CLASSES, p, strict=True)),
            "model": {"name": "covidct", "version": version},
        }
        if heatmap is not None:
            answer["heatmap"] = base64.b64encode(heatmap).decode()
        return answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.url.path)
        self.api_keys.add(request.headers.get("x-api-key"))
        if request.url.path == "/v1/predict/study":
            assert "content-length" in request.headers  # streamed, but its length known
            names = _names(request)
            # The whole body was read: every part's file is closed again already.
            self.open_after_body.append(len(_open_files_under(self.folder)))
            self.study_names.append(names)
            slices, usable = [], []
            for name in names:
                i = int(name.split(".")[0])
                if i in self.bad:
                    slices.append({"name": name, "error": {"status": 422, "detail": "no body"}})
                else:
                    p = self.probs(i)
                    usable.append(p)
                    slices.append({"name": name, "prediction": self._prediction(p, "3")})
            mean = [sum(p[c] for p in usable) / len(usable) for c in range(3)]
            summary = {
                "rule": "mean of the slice probabilities",
                "label": CLASSES[mean.index(max(mean))],
                "probabilities": dict(zip(CLASSES, mean, strict=True)),
            }
            body = {
                "summary": summary,
                "slices": slices,
                "model": {"name": "covidct", "version": "3"},
                "intended_use": SPEC.intended_use(),
                "demo": True,
            }
            return httpx.Response(200, json=body)
        if request.url.path == "/v1/models":
            version = self.versions.pop(0) if len(self.versions) > 1 else self.versions[0]
            return httpx.Response(
                200, json={"serving_version": version, "model_spec": SPEC.to_dict()}
            )
        if request.url.path == "/v1/predict":
            assert request.url.params["heatmap"] == "true"
            content = request.read()
            ds = pydicom.dcmread(io.BytesIO(content[content.index(b"\r\n\r\n") + 4 :]))
            version = self.heatmap_version or "3"
            self.heatmap_version = None  # only the first heatmap call differs
            png = PNG + ds.SOPInstanceUID.encode()
            return httpx.Response(200, json=self._prediction([1, 0, 0], version, png))
        return httpx.Response(404, json={"detail": "no such route"})


def _infer(files: list[Path], gateway: Any, top_k: int = 3, **kw: Any):
    return infer_series(
        files, "http://gateway", kw.pop("api_key", "k3y"), top_k, 5.0,
        transport=httpx.MockTransport(gateway),
    )  # fmt: skip


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """8 slices, in series order (InstanceNumber)."""
    folder = fixture_series(tmp_path_factory.mktemp("inference") / "s", slices=8)
    files = list(folder.glob("*.dcm"))
    return sorted(
        files, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber)
    )


def _open_files_under(folder: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    links = []
    for fd in fds.iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue
    return [link for link in links if link.startswith(str(folder))]


def _uids(files: list[Path]) -> list[str]:
    return [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files]


def test_slices_map_back_to_their_instances_and_the_suspicious_ones_get_heatmaps(
    series: list[Path],
) -> None:
    # COVID-19 rises along the series; slice 2 cannot be used.
    gateway = FakeGateway(lambda i: [0.5 - i * 0.05, 0.1, 0.4 + i * 0.05], bad=frozenset({2}))
    gateway.folder = series[0].parent
    verdict = _infer(series, gateway, top_k=3)
    assert gateway.open_after_body == [0]  # one open file at a time, closed once sent
    uids = _uids(series)
    assert gateway.study_names == [[f"{i:05d}.dcm" for i in range(8)]]  # keys, not UIDs
    assert gateway.api_keys == {"k3y"}
    assert [s.sop_instance_uid for s in verdict.slices] == uids[:2] + uids[3:]
    assert verdict.rejected == ((uids[2], "no body"),)
    assert all(s.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2" for s in verdict.slices)
    assert verdict.slices[0].probabilities == pytest.approx(
        dict(zip(CLASSES, [0.5, 0.1, 0.4], strict=True))
    )
    assert verdict.label == "COVID-19"
    assert verdict.probabilities["COVID-19"] == pytest.approx(
        sum(0.4 + i * 0.05 for i in (0, 1, 3, 4, 5, 6, 7)) / 7
    )
    # The highest COVID-19 probability first: the last three slices of the series.
    assert [verdict.slices[i].sop_instance_uid for i in verdict.suspicious] == uids[:4:-1]
    for i, s in enumerate(verdict.slices):
        if i in verdict.suspicious:
            assert s.heatmap_png == PNG + s.sop_instance_uid.encode()  # this slice's own
        else:
            assert s.heatmap_png is None
    assert gateway.calls.count("/v1/predict") == 3
    assert verdict.model.name == "covidct" and verdict.model.version == "3"
    assert verdict.model.spec_fingerprint == SPEC.fingerprint()
    assert verdict.model.synthetic and "Not a medical device" in verdict.model.intended_use
    assert verdict.rule == "mean of the slice probabilities"


def test_a_normal_series_shows_the_slices_least_likely_normal(series: list[Path]) -> None:
    dips = {5: 0.6, 1: 0.7}  # P(Normal) per slice; the rest 0.95
    gateway = FakeGateway(lambda i: [dips.get(i, 0.95), 0.0, 1 - dips.get(i, 0.95)])
    verdict = _infer(series, gateway, top_k=2, api_key=None)
    assert verdict.label == "Normal"
    assert list(verdict.suspicious) == [5, 1]
    assert gateway.api_keys == {None}
    assert _infer(series, FakeGateway(lambda i: [1, 0, 0]), top_k=0).suspicious == ()


def test_a_version_change_during_the_series_asks_the_whole_series_again(
    series: list[Path],
) -> None:
    moved = FakeGateway(lambda i: [0.2, 0.2, 0.6], versions=("4", "3"))
    verdict = _infer(series, moved)
    assert verdict.model.version == "3"
    assert moved.calls.count("/v1/predict/study") == 2
    heat = FakeGateway(lambda i: [0.2, 0.2, 0.6], heatmap_version="4")
    assert _infer(series, heat).model.version == "3"
    assert heat.calls.count("/v1/predict/study") == 2
    twice = FakeGateway(lambda i: [0.2, 0.2, 0.6], versions=("4", "5"))
    with pytest.raises(InferenceError, match="changed twice") as e:
        _infer(series, twice)
    assert e.value.retryable


def _raising(error: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return handler


def _status(status: int, detail: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json={"status": status, "detail": detail})


@pytest.mark.parametrize(
    ("handler", "retryable", "words"),
    [
        (_raising(httpx.ConnectError("refused")), True, "cannot reach the gateway"),
        (_raising(httpx.ReadTimeout("slow")), True, "did not answer in time"),
        (_status(503, "Model not ready"), True, "503: Model not ready"),
        (_status(502, "Triton unreachable"), True, "502"),
        (_status(504, "Inference timed out"), True, "504"),
        (_status(429, "busy"), True, "429"),
        (_status(422, "none of the 8 slices could be used"), False, "422: none of the 8"),
        (_status(401, "send the key in X-API-Key"), False, "401"),
        (_status(413, "too large"), False, "413"),
        (lambda request: httpx.Response(200, content=b"<html>"), True, "no JSON"),
        (lambda request: httpx.Response(200, json={"slices": []}), False, "unexpected answer"),
    ],
)
def test_gateway_failures_are_named_and_marked_retryable_or_not(
    series: list[Path], handler: Callable, retryable: bool, words: str
) -> None:
    with pytest.raises(InferenceError) as e:
        _infer(series, handler)
    assert words in str(e.value)
    assert e.value.retryable is retryable


def test_unreadable_files_and_an_empty_series_are_not_retryable(
    series: list[Path], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    for files in ([], [*series, junk]):
        with pytest.raises(InferenceError) as e:
            _infer(files, FakeGateway(lambda i: [1, 0, 0]))
        assert not e.value.retryable


def test_a_whole_series_through_the_real_gateway(tmp_path: Path) -> None:
    """The HTTP path end to end: the real gateway (uvicorn, its multipart parsing, its study
    route) with a fake Triton; the verdict equals the study answer for the same files."""
    files = sorted(ct_series(tmp_path).glob("*.dcm"))
    fake = FakeTriton()
    settings = GatewaySettings(api_key="s3cret")
    with running_gateway(settings, backend_factory=lambda s: fake) as url:
        started = time.perf_counter()
        verdict = infer_series(files, url, "s3cret", 3, 120.0)
        elapsed = time.perf_counter() - started
        with pytest.raises(InferenceError, match="401") as refused:
            infer_series(files[:1], url, "wrong", 3, 10.0)
        assert not refused.value.retryable
        headers = {"X-API-Key": "s3cret"}
        with httpx.Client(base_url=url, timeout=120.0, headers=headers) as client:
            parts = [("file", (f"{i:05d}.dcm", p.read_bytes(), "application/dicom"))
                     for i, p in enumerate(files)]  # fmt: skip
            study = client.post("/v1/predict/study", files=parts).json()
    print(f"{len(files)} slices inferred in {elapsed:.2f} s (fake Triton)")
    assert len(verdict.slices) + len(verdict.rejected) == len(files)
    assert verdict.label == study["summary"]["label"]
    for name, p in study["summary"]["probabilities"].items():
        assert verdict.probabilities[name] == pytest.approx(p, abs=1e-6)
    by_uid = {s.sop_instance_uid: s for s in verdict.slices}
    for result in study["slices"]:
        uid = pydicom.dcmread(
            files[int(result["name"][:5])], stop_before_pixels=True
        ).SOPInstanceUID
        if "prediction" in result:
            assert by_uid[uid].probabilities == pytest.approx(result["prediction"]["probabilities"])
    assert len(verdict.suspicious) == 3
    for i in verdict.suspicious:
        png = verdict.slices[i].heatmap_png
        assert png is not None and png.startswith(b"\x89PNG")
    assert verdict.model.spec_fingerprint == GATEWAY_SPEC.fingerprint()


def test_a_study_answer_that_does_not_fit_the_model_spec_is_refused(series: list[Path]) -> None:
    def mangled(change: Callable[[dict], None]) -> Callable[[httpx.Request], httpx.Response]:
        gateway = FakeGateway(lambda i: [0.2, 0.2, 0.6])

        def handler(request: httpx.Request) -> httpx.Response:
            response = gateway(request)
            if request.url.path != "/v1/predict/study":
                return response
            body = response.json()
            change(body)
            return httpx.Response(200, json=body)

        return handler

    def unknown_label(body: dict) -> None:
        body["summary"]["label"] = "Bogus"

    def missing_class(body: dict) -> None:
        del body["slices"][0]["prediction"]["probabilities"]["COVID-19"]

    for change in (unknown_label, missing_class):
        with pytest.raises(InferenceError, match="unexpected answer") as e:
            _infer(series, mangled(change))
        assert not e.value.retryable
