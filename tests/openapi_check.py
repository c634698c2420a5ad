"""pytest plugin: every API response the test suite receives is checked against the OpenAPI
document that the answering dsmr-ts serves itself (status documented for that route and method,
JSON body valid).

It wraps falcon.testing.TestClient.simulate_request and requests.Session.request for the whole
session; the requests still go to the real app or the real gunicorn. The document is fetched once
per app (or base URL) from its own /api/v2/schema; answers of anything that is not dsmr-ts
(influxd, nginx's own pages) are not checked."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import falcon.testing
import jsonschema
import pytest
import requests

CHECKED = {"responses": 0}
# (scheme://host:port, the Server header): a port reused by another server is looked at afresh.
_URL_DOCUMENTS: dict[tuple[str, str], dict | None] = {}


def check_response(document: dict | None, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    if document is None:
        return
    paths = document["paths"]
    if path not in paths:
        return  # not an API route (e.g. a 404 for a made-up URL)
    operation = paths[path].get(method.lower())
    if operation is None:
        assert status == 405, f"{method} {path} is not documented but answered {status}"
        if path.startswith("/api/v2/"):
            _validate(document, json.loads(body), {"$ref": "#/components/schemas/Detail"}, f"{method} {path} 405")
        return
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which the schema does not document"
    CHECKED["responses"] += 1
    content = responses[str(status)].get("content", {})
    if "json" in content_type and "application/json" in content and body:
        _validate(document, json.loads(body), content["application/json"]["schema"], f"{method} {path} {status}")


def _validate(document: dict, instance: Any, schema: dict, where: str) -> None:
    # The $refs point into the document's components: validate with the document as the root.
    root = {"components": document["components"], **schema}
    validator = jsonschema.Draft202012Validator(root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{where}: response does not match the schema: {errors[0].message} at {list(errors[0].path)}"


def _is_dsmr_ts(document: Any) -> bool:
    return isinstance(document, dict) and document.get("info", {}).get("title") == "dsmr-ts API"


@pytest.fixture(scope="session", autouse=True)
def responses_match_the_schema(tmp_path_factory):
    original_simulate = falcon.testing.TestClient.simulate_request
    original_request = requests.Session.request
    # Every response body (its first 64 KiB) goes to responses.log, which the session's secret scan
    # reads: no error body or /metrics may hold a key or token.
    recorded = open(tmp_path_factory.getbasetemp() / "responses.log", "ab", buffering=0)  # the scan may read it first

    def record(method: str, path: str, status: int, body: bytes) -> None:
        recorded.write(f"{method} {path} {status}\n".encode() + body[:65536] + b"\n")

    def app_document(client: falcon.testing.TestClient) -> dict | None:
        if not hasattr(client, "openapi_document"):  # fetched once per test client (and so per app)
            result = original_simulate(client, "GET", "/api/v2/schema", params={"format": "json"})
            client.openapi_document = result.json if result.status_code == 200 and _is_dsmr_ts(result.json) else None
        return client.openapi_document

    def url_document(session: requests.Session, url: str, server: str) -> dict | None:
        parts = urllib.parse.urlsplit(url)
        key = (f"{parts.scheme}://{parts.netloc}", server)
        if key not in _URL_DOCUMENTS:
            try:
                response = original_request(
                    session, "GET", key[0] + "/api/v2/schema", params={"format": "json"}, timeout=10, verify=False
                )
                document = response.json() if response.status_code == 200 else None
            except (requests.RequestException, ValueError):
                return None  # not answering now: try again with the next response
            _URL_DOCUMENTS[key] = document if _is_dsmr_ts(document) else None
        return _URL_DOCUMENTS[key]

    def simulate_request(self, method="GET", path="/", *args, **kwargs):
        result = original_simulate(self, method, path, *args, **kwargs)
        record(method, path, result.status_code, result.content)
        check_response(
            app_document(self), method, path, result.status_code, result.headers.get("content-type", ""), result.content
        )
        return result

    def request(self, method, url, *args, **kwargs):
        response = original_request(self, method, url, *args, **kwargs)
        own_page = response.headers.get("content-type", "").startswith("text/html")  # nginx's 301/413/429 pages
        if not kwargs.get("stream") and not own_page:  # a streamed body is read later by the test itself
            path = urllib.parse.urlsplit(url).path
            record(method, path, response.status_code, response.content)
            document = url_document(self, url, response.headers.get("Server", ""))
            check_response(
                document, method, path, response.status_code, response.headers.get("content-type", ""), response.content
            )
        return response

    falcon.testing.TestClient.simulate_request = simulate_request
    requests.Session.request = request
    yield CHECKED
    falcon.testing.TestClient.simulate_request = original_simulate
    requests.Session.request = original_request
    recorded.close()
