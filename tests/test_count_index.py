"""The count index is trusted only where it is proven: setup starts its watermark, the hour task
moves it, late writes mark their hours, the repair job (in `dsmr-ts reader`) recomputes them, and
a GET never builds or trusts anything else. Private influxd: these tests move the watermark."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import urllib.parse

import pytest
from falcon import testing
from helpers import REPO, TEST_KEY, dsmr_ts_command, flux, run_task, wait_for, write_lines
from influxdb_client import InfluxDBClient

from dsmr_ts.app import create_app
from dsmr_ts.config import load_config
from dsmr_ts.datetimes import floor_hour
from dsmr_ts.influx.bootstrap import admin_token, bootstrap
from dsmr_ts.influx.count_index import INDEX_VERSION
from dsmr_ts.influx.lineprotocol import INDEX_MEASUREMENT
from dsmr_ts.influx.server import ManagedInfluxd, free_port
from dsmr_ts.influx.store import Store
from dsmr_ts.influx.tasks import HOUR_TASK
from dsmr_ts.telegram import Reading

UTC = dt.timezone.utc
KEY = {"X-AUTHKEY": TEST_KEY}
PATH = "/api/v2/datalogger/dsmrreading"


@pytest.fixture(scope="module")
def private(influxd_binary, tmp_path_factory):
    folder = tmp_path_factory.mktemp("count-index")
    server = ManagedInfluxd(influxd_binary, folder / "influxd", port=free_port()).start()
    config_path = folder / "dsmr-ts.yaml"
    config_path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\n"
        f"influxdb:\n  managed: false\n  url: {server.url}\n"
        f"reader:\n  enabled: false\n  spool_dir: ./spool\n"
    )
    bootstrap(load_config(config_path))
    config = load_config(config_path)
    store = Store(config.influxdb)
    yield config, store
    store.close()
    server.stop()


def history(meter: str, start: dt.datetime, count: int, step: dt.timedelta) -> list[Reading]:
    return [
        Reading(
            start + i * step,
            meter,
            {
                "electricity_delivered_1": round(1000 + 0.1 * i, 3),
                "electricity_delivered_2": 50.0,
                "electricity_returned_1": 0.0,
                "electricity_returned_2": 0.0,
                "electricity_currently_delivered": 0.6,
                "electricity_currently_returned": 0.0,
            },
        )
        for i in range(count)
    ]


def stats_points(store: Store) -> int:
    rows = flux(
        store, "from(bucket: stats) |> range(start: 0, stop: 2200-01-01T00:00:00Z) |> count() |> group() |> sum()"
    )
    return int(rows[0]["_value"]) if rows else 0


def test_setup_starts_the_watermark_at_the_current_hour(private):
    config, store = private
    watermark = store.index.watermark()
    assert watermark is not None and watermark <= dt.datetime.now(UTC)
    assert dt.datetime.now(UTC) - watermark < dt.timedelta(hours=2)


def test_bulk_history_then_hour_task_then_first_get_is_exact_and_builds_nothing(private):
    """The old index took its newest row as proof for every earlier hour: an hour task between a
    bulk import and the first GET left counts short. Now a GET counts marked hours raw, and writes
    nothing."""
    config, store = private
    readings = history("E-BULK", dt.datetime(2025, 3, 1, 10, 0, 7, tzinfo=UTC), 2000, dt.timedelta(seconds=30))
    for first in range(0, len(readings), 500):
        store.writer.store_readings(readings[first : first + 500])
    now = dt.datetime.now(UTC)
    _run_hour_task(config, floor_hour(now))  # the hourly task runs before anyone asks
    before = stats_points(store)
    client = testing.TestClient(create_app(config, store))
    for params in (
        {},
        {"ordering": "-timestamp", "limit": 1},
        {"timestamp__gte": "2025-03-01T12:17:00Z"},
        {"offset": 1500, "limit": 7},
    ):
        body = client.simulate_get(
            PATH, headers=KEY, query_string=urllib.parse.urlencode({"meter": "E-BULK", **params})
        ).json
        gte = dt.datetime(2025, 3, 1, 12, 17, tzinfo=UTC) if "timestamp__gte" in params else None
        assert (
            body["count"]
            == store.readings.brute_force_count("E-BULK", gte, None)
            == len([r for r in readings if gte is None or r.timestamp >= gte])
        )
    assert client.simulate_get(PATH, headers=KEY, query_string="meter=E-BULK&offset=1500&limit=7").json["results"][0][
        "id"
    ] == int(readings[1500].timestamp.timestamp())
    assert stats_points(store) == before  # a GET never writes the index


def test_raw_points_in_a_proven_hour_would_be_miscounted_so_every_path_marks(private, monkeypatch):
    """The index is proven for what dsmr-ts writes; every writer it has (API, reader, spool, import,
    bulk) marks ended hours. What the count relies on is shown here: an hour the index covers
    counts from its row, and the same hour marked counts raw."""
    config, store = private
    # Marks count as pending until 2 minutes after the repair job's run (writes in flight then);
    # this test does not wait that long.
    monkeypatch.setattr("dsmr_ts.influx.readings.REPAIR_SLACK", dt.timedelta(0))
    hour = floor_hour(store.index.watermark()) - dt.timedelta(hours=5)
    store.writer.store_readings(history("E-MARK", hour + dt.timedelta(minutes=1), 10, dt.timedelta(minutes=1)))
    store.housekeeping.repair()
    store.readings.proof.forget()  # the cursor it just moved, not the one remembered a minute
    assert store.readings.count("E-MARK", None, None) == 10
    write_lines(
        store,
        [
            f"reading,meter=E-MARK electricity_delivered_1=1.0 {int((hour + dt.timedelta(minutes=30)).timestamp())}"
            "000000000"
        ],
    )  # behind dsmr-ts' back: no mark
    assert store.readings.count("E-MARK", None, None) == 10  # the proven row, not the raw point
    store.writer.store_readings(history("E-MARK", hour + dt.timedelta(minutes=40), 1, dt.timedelta(minutes=1)))
    assert store.readings.count("E-MARK", None, None) == 12 == store.readings.brute_force_count("E-MARK", None, None)


def test_the_hour_task_moves_the_watermark_to_its_last_successful_run(influxd_binary, tmp_path):
    """The housekeeping job moves the watermark to the scheduled time of the hour task's latest
    successful run (all of its rows are in by then), never further, never back."""
    server = ManagedInfluxd(influxd_binary, tmp_path / "influxd", port=free_port()).start()
    try:
        config_path = tmp_path / "dsmr-ts.yaml"
        config_path.write_text(f"influxdb:\n  managed: false\n  url: {server.url}\n")
        bootstrap(load_config(config_path))
        config = load_config(config_path)
        store = Store(config.influxdb)
        try:
            hour = store.index.watermark()
            assert hour == floor_hour(dt.datetime.now(UTC))
            # As if the task had been off for three hours (only a test moves a watermark back).
            write_lines(
                store,
                [f"{INDEX_MEASUREMENT} complete_until={int((hour - dt.timedelta(hours=3)).timestamp())}i 0"],
                config.influxdb.stats_bucket,
            )
            assert store.housekeeping.follow_hour_task() == hour - dt.timedelta(hours=3)  # no run yet
            for step in (2, 1, 0):
                before = store.index.watermark()
                _run_hour_task(config, hour - dt.timedelta(hours=step))
                assert store.index.watermark() == before  # a run proves nothing itself...
                assert store.housekeeping.follow_hour_task() == hour - dt.timedelta(hours=step)  # ... once it is done
        finally:
            store.close()
    finally:
        server.stop()


def test_without_a_watermark_everything_is_counted_raw_and_monitoring_says_so(influxd_binary, tmp_path):
    server = ManagedInfluxd(influxd_binary, tmp_path / "influxd", port=free_port()).start()
    try:
        config_path = tmp_path / "dsmr-ts.yaml"
        config_path.write_text(
            f"api:\n  enabled: true\n  key: {TEST_KEY}\ninfluxdb:\n  managed: false\n  url: {server.url}\n"
        )
        bootstrap(load_config(config_path))
        config = load_config(config_path)
        with InfluxDBClient(url=config.influxdb.url, token=admin_token(config), org=config.influxdb.org) as c:
            c.delete_api().delete(
                dt.datetime(1970, 1, 1, tzinfo=UTC),
                dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
                f'_measurement="{INDEX_MEASUREMENT}"',
                bucket=config.influxdb.stats_bucket,
                org=config.influxdb.org,
            )
        store = Store(config.influxdb)
        try:
            assert store.index.watermark() is None
            store.writer.store_readings(
                history("E-RAW", dt.datetime(2024, 1, 1, tzinfo=UTC), 100, dt.timedelta(minutes=7))
            )
            client = testing.TestClient(create_app(config, store))
            assert client.simulate_get(PATH, headers=KEY, query_string="meter=E-RAW").json["count"] == 100
            details = client.simulate_get("/api/v2/application/monitoring", headers=KEY).json["details"]
            assert any("never built" in d["description"] for d in details)
            # setup builds it once from the readings there are: statistics and the watermark.
            bootstrap(config)
            assert store.index.watermark() is not None
            assert client.simulate_get(PATH, headers=KEY, query_string="meter=E-RAW").json["count"] == 100
        finally:
            store.close()
    finally:
        server.stop()


def test_the_reader_repairs_a_day_of_history_posted_out_of_order(private, tmp_path):
    """A remote datalogger catches up a day, in random order, through the API; `dsmr-ts reader`
    (housekeeping only: reader.enabled false) repairs the hours and the day within a minute.

    Meter E-LATE, local day 2026-06-10 (UTC+2): readings at minute 5, 15, ..., 55 of every hour,
    position 1000.0 + 0.1 per reading. Every hour uses 0.6 kWh, except the meter's first (its first
    reading is the baseline): 0.5; the day 14.3 (143 steps)."""
    config, store = private
    midnight = dt.datetime(2026, 6, 9, 22, 0, tzinfo=UTC)
    readings = [
        Reading(
            midnight + dt.timedelta(minutes=5 + 10 * i),
            "E-LATE",
            {
                "electricity_delivered_1": round(1000 + 0.1 * i, 3),
                "electricity_delivered_2": 50.0,
                "electricity_returned_1": 0.0,
                "electricity_returned_2": 0.0,
                "electricity_currently_delivered": 0.6,
                "electricity_currently_returned": 0.0,
            },
        )
        for i in range(144)
    ]
    random.Random(7).shuffle(readings)
    client = testing.TestClient(create_app(config, store))
    for reading in readings:
        body = {
            "timestamp": reading.timestamp.isoformat(),
            "meter": reading.meter,
            **{k: str(v) for k, v in reading.values.items()},
        }
        assert client.simulate_post(PATH, headers=KEY, json=body).status_code == 201
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_") or k == "DSMR_TS_INFLUXD"}
    with open(tmp_path / "reader.log", "w") as log:
        reader = subprocess.Popen(
            dsmr_ts_command("reader", "--config", str(config.path)),
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def repaired() -> dict | None:
            assert reader.poll() is None, (tmp_path / "reader.log").read_text()
            hours = client.simulate_get(
                "/api/v2/statistics/hour",
                headers=KEY,
                query_string=urllib.parse.urlencode({"meter": "E-LATE", "limit": 100}),
            ).json["results"]
            day = client.simulate_get(
                "/api/v2/statistics/day",
                headers=KEY,
                query_string="meter=E-LATE&day__gte=2026-06-10&day__lte=2026-06-10",
            ).json
            done = len(hours) == 24 and day["count"] == 1 and not store.index.pending_marks("E-LATE", 0, 2**31)
            return {"hours": hours, "day": day} if done else None

        found = wait_for(repaired, timeout=60, what="the repair job to compute 24 hours and the day, and mark them")
        usage = [row["electricity1"] for row in found["hours"]]
        assert usage == ["0.500"] + ["0.600"] * 23
        assert found["day"]["results"][0]["electricity1"] == "14.300"
        assert "statistics repaired: meter E-LATE" in (tmp_path / "reader.log").read_text()
    finally:
        reader.send_signal(signal.SIGTERM)
        reader.wait(30)


def _run_hour_task(config, scheduled_for: dt.datetime) -> None:
    run_task(config, HOUR_TASK, scheduled_for)


def test_setup_rebuilds_a_store_indexed_by_an_older_version(private):
    """Hour rows of dsmr-ts before minute and gas counts: setup regenerates them once."""
    config, store = private
    hour = dt.datetime(2025, 3, 1, 11, tzinfo=UTC)
    with InfluxDBClient(url=config.influxdb.url, token=config.influxdb.token, org=config.influxdb.org) as client:
        client.delete_api().delete(
            hour,
            hour + dt.timedelta(hours=1),
            '_measurement="hour" AND meter="E-BULK"',
            bucket=config.influxdb.stats_bucket,
            org=config.influxdb.org,
        )
    write_lines(store, [f"{INDEX_MEASUREMENT} version=1i 0"], config.influxdb.stats_bucket)
    assert store.index.index_version() == 1
    bootstrap(config)
    assert store.index.index_version() == INDEX_VERSION
    minutes = flux(
        store,
        "from(bucket: stats) |> range(start: start, stop: stop) |> filter(fn: (r) =>"
        ' r._measurement == "hour" and r.meter == "E-BULK" and r._field == "minute_count")',
        {"start": hour, "stop": hour + dt.timedelta(hours=1)},
    )
    assert [row["_value"] for row in minutes] == [60]  # a reading every 30 s
    assert store.minutes.brute_force_count("E-BULK", hour, hour + dt.timedelta(minutes=59, seconds=59)) == 60
    bootstrap(config)  # once
    assert store.index.index_version() == INDEX_VERSION
