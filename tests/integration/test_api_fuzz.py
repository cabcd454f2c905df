"""The gateway's own OpenAPI document drives schemathesis against the real stack (tritonserver
and gateway): every operation gets generated requests (bodies of the declared media types,
query values, headers), and every answer must be documented, of the documented media type and
schema, and never a 5xx (Triton is up and nothing saturates here).

Bounded in `make test` (the "ci" hypothesis profile: derandomized, 120 examples per
operation); `make fuzz` runs it with fresh examples, many more."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.settings import GatewaySettings
from tests.integration.conftest import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]

#: No 5xx (Triton is up and nothing saturates here), every status documented, the documented
#: media type and schema, and invalid requests (a bad query value) answered 4xx. Not
#: "positive data acceptance": arbitrary bytes are a valid binary body but not a CT slice.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def api(server):
    gateway = GatewaySettings(triton_url=f"127.0.0.1:{server.grpc_port}")
    with running_gateway(gateway) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
@settings(suppress_health_check=list(HealthCheck), deadline=None)
def test_every_answer_matches_the_openapi_document(case) -> None:
    case.call_and_validate(checks=CHECKS, timeout=30)
