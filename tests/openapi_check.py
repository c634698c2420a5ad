"""pytest plugin: every API response the test suite receives is checked against the OpenAPI
document dsmr-ts serves (status documented for that route and method, JSON body valid).

It wraps falcon.testing.TestClient.simulate_request and requests.Session.request for the whole
session; the requests still go to the real app or the real gunicorn."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import falcon.testing
import jsonschema
import pytest
import requests

from dsmr_ts.resources.openapi import openapi_document

DOCUMENT = openapi_document()
CHECKED = {"responses": 0}


def check_response(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    paths = DOCUMENT["paths"]
    if path not in paths:
        return  # not an API route (e.g. a 404 for a made-up URL)
    operation = paths[path].get(method.lower())
    if operation is None:
        assert status == 405, f"{method} {path} is not documented but answered {status}"
        if path.startswith("/api/v2/"):
            _validate(json.loads(body), {"$ref": "#/components/schemas/Detail"}, f"{method} {path} 405")
        return
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which the schema does not document"
    CHECKED["responses"] += 1
    content = responses[str(status)].get("content", {})
    if "json" in content_type and "application/json" in content and body:
        _validate(json.loads(body), content["application/json"]["schema"], f"{method} {path} {status}")


def _validate(instance: Any, schema: dict, where: str) -> None:
    # The $refs point into the document's components: validate with the document as the root.
    root = {"components": DOCUMENT["components"], **schema}
    validator = jsonschema.Draft202012Validator(root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{where}: response does not match the schema: {errors[0].message} at {list(errors[0].path)}"


@pytest.fixture(scope="session", autouse=True)
def responses_match_the_schema():
    original_simulate = falcon.testing.TestClient.simulate_request
    original_request = requests.Session.request

    def simulate_request(self, method="GET", path="/", *args, **kwargs):
        result = original_simulate(self, method, path, *args, **kwargs)
        check_response(method, path, result.status_code, result.headers.get("content-type", ""), result.content)
        return result

    def request(self, method, url, *args, **kwargs):
        response = original_request(self, method, url, *args, **kwargs)
        if not kwargs.get("stream"):  # a streamed body is read later by the test itself
            path = urllib.parse.urlsplit(url).path
            check_response(method, path, response.status_code, response.headers.get("content-type", ""),
                           response.content)
        return response

    falcon.testing.TestClient.simulate_request = simulate_request
    requests.Session.request = request
    yield CHECKED
    falcon.testing.TestClient.simulate_request = original_simulate
    requests.Session.request = original_request
