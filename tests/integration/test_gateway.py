"""The gateway against the real tritonserver, with real PNG and DICOM slices."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.corpus import real_pngs
from covidct.config import ModelSpec
from covidct.preprocessing import preprocess_bytes
from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.integration.test_triton import _infer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]


def test_gateway_equals_triton_and_the_saved_model(server, ci_run: Path, real_data: Path) -> None:
    import tensorflow as tf

    spec = ModelSpec.load(ci_run / "model_spec.json")
    rows = [
        r
        for r in csv.DictReader((real_data / "dicom" / "MANIFEST.csv").open())
        if r["matching_covidxct_png"]
    ][:3]
    files = [real_data / "dicom" / r["file"] for r in rows] + [
        real_data / "covidxct-real" / "images" / r["matching_covidxct_png"] for r in rows
    ]
    settings = GatewaySettings(triton_url=f"127.0.0.1:{server.grpc_port}")
    sig = tf.saved_model.load(str(ci_run / "saved_model")).signatures["serving_default"]
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        for path in files:
            data = path.read_bytes()
            r = client.post("/v1/predict?heatmap=true", files={"file": (path.name, data)})
            assert r.status_code == 200, r.text
            body = r.json()
            got = np.array([body["probabilities"][n] for n in spec.class_names])
            tensor = preprocess_bytes(data, spec.image_size).image[None]
            direct = _infer(server.grpc_port, tensor)[0]
            saved = sig(image=tf.constant(tensor))["probabilities"].numpy()[0]
            assert np.abs(got - direct).max() <= 1e-6, path.name
            assert np.abs(got - saved).max() <= 1e-4, path.name
            assert body["preprocessing"]["source"] == ("dicom" if path.suffix == ".dcm" else "png")
            assert body["demo"] is True and "Not a medical device" in body["intended_use"]
            assert body["heatmap"]
        models = client.get("/v1/models").json()
        assert models["model_spec"] == spec.to_dict()
        bad = client.post("/v1/predict", content=b"%PDF-1.4 not a slice")
        assert bad.status_code == 415
        assert client.post("/v1/predict", content=files[0].read_bytes()).status_code == 200


def test_gateway_reports_not_ready_without_triton() -> None:
    from serving.server import free_port

    settings = GatewaySettings(triton_url=f"127.0.0.1:{free_port()}", request_timeout_s=2)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        r = client.post("/v1/predict", content=b"\x89PNG\r\n\x1a\n")
        assert r.status_code == 503, r.text


def test_study_slices_reach_triton_together(server, real_data: Path) -> None:
    pngs = (real_pngs(real_data) * 4)[:16]  # the fixtures hold five: repeated

    def counts() -> tuple[int, int]:
        stats = server.statistics("covidct")["model_stats"]
        return (
            sum(int(m["inference_count"]) for m in stats),
            sum(int(m["execution_count"]) for m in stats),
        )

    settings = GatewaySettings(triton_url=f"127.0.0.1:{server.grpc_port}")
    grouped = []
    with TestClient(create_app(settings)) as client:
        # Whether the batcher groups depends on arrival times within its 2 ms window, which a
        # loaded machine can spread; a gateway that sent slices one after another would never
        # be grouped, so up to three studies are sent and one grouped study is required.
        for _ in range(3):
            before = counts()
            r = client.post(
                "/v1/predict/study", files=[("files", (p.name, p.read_bytes())) for p in pngs]
            )
            assert r.status_code == 200, r.text
            assert r.json()["summary"]["slices_used"] == 16
            # Triton can count an execution after its responses have gone out: give the last
            # batch a moment to be counted (a wrong count still fails below).
            deadline = time.monotonic() + 10
            while (after := counts())[0] - before[0] < 16 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert after[0] - before[0] == 16
            grouped.append(after[1] - before[1])
            if grouped[-1] < 16:
                break
    assert min(grouped) < 16, f"executions per 16-slice study: {grouped}"
