"""Property-based tests of the live service against its own OpenAPI document (schemathesis):
valid and invalid inputs for every operation, with all of schemathesis's response checks
(no 5xx, documented status codes, bodies that match the documented schemas, ...).

Uses schemathesis's Python API with Hypothesis directly: its lazy pytest fixture loader does not
work with the pytest version installed here."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.serving.conftest import ServerProcess, auth

pytestmark = pytest.mark.integration

OPERATIONS = [
    ("POST", "/v1/classify"),
    ("GET", "/v1/review/next"),
    ("GET", "/v1/review/stats"),
    ("POST", "/v1/review/{review_id}"),
    ("POST", "/v1/admin/reload"),
]
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def api_schema(sqlite_server: ServerProcess):
    return schemathesis.openapi.from_url(f"{sqlite_server.url}/v1/openapi.json")


def test_the_document_lists_exactly_these_operations(sqlite_server: ServerProcess) -> None:
    doc = httpx.get(f"{sqlite_server.url}/v1/openapi.json").json()
    found = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_conforms_and_never_5xx(api_schema, sqlite_server: ServerProcess, method: str, path: str,
                                    mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=sqlite_server.url, headers=auth("admin"), timeout=60)
        assert response.status_code < 500, response.text

    run()
