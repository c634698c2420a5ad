"""End to end: real gunicorn, real HTTP, real influxd. A datalogger script's exact calls."""

from __future__ import annotations

import requests
from helpers import TEST_KEY, sample_telegram
from test_api_ingest import a_reading, stored_fields, unique_moment

from dsmr_ts.telegram import build_telegram

V1 = "/api/v1/datalogger/dsmrreading"
V2 = "/api/v2/datalogger/dsmrreading"


def test_datalogger_script_posts_telegrams(api_server, config):
    from dsmr_ts.influx.store import Store

    # Exactly what the documentation's client script sends: requests' form encoding, X-AUTHKEY.
    telegram = sample_telegram("dsmr42_nl_2.txt").decode("latin-1")
    response = requests.post(api_server + V1, headers={"X-AUTHKEY": TEST_KEY}, data={"telegram": telegram})
    assert (response.status_code, response.text) == (201, "")

    moment = unique_moment()
    response = requests.post(
        api_server + V1, headers={"X-AUTHKEY": TEST_KEY}, data={"telegram": build_telegram(a_reading(moment, "E-E2E"))}
    )
    assert response.status_code == 201
    store = Store(config.influxdb)
    try:
        assert stored_fields(store, "E-E2E", moment)["electricity_delivered_2"] == 200.0
    finally:
        store.close()


def test_v2_post_and_errors_over_http(api_server):
    data = {
        "timestamp": "2017-04-15T00:00:00+02",
        "electricity_currently_delivered": 1.5,
        "electricity_currently_returned": 0.025,
        "electricity_delivered_1": 2000,
        "electricity_delivered_2": 3000,
        "electricity_returned_1": 0,
        "electricity_returned_2": 0,
        "meter": "E-E2E-V2",
    }
    response = requests.post(api_server + V2, headers={"X-AUTHKEY": TEST_KEY}, data=data)
    assert response.status_code == 201
    assert response.json()["timestamp"] == "2017-04-14T22:00:00Z"
    bad = requests.post(api_server + V2, headers={"X-AUTHKEY": TEST_KEY}, data={**data, "timestamp": "soon"})
    assert bad.status_code == 400 and list(bad.json()) == ["timestamp"]
    denied = requests.post(api_server + V1, headers={"X-AUTHKEY": "nope"}, data={"telegram": "x"})
    assert (denied.status_code, denied.text) == (403, "Invalid auth key")


def test_posted_reading_is_served_by_get_over_http(api_server):
    data = {
        "timestamp": "2018-01-02T03:04:05Z",
        "electricity_currently_delivered": 0.5,
        "electricity_currently_returned": 0,
        "electricity_delivered_1": 10,
        "electricity_delivered_2": 20,
        "electricity_returned_1": 0,
        "electricity_returned_2": 0,
        "meter": "E-E2E-GET",
    }
    assert requests.post(api_server + V2, headers={"X-AUTHKEY": TEST_KEY}, data=data).status_code == 201
    response = requests.get(
        api_server + V2,
        headers={"X-AUTHKEY": TEST_KEY},
        params={"meter": "E-E2E-GET", "ordering": "-timestamp", "limit": 1},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1 and body["next"] is None
    assert body["results"][0]["timestamp"] == "2018-01-02T03:04:05Z"
    assert body["results"][0]["electricity_delivered_2"] == "20.000"
