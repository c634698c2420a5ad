"""GET /metrics: Prometheus text with requests, ingest latency, telegrams, spool depth, reading age;
behind the key by default; no secret in it; summed over gunicorn workers."""

from __future__ import annotations

import dataclasses
import urllib.parse

import requests
from falcon import testing
from helpers import TEST_KEY, sample_telegram
from prometheus_client.parser import text_string_to_metric_families

from dsmr_ts.app import create_app

KEY = {"X-AUTHKEY": TEST_KEY}


def samples(text: str) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


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
        assert (
            requests.post(
                api_server + "/api/v1/datalogger/dsmrreading", headers=KEY, data={"telegram": telegram}
            ).status_code
            == 201
        )
    requests.post(api_server + "/api/v1/datalogger/dsmrreading", headers=KEY, data={"telegram": "/broken\r\n!"})
    text = requests.get(api_server + "/metrics", headers=KEY).text
    after = samples(text)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("dsmr_ts_telegrams_total", result="accepted") == 4
    assert grew("dsmr_ts_telegrams_total", result="rejected") == 1
    assert grew("dsmr_ts_http_requests_total", route="/api/v1/datalogger/dsmrreading", method="POST", status="201") == 4
    assert grew("dsmr_ts_ingest_seconds_count") == 4
    assert "dsmr_ts_last_reading_age_seconds" in text
    assert TEST_KEY not in text and session_config.influxdb.token not in text
    # Made-up URLs are one series, not one per URL.
    requests.get(api_server + "/no/such/" + urllib.parse.quote("thing"), headers=KEY)
    assert 'route="unmatched"' in requests.get(api_server + "/metrics", headers=KEY).text


def test_a_killed_masters_metrics_directory_is_removed_by_the_next_master(config, tmp_path):
    """SIGKILL skips gunicorn's on_exit: the next master (gunicorn_conf, as gunicorn loads it) removes
    the directories of masters that are gone, and only those."""
    import os
    import subprocess
    import sys

    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"dsmr-ts-metrics-{gone.pid}-abc123"
    alive = tmp_path / f"dsmr-ts-metrics-{os.getpid()}-def456"  # this test's own process
    unnamed = tmp_path / "dsmr-ts-metrics-ghi789"  # an older version's: no pid to check
    for folder in (stale, alive, unnamed):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    master = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, dsmr_ts.gunicorn_conf; print(os.environ['PROMETHEUS_MULTIPROC_DIR'], os.getpid())",
        ],
        env={**env, "TMPDIR": str(tmp_path), "DSMR_TS_CONFIG": str(config.path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert master.returncode == 0, master.stderr
    made, pid = master.stdout.split()
    assert not stale.exists() and alive.exists() and unnamed.exists()
    assert os.path.basename(made).startswith(f"dsmr-ts-metrics-{pid}-") and os.path.dirname(made) == str(tmp_path)
