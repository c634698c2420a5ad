"""Upgrades: a data dir and a backup made with the previous InfluxDB release are served by the
release dsmr-ts pins. The previous influxd is built here from its own Go module (as the pinned one
is, cached once per machine); `dsmr-ts run` on it stores a history, then the pinned influxd serves
the same data dir, and restores the backup, with every answer byte for byte as before and the
statistics tasks still running."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import requests
from helpers import TEST_KEY, Running, run_task, write_config
from history import METERS, answers, dsmr_ts, post_history

from dsmr_ts.config import load_config
from dsmr_ts.influx.build import INFLUXDB_VERSION, ensure_influxd
from dsmr_ts.influx.tasks import HOUR_TASK

PREVIOUS_VERSION = "v2.8.0"
PREVIOUS_MODULE = Path(__file__).parent / "influxd-previous"
UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def previous_influxd() -> Path:
    return ensure_influxd(version=PREVIOUS_VERSION, module=PREVIOUS_MODULE)


def influxd_version(config: Path) -> str:
    return requests.get(load_config(config).influxdb.url + "/health", timeout=10).json()["version"]


def test_the_previous_influxd_s_data_dir_and_backup_are_served_as_before(previous_influxd, tmp_path):
    store = write_config(tmp_path / "store", "  enabled: false\n")
    target = write_config(tmp_path / "target", "  enabled: false\n")
    previous = {"DSMR_TS_INFLUXD": str(previous_influxd)}
    until = dt.datetime(2026, 3, 11, tzinfo=UTC)
    api = Running(store, env=previous)
    try:
        assert influxd_version(store) == PREVIOUS_VERSION.lstrip("v")
        post_history(api)
        dsmr_ts(store, "regenerate", "--since", "2026-03-09", "--until", "2026-03-10", env=previous)
        before = answers(api, until)
        made = dsmr_ts(store, "backup", "--to", str(tmp_path / "backups"), env=previous)
    finally:
        api.stop()
    assert json.loads(before[f"day {METERS[1]}"])["count"] == 2

    # The pinned release on the same data dir.
    api = Running(store)
    try:
        assert influxd_version(store) == INFLUXDB_VERSION.lstrip("v")
        after = answers(api, until)
        assert [name for name, body in before.items() if after[name] != body] == []
        # The tasks the previous release's setup made still run: a reading in a new hour gets its row.
        reading = {"meter": METERS[0], "timestamp": "2026-03-11T00:10:00+00:00", "electricity_delivered_1": "1100.000",
                   "electricity_delivered_2": "2100.000", "electricity_returned_1": "0", "electricity_returned_2": "0",
                   "electricity_currently_delivered": "1.000", "electricity_currently_returned": "0"}  # fmt: skip
        headers = {"X-AUTHKEY": TEST_KEY}
        assert (
            requests.post(api.url + "/api/v2/datalogger/dsmrreading", data=reading, headers=headers).status_code == 201
        )
        run_task(load_config(store), HOUR_TASK, dt.datetime(2026, 3, 11, 1, tzinfo=UTC))
        new_hour = json.loads(
            api.get("/api/v2/statistics/hour", meter=METERS[0], hour_start__gte="2026-03-11T00:00:00Z")
        )
        assert new_hour["count"] == 1 and new_hour["results"][0]["electricity1"] != "0.000"
    finally:
        api.stop()

    # The previous release's backup, restored by the pinned one.
    backup = Path(made.stdout.split()[1].rstrip(":"))
    dsmr_ts(target, "restore", str(backup))
    api = Running(target)
    try:
        restored = answers(api, until)
        assert [name for name, body in before.items() if restored[name] != body] == []
    finally:
        api.stop()
