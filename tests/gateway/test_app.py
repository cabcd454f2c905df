"""Gateway behaviour with a fake Triton: statuses, limits, privacy, metrics, API key."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import logging
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from covidct.config import ModelSpec, Provenance
from covidct.preprocessing import Preprocessed
from covidct.series import SeriesRule
from gateway.app import create_app
from gateway.errors import InferenceTimeout, NotReady
from gateway.settings import GatewaySettings
from gateway.triton import Inference
from tests.builders import huge_png_dims
from tests.rawhttp import refused_mid_body

SPEC = ModelSpec(image_size=64, provenance=Provenance(synthetic=True))


class FakeTriton:
    """Answers like Triton: probabilities from the input's mean, a 2x2 CAM."""

    def __init__(
        self,
        delay: float = 0.0,
        fail: Exception | None = None,
        ready: bool = True,
        spec: ModelSpec = SPEC,
    ) -> None:
        self.delay, self.fail, self._ready, self.spec = delay, fail, ready, spec
        self.calls: list[np.ndarray] = []

    async def model_spec(self, version: str) -> tuple[ModelSpec, str]:
        return self.spec, version

    async def ready(self, version: str) -> bool:
        return self._ready

    async def infer(self, images: np.ndarray, spec: ModelSpec, version: str) -> Inference:
        self.calls.append(images)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        m = float(images.mean()) / 255
        probs = np.array([[1 - m, m * 0.3, m * 0.7]], np.float32)
        cam = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)
        return Inference(probs, cam, version)

    async def versions(self) -> list[dict[str, str]]:
        return [{"name": "covidct", "version": "3", "state": "READY"}]

    async def close(self) -> None:
        pass


def client(fake: FakeTriton | None = None, **settings) -> TestClient:
    fake = fake or FakeTriton()
    app = create_app(GatewaySettings(**settings), backend_factory=lambda s: fake)
    return TestClient(app)


@pytest.fixture(scope="module")
def png(fixtures: Path) -> bytes:
    return (fixtures / "covidxct-real" / "images" / "COVIDCTMD-P001-IM0038.png").read_bytes()


def test_predict_multipart_png(png: bytes) -> None:
    with client() as c:
        r = c.post("/v1/predict", files={"file": ("slice.png", png, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["probabilities"]) == {"Normal", "Pneumonia", "COVID-19"}
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["model"] == {"name": "covidct", "version": "3"}
    assert body["preprocessing"]["source"] == "png" and body["preprocessing"]["size"] == 64
    assert "Not a medical device" in body["intended_use"]
    assert "synthetic" in body["intended_use"] and body["demo"] is True
    assert r.headers["x-request-id"] == body["request_id"]
    assert "heatmap" not in body
    assert set(body["timings"]) == {"preprocess_ms", "inference_ms", "total_ms"}


@pytest.mark.parametrize(
    ("inline_pixels", "shedding", "png_on_loop"),
    [(512 * 512, False, True), (0, False, False), (512 * 512, True, False)],
)
def test_small_grey_pngs_are_preprocessed_on_the_event_loop(
    png: bytes,
    fixtures: Path,
    inline_pixels: int,
    shedding: bool,
    png_on_loop: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 512² CT PNG (about 2 ms with the compiled kernels) skips the worker-thread hand-off;
    DICOM always goes to a worker thread, and so does everything with the setting at 0 or while
    the gateway is answering 503s for saturation (the loop keeps them fast)."""
    import gateway.routes.predict as predict_route

    on_loop: list[bool] = []
    original = predict_route._preprocess

    def spy(data: bytes, size: int) -> Preprocessed:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:  # a worker thread runs no event loop
            on_loop.append(False)
        return original(data, size)

    monkeypatch.setattr(predict_route, "_preprocess", spy)
    dcm = (fixtures / "dicom" / "normal002__IM0042.dcm").read_bytes()
    with client(preprocess_inline_pixels=inline_pixels) as c:
        if shedding:  # as if a 503 for saturation had just been answered
            c.app.state.gw.shed_at = time.monotonic() + 60  # type: ignore[attr-defined]
        for body in (png, dcm):
            r = c.post("/v1/predict", files={"file": ("slice", body, "application/octet-stream")})
            assert r.status_code == 200, r.text
    assert on_loop == [png_on_loop, False]


def test_raw_dicom_body_and_heatmap(fixtures: Path) -> None:
    dcm = (fixtures / "dicom" / "normal002__IM0042.dcm").read_bytes()
    with client() as c:
        r = c.post(
            "/predict?heatmap=true", content=dcm, headers={"content-type": "application/dicom"}
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["preprocessing"]["source"] == "dicom"
    overlay = Image.open(io.BytesIO(base64.b64decode(body["heatmap"])))
    assert overlay.size == (512, 512) and overlay.mode == "RGB"


def _dicom(edit) -> bytes:
    from tests.conftest import FIXTURES

    ds = pydicom.dcmread(FIXTURES / "dicom" / "CT_small.dcm")
    edit(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "x")
    return buf.getvalue()


def _png(shape: tuple[int, ...], mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros(shape, np.uint8), mode=mode).save(buf, format="PNG")
    return buf.getvalue()


BAD_INPUTS = [
    ("empty", lambda png, fx: b"", 400),
    ("truncated png", lambda png, fx: png[:3000], 400),
    ("png magic then garbage", lambda png, fx: png[:8] + b"\x00" * 500, 400),
    ("truncated jpeg", lambda png, fx: b"\xff\xd8\xff\xe0" + b"\x00" * 300, 400),
    ("plain text", lambda png, fx: b"hello, this is not an image", 415),
    ("pdf", lambda png, fx: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", 415),
    ("zip", lambda png, fx: _zip(), 415),
    ("gif", lambda png, fx: b"GIF89a" + b"\x00" * 100, 415),
    ("json", lambda png, fx: b'{"image": "slice.png"}', 415),
    ("huge dimensions", lambda png, fx: huge_png_dims(60_000), 413),
    ("too small png", lambda png, fx: _png((16, 16)), 422),
    ("non-CT dicom (MR)", lambda png, fx: _dicom(lambda d: setattr(d, "Modality", "MR")), 422),
    ("colour dicom", lambda png, fx: (fx / "dicom" / "c_dicom.dcm").read_bytes(), 422),
    ("angiography multi-frame", lambda png, fx: (fx / "dicom" / "0002.dcm").read_bytes(), 422),
    ("dicom without pixels", lambda png, fx: _dicom(lambda d: delattr(d, "PixelData")), 422),
    (
        "dicom cut before its pixel data",
        lambda png, fx: (fx / "dicom" / "normal002__IM0042.dcm").read_bytes()[:20000],
        422,
    ),
    (
        "dicom cut inside its pixel data",
        lambda png, fx: (fx / "dicom" / "cap001__98C1066-ASAD_137_uncompressed.dcm").read_bytes()[
            :-5000
        ],
        400,
    ),
]


def test_bad_inputs_get_documented_statuses_and_the_server_keeps_serving(
    png: bytes, fixtures: Path
) -> None:
    with client() as c:
        for name, make, status in BAD_INPUTS:
            r = c.post(
                "/v1/predict",
                content=make(png, fixtures),
                headers={"content-type": "application/octet-stream"},
            )
            assert r.status_code == status, (name, r.status_code, r.text)
            body = r.json()
            assert r.headers["content-type"] == "application/problem+json", name
            assert body["status"] == status and body["detail"] and body["request_id"], name
        # multipart mistakes
        r = c.post("/v1/predict", files={"image": ("x.png", png, "image/png")})
        assert r.status_code == 400 and "field named 'file'" in r.json()["detail"]
        r = c.post(
            "/v1/predict",
            content=b"--x\r\nbroken",
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert r.status_code == 400
        assert c.post("/v1/predict", files={"file": ("s.png", png, "image/png")}).status_code == 200


def test_upload_limit(png: bytes) -> None:
    with client(max_upload_bytes=1000) as c:
        r = c.post("/v1/predict", content=png)
    assert r.status_code == 413


def test_saturation_answers_503_with_retry_after_at_once(png: bytes) -> None:
    fake = FakeTriton(delay=0.5)
    app = create_app(
        GatewaySettings(max_in_flight=1, retry_after_s=3), backend_factory=lambda s: fake
    )

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await asyncio.gather(*[c.post("/v1/predict", content=png) for _ in range(3)])

    responses = asyncio.run(run())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 503, 503]
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "3"


@pytest.mark.parametrize(
    ("error", "status"), [(InferenceTimeout("slow"), 504), (NotReady("down"), 503)]
)
def test_triton_failures_map_to_statuses(png: bytes, error: Exception, status: int) -> None:
    with client(FakeTriton(fail=error)) as c:
        r = c.post("/v1/predict", content=png)
    assert r.status_code == status and r.json()["title"]


def test_health_ready_models_and_metrics(png: bytes) -> None:
    with client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        models = c.get("/v1/models").json()
        assert models["model_spec"]["image_size"] == 64 and models["versions"][0]["version"] == "3"
        c.post("/v1/predict", content=png)
        c.post("/v1/predict", content=b"")
        text = c.get("/metrics").text
    assert 'covidct_requests_total{route="/v1/predict",status="200"} 1.0' in text
    assert 'covidct_requests_total{route="/v1/predict",status="400"} 1.0' in text
    assert "covidct_inference_seconds_count 1.0" in text
    with client(FakeTriton(ready=False)) as c:
        assert c.get("/readyz").status_code == 503


def test_api_key_required_everywhere_but_health(png: bytes) -> None:
    with client(api_key="s3cret") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200  # the page: static, it sends the key it is given
        assert c.post("/v1/predict", content=png).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"x-api-key": "wrong"}).status_code == 401
        r = c.post("/v1/predict", content=png, headers={"x-api-key": "s3cret"})
        assert r.status_code == 200


def test_a_client_refused_for_its_key_while_sending_gets_the_whole_answer() -> None:
    """The envelope's 401 comes before the body is read; a client still sending it gets the
    answer whole and a clean close (closed with bytes unread, the socket would be reset and
    the answer could be lost)."""
    from dicomnode.web import WebServer

    app = create_app(GatewaySettings(api_key="s3cret"), backend_factory=lambda s: FakeTriton())
    with TestClient(app):  # the lifespan: the gateway's state, as uvicorn's would make it
        server = WebServer("127.0.0.1", 0, app)
        server.start()
        try:
            head, body = refused_mid_body(
                server.port, "/v1/predict", {"Content-Type": "image/png"}, 50_000_000, 2_000_000
            )
        finally:
            server.stop()
    assert head.startswith(b"HTTP/1.1 401"), head
    assert b"X-API-Key" in body and body.endswith(b"}"), body


def test_no_image_bytes_or_patient_tags_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    def tag(d: pydicom.Dataset) -> None:
        d.PatientName = "Doe^Jane"
        d.PatientID = "PID-424242"

    dcm = _dicom(tag)
    caplog.set_level(logging.DEBUG)
    with client() as c:
        assert c.post("/v1/predict", content=dcm).status_code == 200
        assert c.post("/v1/predict", content=dcm[:500]).status_code == 422  # header only
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/v1/predict 200" in text
    for secret in ("Doe^Jane", "PID-424242", "DICM"):
        assert secret not in text


def test_cors_off_by_default(png: bytes) -> None:
    with client() as c:
        r = c.options(
            "/v1/predict",
            headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
        )
    assert "access-control-allow-origin" not in r.headers


def test_gateway_never_imports_tensorflow() -> None:
    code = (
        "import sys, gateway.app, gateway.routes, gateway.triton; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_study_from_files_and_zip(png: bytes, fixtures: Path) -> None:
    dcm = (fixtures / "dicom" / "normal002__IM0042.dcm").read_bytes()
    fake = FakeTriton()
    with client(fake) as c:
        r = c.post(
            "/v1/predict/study",
            files=[
                ("files", ("a.png", png)),
                ("files", ("b.dcm", dcm)),
                ("files", ("c.txt", b"not a slice")),
            ],
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert [s["name"] for s in body["slices"]] == ["a.png", "b.dcm", "c.txt"]
        assert body["slices"][2]["error"]["status"] == 415
        summary = body["summary"]
        assert summary["slices_used"] == 2 and summary["slices_rejected"] == 1
        probs = [s["prediction"]["probabilities"] for s in body["slices"][:2]]
        for name in ("Normal", "Pneumonia", "COVID-19"):
            assert summary["probabilities"][name] == pytest.approx(
                (probs[0][name] + probs[1][name]) / 2
            )
        assert summary["rule_name"] == "mean" and summary["rule"].startswith("mean: per class")
        assert summary["scores"] == pytest.approx(summary["probabilities"])
        assert body["demo"] is True and "Not a medical device" in body["intended_use"]

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for i in range(4):
                z.writestr(f"IM{i:04d}.dcm", dcm)
        r = c.post(
            "/v1/predict/study", content=buf.getvalue(), headers={"content-type": "application/zip"}
        )
        assert r.status_code == 200 and r.json()["summary"]["slices_used"] == 4


def test_study_verdict_follows_the_models_series_rule(png: bytes) -> None:
    """The fake answers [1 - m, 0.3 m, 0.7 m] per slice (m: the input's mean, about 0.6 for
    this slice, so the mean says COVID-19); a count rule that wants a slice at 0.99 finds
    none and says Normal, and the answer names the rule."""
    rule = SeriesRule("count", 1, 0.99)
    with client(FakeTriton(spec=dataclasses.replace(SPEC, series_rule=rule))) as c:
        r = c.post("/v1/predict/study", files=[("files", (f"{i}.png", png)) for i in range(2)])
    assert r.status_code == 200, r.text
    summary = r.json()["summary"]
    assert max(summary["probabilities"], key=summary["probabilities"].get) == "COVID-19"
    assert summary["label"] == "Normal" and summary["class_index"] == 0
    assert summary["rule_name"] == "count-1@0.99" and "at least 1 such slices" in summary["rule"]
    assert summary["scores"] == {"Normal": 0.0, "Pneumonia": 0.0, "COVID-19": 0.0}


def test_study_limits(png: bytes) -> None:
    with client(max_study_slices=2) as c:
        r = c.post("/v1/predict/study", files=[("files", (f"{i}.png", png)) for i in range(3)])
        assert r.status_code == 413
        r = c.post("/v1/predict/study", files=[("files", ("x.txt", b"nope"))])
        assert r.status_code == 422
        r = c.post("/v1/predict/study", content=b"PK\x03\x04broken zip")
        assert r.status_code == 400


def test_page_is_served_and_calls_the_api() -> None:
    with client(api_key=None) as c:
        r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "Not a medical device" in r.text and 'fetch("v1/predict?heatmap=true"' in r.text
