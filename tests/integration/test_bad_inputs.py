"""The bad-input corpus (tests/integration/bad_inputs.py) against the real stack: every case
gets its status, none a 5xx, no patient name reaches the log, and afterwards the server still
answers a real slice exactly as before."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from tests.integration.bad_inputs import (
    CORPUS,
    CORPUS_SETTINGS,
    PATIENT_NAME,
    Inputs,
    Raw,
    raw_send,
)
from tests.integration.conftest import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]

LIBRARY_WORDS = ("PIL", "pydicom", "zlib", "Error", "Traceback", "errno", "identify image")


def test_the_corpus_has_every_kind_the_issue_names() -> None:
    assert len(CORPUS) >= 40
    assert len({c.name for c in CORPUS}) == len(CORPUS)
    assert sum(c.status >= 400 for c in CORPUS) >= 40


def test_every_bad_input_gets_its_status_and_the_server_keeps_serving(
    server, fixtures: Path, caplog: pytest.LogCaptureFixture
) -> None:
    png = (fixtures / "covidxct-real" / "images" / "COVIDCTMD-P001-IM0038.png").read_bytes()
    inputs = Inputs(png, fixtures)
    settings = GatewaySettings(triton_url=f"127.0.0.1:{server.grpc_port}", **CORPUS_SETTINGS)
    caplog.set_level(logging.DEBUG)
    with running_gateway(settings) as url:
        host, port = url.removeprefix("http://").split(":")
        status, _, body = raw_send(host, int(port), Raw(body=png))
        assert status == 200, body
        before = json.loads(body)

        wrong = []
        for case in CORPUS:
            status, headers, body = raw_send(host, int(port), case.build(inputs))
            if status != case.status:
                wrong.append(f"{case.name}: {status} (want {case.status}) {body[:200]!r}")
                continue
            if case.ours and status >= 400:
                problem = json.loads(body)
                assert headers["content-type"] == "application/problem+json", case.name
                assert problem["status"] == status and problem["request_id"], case.name
                assert not any(w in problem["detail"] for w in LIBRARY_WORDS), problem["detail"]
            ready, _, _ = raw_send(
                host, int(port), Raw(method="GET", path="/readyz", content_length=None)
            )
            assert ready == 200, f"not ready after {case.name}"
        assert not wrong, "\n".join(wrong)

        status, _, body = raw_send(host, int(port), Raw(body=png))
        assert status == 200, body
        after = json.loads(body)
    assert after["probabilities"] == before["probabilities"]
    assert after["label"] == before["label"] and after["model"] == before["model"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert PATIENT_NAME.split("^")[0] not in logged
    assert " 500 " not in logged and "Traceback" not in logged
