"""GET /metrics: Prometheus text with requests, ingest latency, telegrams, spool depth, reading age;
behind the key by default; no secret in it; summed over gunicorn workers."""

from __future__ import annotations

import dataclasses
import urllib.parse

import requests
from falcon import testing
from prometheus_client.parser import text_string_to_metric_families

from dsmr_ts.app import create_app
from helpers import TEST_KEY, sample_telegram

KEY = {"X-AUTHKEY": TEST_KEY}


def samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_behind_the_key_by_default_and_public_when_configured(config):
    client = testing.TestClient(create_app(config))
    assert client.simulate_get("/metrics").status_code == 403
    assert client.simulate_get("/metrics", headers=KEY).status_code == 200
    public = dataclasses.replace(config, api=dataclasses.replace(config.api, metrics_public=True))
    assert testing.TestClient(create_app(public)).simulate_get("/metrics").status_code == 200


def test_metrics_through_gunicorn_count_requests_telegrams_and_latency(api_server, session_config):
    telegram = sample_telegram("dsmr50_nl_3.txt").decode("latin-1")
    before = samples(requests.get(api_server + "/metrics", headers=KEY).text)
    for _ in range(4):  # spread over both workers
        assert requests.post(api_server + "/api/v1/datalogger/dsmrreading", headers=KEY,
                             data={"telegram": telegram}).status_code == 201
    requests.post(api_server + "/api/v1/datalogger/dsmrreading", headers=KEY, data={"telegram": "/broken\r\n!"})
    text = requests.get(api_server + "/metrics", headers=KEY).text
    after = samples(text)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("dsmr_ts_telegrams_total", result="accepted") == 4
    assert grew("dsmr_ts_telegrams_total", result="rejected") == 1
    assert grew("dsmr_ts_http_requests_total", route="/api/v1/datalogger/dsmrreading", method="POST",
                status="201") == 4
    assert grew("dsmr_ts_ingest_seconds_count") == 4
    assert "dsmr_ts_last_reading_age_seconds" in text
    assert TEST_KEY not in text and session_config.influxdb.token not in text
    # Made-up URLs are one series, not one per URL.
    requests.get(api_server + "/no/such/" + urllib.parse.quote("thing"), headers=KEY)
    assert 'route="unmatched"' in requests.get(api_server + "/metrics", headers=KEY).text
