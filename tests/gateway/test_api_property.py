"""Property test over the OpenAPI spec against the real gateway: no 5xx, every response matches the spec."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from gateway.openapi import openapi_spec
from tests.gateway.harness import GatewayServer

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

schema = schemathesis.openapi.from_dict(openapi_spec())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

pytestmark = pytest.mark.timeout(120)


@schema.exclude(path="/metrics").parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case, gateway: GatewayServer) -> None:  # type: ignore[no-untyped-def]
    response = case.call(base_url=gateway.url, timeout=20)
    case.validate_response(response, checks=CHECKS)
