"""A study's slices: bounded concurrency counted in flight, one version, the first fatal error
cancels the rest and nothing of the study outlives its answer."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from covidct.config import ModelSpec
from gateway.errors import InferenceError
from gateway.triton import Inference
from tests.gateway.test_app import FakeTriton, client


class CountingTriton(FakeTriton):
    """Records how many inferences run at once; the ``fail_on``-th call fails."""

    def __init__(self, delay: float, fail_on: int | None = None) -> None:
        super().__init__(delay=delay)
        self.running = self.peak = self.finished = 0
        self.fail_on = fail_on
        self.gateway_in_flight: list[int] = []
        self.state = None

    async def infer(self, images: np.ndarray, spec: ModelSpec, version: str) -> Inference:
        call = len(self.calls)
        self.calls.append(images)
        self.running += 1
        self.peak = max(self.peak, self.running)
        if self.state is not None:
            self.gateway_in_flight.append(self.state.in_flight)
        try:
            if self.fail_on is not None and call == self.fail_on:
                raise InferenceError("Triton could not run the model")
            await asyncio.sleep(self.delay)
            self.finished += 1
            m = float(images.mean()) / 255
            probs = np.array([[1 - m, m * 0.3, m * 0.7]], np.float32)
            return Inference(probs, np.zeros((1, 2, 2, 3), np.float32), version)
        finally:
            self.running -= 1


def _files(png: bytes, n: int) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (f"IM{i:04d}.png", png)) for i in range(n)]


def test_slices_run_at_most_study_concurrency_at_once_and_count_in_flight(png: bytes) -> None:
    fake = CountingTriton(delay=0.05)
    with client(fake, study_concurrency=3, max_in_flight=10) as c:
        fake.state = c.app.state.gw
        r = c.post("/v1/predict/study", files=_files(png, 12))
        assert r.status_code == 200, r.text
        assert r.json()["summary"]["slices_used"] == 12
        assert fake.peak == 3
        assert max(fake.gateway_in_flight) == 3  # the study's width, counted
        assert c.app.state.gw.in_flight == 0


def test_a_study_wider_than_the_free_slots_is_answered_503_at_once(png: bytes) -> None:
    with client(CountingTriton(delay=0.0), study_concurrency=4, max_in_flight=4) as c:
        gw = c.app.state.gw
        gw.in_flight = 2  # two predictions already running
        r = c.post("/v1/predict/study", files=_files(png, 8))
        assert r.status_code == 503 and r.headers["retry-after"]
        gw.in_flight = 0


def test_a_fatal_error_cancels_the_other_slices_and_releases_the_version(png: bytes) -> None:
    fake = CountingTriton(delay=0.5, fail_on=2)
    with client(fake, study_concurrency=4, max_in_flight=8) as c:
        r = c.post("/v1/predict/study", files=_files(png, 16))
        assert r.status_code == 502, r.text
        assert "Triton" in r.json()["detail"]
        gw = c.app.state.gw
        assert gw.in_flight == 0 and not any(gw.serving.in_flight.values())
        assert fake.running == 0  # cancelled, not left running
        assert fake.finished == 0 and len(fake.calls) <= 4


@pytest.fixture(scope="module")
def png(fixtures) -> bytes:
    return (fixtures / "covidxct-real" / "images" / "COVIDCTMD-P001-IM0038.png").read_bytes()
