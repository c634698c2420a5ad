"""GET /api/v2/schema: public, YAML or JSON, a valid OpenAPI 3.1 document describing every route."""

from __future__ import annotations

import dataclasses
import json

import yaml
from falcon import testing
from openapi_spec_validator import validate

from dsmr_ts.app import create_app
from dsmr_ts.resources.openapi import openapi_document


def client_with(config, **api):
    return testing.TestClient(create_app(dataclasses.replace(config, api=dataclasses.replace(config.api, **api))))


def test_schema_is_public_even_with_the_api_disabled(config):
    response = client_with(config, enabled=False).simulate_get("/api/v2/schema")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/yaml"
    assert yaml.safe_load(response.text) == openapi_document()


def test_schema_as_json_by_parameter_or_accept(config):
    client = client_with(config)
    by_param = client.simulate_get("/api/v2/schema", query_string="format=json")
    by_accept = client.simulate_get("/api/v2/schema", headers={"Accept": "application/json"})
    for response in (by_param, by_accept):
        assert response.headers["content-type"] == "application/json"
        assert json.loads(response.text) == openapi_document()


def test_document_is_valid_openapi_and_lists_every_route(config):
    document = openapi_document()
    validate(document)  # raises on anything that is not valid OpenAPI 3.1
    app = create_app(config)
    served = {node.uri_template for root in app._router._roots for node in _walk(root) if node.resource}
    assert served == set(document["paths"])


def _walk(node):
    yield node
    for child in node.children:
        yield from _walk(child)


def test_the_suite_checks_responses_against_the_schema(responses_match_the_schema):
    # Every response received in this session went through the check (tests/openapi_check.py).
    assert responses_match_the_schema["responses"] > 0
