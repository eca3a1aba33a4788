"""Property tests generated from the API's own OpenAPI document (schemathesis): whatever the
generated parameters, authenticated or not, the API never answers 500 and every answer matches
its documented status codes and schemas. Bounded: a few dozen cases per operation."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.audit.conftest import TOKEN, Seeded
from workers.audit.api import AuditApiConfig, create_app
from workers.ledger.reader import LedgerReader

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import schemathesis
    from schemathesis.checks import (
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )


# The schema is read at collection time, before any database exists; the module fixture below
# hands the app a reader over this module's database (no lifespan runs under schemathesis).
app = create_app(AuditApiConfig("postgresql://unused", TOKEN))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(autouse=True)
def _api_over_the_seeded_ledger(reader: LedgerReader, seeded: Seeded) -> None:
    app.state.ledger = reader


CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_500(case: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_without_a_token_every_resource_is_refused(case: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        response = case.call(headers={"Authorization": "Bearer wrong"})
    # Hypothesis also draws strings from the project's own source, the test token among them: a URL
    # that carries it is refused before any token is looked at, and that refusal is right too.
    if _carries_the_token(case):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "credentials_in_url"
    elif case.path.startswith("/v1/"):
        assert response.status_code in (401, 405, 422), response.text
    else:
        assert response.status_code in (200, 405, 422)


def _carries_the_token(case: Any) -> bool:
    values = [*(case.path_parameters or {}).values(), *(case.query or {}).values()]
    return any(TOKEN in str(value) for value in values)


def test_a_url_carrying_the_token_is_refused_as_the_schema_documents() -> None:
    """Hypothesis draws the token from the source at times; the 400 it then gets is documented."""
    case = schema["/v1/events"]["GET"].Case(query={"correlation_id": TOKEN})
    assert _carries_the_token(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        response = case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)
        refused = case.call(headers={"Authorization": "Bearer wrong"})
    assert response.status_code == refused.status_code == 400
    assert response.json()["error"] == "credentials_in_url"
