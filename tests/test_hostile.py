"""Hostile input: each gets a clear 4xx, nothing is stored half-way, and the service keeps serving."""

from __future__ import annotations

import datetime as dt
import json
import socket
import urllib.parse

import pytest
import requests
from falcon import testing
from helpers import TEST_KEY, start_api, stored_reading

from dsmr_ts.app import create_app
from dsmr_ts.resources.access import MAX_FAILURES
from dsmr_ts.telegram import Reading, build_telegram, crc16_arc

KEY = {"X-AUTHKEY": TEST_KEY}
V1 = "/api/v1/datalogger/dsmrreading"
V2 = "/api/v2/datalogger/dsmrreading"


def still_serving(url: str) -> None:
    assert requests.get(url + "/health", timeout=10).status_code == 200


def raw_request(url: str, data: bytes) -> bytes:
    """Send bytes as they are (no client library tidying them up); return the status line."""
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(4096).split(b"\r\n", 1)[0]


@pytest.mark.parametrize("size", [70_000, 5_000_000])
def test_bodies_over_the_limit_are_413(api_server, size):
    for path, data in ((V1, {"telegram": "x" * size}), (V2, {"timestamp": "x" * size})):
        assert requests.post(api_server + path, headers=KEY, data=data, timeout=30).status_code == 413
    still_serving(api_server)


def test_deep_and_huge_json(api_server, config):
    deep = "[" * 30_000 + "]" * 30_000  # under the 64 KB limit, far over any parser's nesting depth
    response = requests.post(api_server + V2, headers={**KEY, "Content-Type": "application/json"}, data=deep)
    assert response.status_code == 400 and "detail" in response.json()
    wide = '{"timestamp": "2020-01-01T00:00:00Z", ' + ", ".join(f'"f{i}": {i}' for i in range(20_000)) + "}"
    assert requests.post(
        api_server + V2, headers={**KEY, "Content-Type": "application/json"}, data=wide
    ).status_code in (400, 413)
    # In-process too, where a RecursionError would surface as a 500.
    client = testing.TestClient(create_app(config))
    assert client.simulate_post(V2, headers={**KEY, "Content-Type": "application/json"}, body=deep).status_code == 400
    still_serving(api_server)


def test_latin1_telegrams_and_non_utf8_bodies(api_server):
    # A header with a latin-1 character and a valid CRC over the latin-1 bytes: accepted.
    body = (
        "/ISk5\xe9MT382\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0(200101120000W)\r\n0-0:96.1.1(E-LATIN1)\r\n"
        "1-0:1.8.1(000001.000*kWh)\r\n1-0:1.7.0(00.100*kW)\r\n!"
    )
    telegram = f"{body}{crc16_arc(body.encode('latin-1')):04X}\r\n"
    assert requests.post(api_server + V1, headers=KEY, data={"telegram": telegram}).status_code == 201
    # Raw latin-1 bytes in a url-encoded body are not UTF-8: a clear 400, nothing stored.
    raw = b"telegram=" + urllib.parse.quote_from_bytes(telegram.encode("latin-1")).encode()
    response = requests.post(
        api_server + V1, headers={**KEY, "Content-Type": "application/x-www-form-urlencoded"}, data=raw
    )
    assert response.status_code == 400 and response.text
    # Binary garbage as JSON.
    response = requests.post(
        api_server + V2, headers={**KEY, "Content-Type": "application/json"}, data=b"\xff\xfe\x00garbage"
    )
    assert response.status_code == 400
    still_serving(api_server)


@pytest.mark.parametrize(
    "key", [b"\x00" + TEST_KEY.encode(), TEST_KEY.encode() + b"\xe9", b"a" * 8000, TEST_KEY.encode() + b" X-Other: 1"]
)
def test_odd_keys_are_refused_not_crashed(api_server, key):
    request = b"GET " + V2.encode() + b" HTTP/1.1\r\nHost: x\r\nX-AUTHKEY: " + key + b"\r\nConnection: close\r\n\r\n"
    status = raw_request(api_server, request)
    assert status.split(b" ")[1] in (b"400", b"403", b"431"), status
    still_serving(api_server)


def test_header_injection_is_refused_by_the_server(api_server):
    request = (
        b"GET " + V2.encode() + b" HTTP/1.1\r\nHost: x\r\nX-AUTHKEY: nope\rX-Injected: 1\r\nConnection: close\r\n\r\n"
    )
    status = raw_request(api_server, request)
    assert status.split(b" ")[1] in (b"400", b"403"), status
    still_serving(api_server)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/api/v2/../../../../etc/passwd", b"4"),
        ("/%2e%2e/%2e%2e/etc/passwd", b"4"),
        ("/api/v2/datalogger/dsmrreading/..%2f..%2fx", b"4"),
        ("/" + "a" * 9000, b"4"),
        ("/api/v2/datalogger/dsmrreading?limit=1%00", b"4"),
        ("/api/v2/%00", b"4"),
        # Harmless: the same resource, unknown parameters ignored. Never a 5xx.
        ("//api/v2/datalogger/dsmrreading", b"2"),
        ("/api/v2/datalogger/dsmrreading?" + "a=1&" * 2000, b"2"),
    ],
)
def test_odd_urls(api_server, path, expected):
    status = raw_request(
        api_server, f"GET {path} HTTP/1.1\r\nHost: x\r\nX-AUTHKEY: {TEST_KEY}\r\nConnection: close\r\n\r\n".encode()
    )
    assert status.split(b" ")[1].startswith(expected), (path[:60], status)
    still_serving(api_server)


def test_thousands_of_wrong_keys(session_config, tmp_path):
    """Guessing from one client: 403 for the first few, then 429 for everything from it (the right
    key too, so guessing learns nothing); a client elsewhere (behind the trusted proxy) goes on.
    Its own API: the block would hold up the other tests' client for a minute."""
    api, url = start_api(session_config, tmp_path / "api.log", DSMR_TS_SERVER_TRUST_FORWARDED_HEADERS="true")
    try:
        attacker = {"X-Forwarded-For": "203.0.113.9"}
        session = requests.Session()
        statuses = [
            session.get(url + V2, headers={**attacker, "X-AUTHKEY": f"guess{i:05d}"}).status_code for i in range(2000)
        ]
        assert set(statuses) == {403, 429}
        assert statuses.count(403) <= 2 * MAX_FAILURES  # each of the two workers counts on its own
        assert statuses[-100:] == [429] * 100
        assert session.get(url + V2, headers={**attacker, **KEY}).status_code == 429
        assert session.get(url + V2, headers={"X-Forwarded-For": "192.0.2.1", **KEY}).status_code == 200
    finally:
        api.terminate()
        api.wait(30)


def _chunks(body: bytes, size: int = 1000):
    """A request body as a generator: requests sends it chunked (no Content-Length)."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_telegram_is_read_like_any_other(api_server, config):
    from dsmr_ts.influx.store import Store

    moment = dt.datetime(2022, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)
    telegram = build_telegram(Reading(timestamp=moment, meter="E-CHUNKED", values=_values()))
    body = urllib.parse.urlencode({"telegram": telegram}).encode()
    response = requests.post(
        api_server + V1,
        headers={**KEY, "Content-Type": "application/x-www-form-urlencoded"},
        data=_chunks(body),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert "Content-Length" not in response.request.headers
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    store = Store(config.influxdb)
    try:
        assert stored_reading(store, "E-CHUNKED", moment)["electricity_delivered_1"] == 1234.567
    finally:
        store.close()
    # A v2 reading as chunked JSON too.
    reading = {"timestamp": "2022-03-04T05:06:08Z", "electricity_currently_delivered": "0.1",
               "electricity_currently_returned": "0", "electricity_delivered_1": "1234.568",
               "electricity_returned_1": "0", "electricity_delivered_2": "0", "electricity_returned_2": "0",
               "meter": "E-CHUNKED"}  # fmt: skip
    response = requests.post(
        api_server + V2, headers={**KEY, "Content-Type": "application/json"},
        data=_chunks(json.dumps(reading).encode(), 50), timeout=30,
    )  # fmt: skip
    assert response.status_code == 201 and response.json()["electricity_delivered_1"] == "1234.568", response.text


@pytest.mark.parametrize("size", [70_000, 5 * 1024 * 1024])
def test_chunked_bodies_over_the_limit_are_413(api_server, size):
    body = urllib.parse.urlencode({"telegram": "x" * size}).encode()
    headers = {**KEY, "Content-Type": "application/x-www-form-urlencoded"}
    response = requests.post(api_server + V1, headers=headers, data=_chunks(body, 64 * 1024), timeout=60)
    assert response.status_code == 413, response.text
    still_serving(api_server)


def _values() -> dict:
    return {"electricity_delivered_1": 1234.567, "electricity_returned_1": 0.0, "electricity_delivered_2": 0.0,
            "electricity_returned_2": 0.0, "electricity_currently_delivered": 0.5,
            "electricity_currently_returned": 0.0}  # fmt: skip
