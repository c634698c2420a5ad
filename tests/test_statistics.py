"""Hour and day statistics against real influxd, with hand-computed expectations.

Scenario (meter E-STATS, Europe/Amsterdam, winter = UTC+1), positions in kWh / m3:
  2026-01-13 22:50Z  d1 100.0  d2 200.0  r2 0.0  gas 50.0 @22:45Z   (first reading: baseline)
  2026-01-13 23:30Z  d1 100.5                     gas 50.1 @23:25Z   (local 14th 00:30)
  2026-01-14 00:10Z  d1 101.0                     gas 50.3 @00:05Z
  2026-01-14 07:30Z  d1 101.2  d2 200.4                              (tariff switch; no new gas)
  -- gap 08Z..13Z --
  2026-01-14 14:15Z            d2 201.4  r2 0.5   gas 51.0 @14:10Z
  2026-01-14 22:59:59Z         d2 201.9           gas 51.2 @22:55Z   (last second of the local day)
  2026-01-14 23:00:00Z         d2 202.0                              (first second of the 15th)
"""

from __future__ import annotations

import datetime as dt
import subprocess
import urllib.parse

import pytest
from falcon import testing
from helpers import REPO, TEST_KEY, dsmr_ts_command, flux, run_task
from influxdb_client import InfluxDBClient

from dsmr_ts.app import create_app
from dsmr_ts.config import PricePeriod
from dsmr_ts.influx.bootstrap import admin_token
from dsmr_ts.influx.lineprotocol import COST_FIELDS, FIXED_DAILY_FIELD
from dsmr_ts.influx.store import Store
from dsmr_ts.influx.tasks import DAY_TASK, HOUR_TASK, QUARTER_TASK, ensure_tasks, task_specs
from dsmr_ts.telegram import Reading, build_telegram

UTC = dt.timezone.utc
KEY = {"X-AUTHKEY": TEST_KEY}
METER = "E-STATS"


def z(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def reading(
    at: str, d1: float, d2: float, r2: float = 0.0, gas: tuple[str, float] | None = None, meter: str = METER
) -> Reading:
    values = {
        "electricity_delivered_1": d1,
        "electricity_delivered_2": d2,
        "electricity_returned_1": 0.0,
        "electricity_returned_2": r2,
        "electricity_currently_delivered": 0.1,
        "electricity_currently_returned": 0.0,
    }
    if gas:
        values.update(extra_device_timestamp=z(gas[0]), extra_device_delivered=gas[1])
    return Reading(timestamp=z(at), meter=meter, values=values)


SCENARIO = [
    reading("2026-01-13T22:50:00Z", 100.0, 200.0, gas=("2026-01-13T22:45:00Z", 50.0)),
    reading("2026-01-13T23:30:00Z", 100.5, 200.0, gas=("2026-01-13T23:25:00Z", 50.1)),
    reading("2026-01-14T00:10:00Z", 101.0, 200.0, gas=("2026-01-14T00:05:00Z", 50.3)),
    reading("2026-01-14T07:30:00Z", 101.2, 200.4),
    reading("2026-01-14T14:15:00Z", 101.2, 201.4, r2=0.5, gas=("2026-01-14T14:10:00Z", 51.0)),
    reading("2026-01-14T22:59:59Z", 101.2, 201.9, r2=0.5, gas=("2026-01-14T22:55:00Z", 51.2)),
    reading("2026-01-14T23:00:00Z", 101.2, 202.0, r2=0.5),
]


def write(store: Store, readings: list[Reading], hourly_gas: bool = False) -> None:
    store.writer.store_readings(readings, hourly_gas)


@pytest.fixture(scope="module")
def store(session_config):
    store = Store(session_config.influxdb)
    write(store, SCENARIO)
    store.compute.recompute(z("2026-01-13T00:00:00Z"), z("2026-01-16T00:00:00Z"), METER)
    yield store
    store.close()


PRICES = [
    PricePeriod(
        start=dt.date(2026, 1, 1),
        electricity_delivered_1=0.25,
        electricity_delivered_2=0.30,
        electricity_returned_1=0.10,
        electricity_returned_2=0.10,
        gas=1.20,
        fixed_daily_cost=0.50,
    ),
    # A price change that starts on the 14th.
    PricePeriod(
        start=dt.date(2026, 1, 14),
        electricity_delivered_1=0.40,
        electricity_delivered_2=0.50,
        electricity_returned_1=0.20,
        electricity_returned_2=0.20,
        gas=1.50,
        fixed_daily_cost=0.60,
    ),
]


@pytest.fixture
def client(config, store):
    config.prices = list(PRICES)
    return testing.TestClient(create_app(config, store))


def get(client, path: str, **params):
    response = client.simulate_get(path, headers=KEY, query_string=urllib.parse.urlencode(params))
    assert response.status_code == 200, response.text
    return response.json


def hours(client, meter=METER, **params) -> dict[str, dict]:
    body = get(client, "/api/v2/statistics/hour", meter=meter, limit=1000, **params)
    return {row["hour_start"]: row for row in body["results"]}


def test_hour_rows_hand_computed(client):
    rows = hours(client, hour_start__gte="2026-01-13T00:00:00Z", hour_start__lte="2026-01-15T00:00:00Z")
    assert list(rows) == [
        "2026-01-13T22:00:00Z",
        "2026-01-13T23:00:00Z",
        "2026-01-14T00:00:00Z",
        "2026-01-14T07:00:00Z",
        "2026-01-14T14:00:00Z",
        "2026-01-14T22:00:00Z",
        "2026-01-14T23:00:00Z",
    ]  # no rows for the hours of the gap

    def usage(hour):
        row = rows[hour]
        return (
            row["electricity1"],
            row["electricity2"],
            row["electricity1_returned"],
            row["electricity2_returned"],
            row["gas"],
        )

    assert usage("2026-01-13T22:00:00Z") == ("0.000", "0.000", "0.000", "0.000", "0.000")
    assert usage("2026-01-13T23:00:00Z") == ("0.500", "0.000", "0.000", "0.000", "0.100")
    assert usage("2026-01-14T00:00:00Z") == ("0.500", "0.000", "0.000", "0.000", "0.200")
    assert usage("2026-01-14T07:00:00Z") == ("0.200", "0.400", "0.000", "0.000", None)
    # Across the gap: 14:00 counts from the 07:30 position, nothing is lost in between.
    assert usage("2026-01-14T14:00:00Z") == ("0.000", "1.000", "0.000", "0.500", "0.700")
    assert usage("2026-01-14T22:00:00Z") == ("0.000", "0.500", "0.000", "0.000", "0.200")
    assert usage("2026-01-14T23:00:00Z") == ("0.000", "0.100", "0.000", "0.000", None)
    assert rows["2026-01-14T14:00:00Z"]["id"] == int(z("2026-01-14T14:00:00Z").timestamp()) // 3600
    assert list(rows["2026-01-14T14:00:00Z"]) == [
        "id",
        "hour_start",
        "electricity1",
        "electricity2",
        "electricity1_returned",
        "electricity2_returned",
        "gas",
    ]


def test_day_rows_hand_computed_with_costs_and_price_change(client):
    body = get(client, "/api/v2/statistics/day", meter=METER, day__gte="2026-01-13", day__lte="2026-01-15")
    days = {row["day"]: row for row in body["results"]}
    assert list(days) == ["2026-01-13", "2026-01-14", "2026-01-15"]
    day = days["2026-01-14"]  # local day = 2026-01-13T23:00Z .. 2026-01-14T23:00Z
    assert day == {
        "id": 20260114,
        "day": "2026-01-14",
        "total_cost": "3.73",  # 0.48 + 0.85 + 1.80 + fixed 0.60 (the period starting on the 14th)
        "electricity1": "1.200",
        "electricity2": "1.900",
        "electricity1_returned": "0.000",
        "electricity2_returned": "0.500",
        "electricity1_cost": "0.48",  # 1.2 x 0.40
        "electricity2_cost": "0.85",  # 1.9 x 0.50 - 0.5 x 0.20
        "gas": "1.200",
        "gas_cost": "1.80",  # 1.2 x 1.50
        "lowest_temperature": None,
        "highest_temperature": None,
        "average_temperature": None,
        # DSMR-reader v5.10+: the fixed cost, and the positions of the day's last readings.
        "fixed_cost": "0.60",
        "electricity_reading_timestamp": "2026-01-14T22:59:59Z",
        "electricity1_reading": "101.200",
        "electricity2_reading": "201.900",
        "electricity1_returned_reading": "0.000",
        "electricity2_returned_reading": "0.500",
        "gas_reading_timestamp": "2026-01-14T22:55:00Z",
        "gas_reading": "51.200",
    }
    assert list(day) == [  # the documentation's order, then DSMR-reader v5.10's additions
        "id",
        "day",
        "total_cost",
        "electricity1",
        "electricity2",
        "electricity1_returned",
        "electricity2_returned",
        "electricity1_cost",
        "electricity2_cost",
        "gas",
        "gas_cost",
        "lowest_temperature",
        "highest_temperature",
        "average_temperature",
        "fixed_cost",
        "electricity_reading_timestamp",
        "electricity1_reading",
        "electricity2_reading",
        "electricity1_returned_reading",
        "electricity2_returned_reading",
        "gas_reading_timestamp",
        "gas_reading",
    ]
    assert days["2026-01-13"]["total_cost"] == "0.50"  # only the fixed cost of the first period
    assert days["2026-01-15"]["electricity2"] == "0.100"


def test_day_without_a_price_period_costs_nothing_not_null(client, store):
    """DSMR-reader's costs are never null: its clients expect "0.00" before the first price period."""
    write(
        store,
        [
            reading("2025-06-01T10:00:00Z", 1.0, 1.0, meter="E-NOPRICE"),
            reading("2025-06-01T11:00:00Z", 2.0, 1.0, meter="E-NOPRICE"),
        ],
    )
    store.compute.recompute(z("2025-06-01T00:00:00Z"), z("2025-06-02T00:00:00Z"), "E-NOPRICE")
    day = get(client, "/api/v2/statistics/day", meter="E-NOPRICE")["results"][0]
    assert (day["electricity1"], day["total_cost"], day["electricity1_cost"], day["gas_cost"]) == (
        "1.000",
        "0.00",
        "0.00",
        "0.00",
    )
    assert day["fixed_cost"] == "0.00" and day["electricity1_reading"] == "2.000"


@pytest.mark.parametrize(
    "meter, first, day, hours_in_day",
    [
        ("E-DST-SPRING", "2026-03-28T22:30:00Z", "2026-03-29", 23),
        ("E-DST-AUTUMN", "2026-10-24T21:30:00Z", "2026-10-25", 25),
    ],
)
def test_dst_days_have_23_and_25_hours(client, store, meter, first, day, hours_in_day):
    # One reading at :30 of every UTC hour, 1 kWh more each time, for 30 hours.
    readings = [reading((z(first) + dt.timedelta(hours=i)).isoformat(), 10.0 + i, 0.0, meter=meter) for i in range(30)]
    write(store, readings)
    store.compute.recompute(z(first) - dt.timedelta(minutes=30), z(first) + dt.timedelta(hours=30), meter)
    row = get(client, "/api/v2/statistics/day", meter=meter, day__gte=day, day__lte=day)["results"][0]
    assert row["day"] == day
    assert row["electricity1"] == f"{hours_in_day}.000"


def test_gas_dsmr4_is_booked_one_hour_earlier_dsmr5_as_stamped(client, store):
    def telegram(at: str, gas_at: str, gas: float, meter: str, version: str) -> str:
        r = reading(at, 5.0, 5.0, gas=(gas_at, gas), meter=meter)
        return build_telegram(r, {"dsmr_version": version})

    v1 = "/api/v1/datalogger/dsmrreading"
    posts = [
        # DSMR 4: hourly gas stamped at the end of the hour it covers.
        telegram("2026-02-02T10:05:00Z", "2026-02-02T10:00:00Z", 10.0, "E-GAS4", "42"),
        telegram("2026-02-02T11:05:00Z", "2026-02-02T11:00:00Z", 10.8, "E-GAS4", "42"),
        telegram("2026-02-02T12:05:00Z", "2026-02-02T12:00:00Z", 11.0, "E-GAS4", "42"),
        # DSMR 5: gas every 5 minutes, at its own time.
        telegram("2026-02-02T10:26:00Z", "2026-02-02T10:25:00Z", 5.0, "E-GAS5", "50"),
        telegram("2026-02-02T10:56:00Z", "2026-02-02T10:55:00Z", 5.3, "E-GAS5", "50"),
        telegram("2026-02-02T11:11:00Z", "2026-02-02T11:10:00Z", 5.6, "E-GAS5", "50"),
    ]
    for text in posts:
        response = client.simulate_post(
            v1,
            headers={**KEY, "Content-Type": "application/x-www-form-urlencoded"},
            body=urllib.parse.urlencode({"telegram": text}),
        )
        assert response.status_code == 201, response.text
    store.housekeeping.repair()  # the reader's housekeeping job: these hours ended long ago
    gas4 = {h: r["gas"] for h, r in hours(client, meter="E-GAS4").items()}
    assert gas4["2026-02-02T10:00:00Z"] == "0.800"  # 10.8 at 11:00 minus 10.0 at 10:00: used 10:00-11:00
    assert gas4["2026-02-02T11:00:00Z"] == "0.200"
    gas5 = {h: r["gas"] for h, r in hours(client, meter="E-GAS5").items()}
    assert (gas5["2026-02-02T10:00:00Z"], gas5["2026-02-02T11:00:00Z"]) == ("0.300", "0.300")


def test_meter_replacement_never_gives_negative_usage(client, store):
    write(
        store,
        [
            reading("2026-04-01T10:10:00Z", 5000.0, 0.0, meter="E-SWAP"),
            reading("2026-04-01T11:10:00Z", 5001.0, 0.0, meter="E-SWAP"),
            reading("2026-04-01T12:10:00Z", 0.2, 0.0, meter="E-SWAP"),  # new meter
            reading("2026-04-01T13:10:00Z", 0.9, 0.0, meter="E-SWAP"),
        ],
    )
    store.compute.recompute(z("2026-04-01T00:00:00Z"), z("2026-04-02T00:00:00Z"), "E-SWAP")
    rows = hours(client, meter="E-SWAP")
    assert [rows[f"2026-04-01T{h}:00:00Z"]["electricity1"] for h in (11, 12, 13)] == ["1.000", "0.000", "0.700"]


def test_late_insert_is_repaired_by_the_repair_job(client, store):
    # A v2 POST of history into the gap: hour 10 appears, hour 14 now counts from it, the day keeps
    # its total and counts one reading more (once the reader's housekeeping job has run the repair).
    response = client.simulate_post(
        "/api/v2/datalogger/dsmrreading",
        headers=KEY,
        json={
            "timestamp": "2026-01-14T10:00:00Z",
            "meter": METER,
            "electricity_delivered_1": 101.2,
            "electricity_delivered_2": 201.0,
            "electricity_returned_1": 0,
            "electricity_returned_2": 0.5,
            "electricity_currently_delivered": 0.1,
            "electricity_currently_returned": 0,
        },
    )
    assert response.status_code == 201
    assert store.readings.count(METER, z("2026-01-13T23:00:00Z"), z("2026-01-14T22:59:59Z")) == 6  # before the repair
    assert "2026-01-14T10:00:00Z" not in hours(client)  # the request did not recompute anything
    assert store.housekeeping.repair() >= 5  # hour 10 up to the next hour with readings (14)
    rows = hours(client, hour_start__gte="2026-01-14T00:00:00Z", hour_start__lte="2026-01-14T23:00:00Z")
    assert rows["2026-01-14T10:00:00Z"]["electricity2"] == "0.600"
    assert rows["2026-01-14T10:00:00Z"]["electricity2_returned"] == "0.500"
    assert rows["2026-01-14T14:00:00Z"]["electricity2"] == "0.400"
    assert rows["2026-01-14T14:00:00Z"]["electricity2_returned"] == "0.000"
    day = get(client, "/api/v2/statistics/day", meter=METER, day__gte="2026-01-14", day__lte="2026-01-14")
    assert day["results"][0]["electricity2"] == "1.900"
    assert store.readings.count(METER, z("2026-01-13T23:00:00Z"), z("2026-01-14T22:59:59Z")) == 6


@pytest.mark.parametrize(
    "path, params, errors",
    [
        ("/api/v2/statistics/day", {"day__gte": "soon"}, {"day__gte": ["Enter a valid date."]}),
        ("/api/v2/statistics/day", {"limit": "x"}, {"limit": ["A positive integer is required."]}),
        (
            "/api/v2/statistics/hour",
            {"hour_start__lte": "noon", "offset": "-1"},
            {"hour_start__lte": ["Enter a valid date/time."], "offset": ["A non-negative integer is required."]},
        ),
    ],
)
def test_bad_parameters_are_400(client, path, params, errors):
    response = client.simulate_get(path, headers=KEY, query_string=urllib.parse.urlencode(params))
    assert (response.status_code, response.json) == (400, errors)


def test_ordering_and_pagination(client):
    body = get(client, "/api/v2/statistics/hour", meter=METER, ordering="-hour_start", limit=2)
    assert body["count"] >= 7
    assert body["results"][0]["hour_start"] > body["results"][1]["hour_start"]
    assert "offset=2" in body["next"] and body["previous"] is None
    second = get(client, "/api/v2/statistics/hour", meter=METER, ordering="-hour_start", limit=2, offset=2)
    assert second["results"][0]["hour_start"] < body["results"][1]["hour_start"]


def test_tasks_created_once_and_updated_idempotently(session_config):
    settings = session_config.influxdb
    with InfluxDBClient(url=settings.url, token=admin_token(session_config), org=settings.org) as client:
        org_id = client.organizations_api().find_organizations(org=settings.org)[0].id
        assert ensure_tasks(client, session_config, org_id) == []  # setup made them already
        schedules = {HOUR_TASK: "every: 1h", DAY_TASK: "every: 1h", QUARTER_TASK: "every: 15m"}
        assert [spec.name for spec in task_specs(session_config)] == list(schedules)
        for spec in task_specs(session_config):
            found = [t for t in client.tasks_api().find_tasks(name=spec.name) if t.name == spec.name]
            assert len(found) == 1 and found[0].status == "active"
            assert schedules[spec.name] in found[0].flux


def _statistics_rows(store: Store, measurement: str, start: dt.datetime, stop: dt.datetime) -> list[tuple]:
    rows = flux(
        store,
        f"from(bucket: stats) |> range(start: start, stop: stop)"
        f' |> filter(fn: (r) => r._measurement == "{measurement}" and r.meter == meter)',
        {"start": start, "stop": stop, "meter": METER},
    )
    return sorted((r["_time"], r["_field"], round(float(r["_value"]), 6)) for r in rows)


def test_influxdb_tasks_write_the_same_rows_as_regenerate(session_config, store):
    start, stop = z("2026-01-14T12:00:00Z"), z("2026-01-15T00:00:00Z")
    day_start, day_stop = z("2026-01-13T23:00:00Z"), z("2026-01-14T23:00:00Z")
    store.compute.recompute(start, stop, METER)
    expected_hours = _statistics_rows(store, "hour", start, stop)
    expected_day = _statistics_rows(store, "day", day_start, day_stop)
    assert expected_hours and expected_day
    settings = session_config.influxdb
    with InfluxDBClient(
        url=settings.url, token=admin_token(session_config), org=settings.org
    ) as client:  # tasks: admin
        for measurement, (a, b) in (("hour", (start, stop)), ("day", (day_start, day_stop))):
            client.delete_api().delete(
                a,
                b - dt.timedelta(seconds=1),
                f'_measurement="{measurement}" AND meter="{METER}"',
                bucket=settings.stats_bucket,
                org=settings.org,
            )
        assert _statistics_rows(store, "hour", start, stop) == []
    # Each hour task run covers the two hours before its scheduled time.
    for hour in range(14, 25, 2):
        run_task(session_config, HOUR_TASK, start + dt.timedelta(hours=hour - 12))
    run_task(session_config, DAY_TASK, z("2026-01-14T23:00:00Z"))  # just after local midnight
    # The tasks write the usage; the costs are dsmr-ts's step after them (housekeeping).
    assert _statistics_rows(store, "hour", start, stop) == _without_costs(expected_hours)
    assert _without_costs(_statistics_rows(store, "day", day_start, day_stop)) == _without_costs(expected_day)
    store.compute.costs_and_days(start, stop, METER)
    assert _statistics_rows(store, "hour", start, stop) == expected_hours
    assert _statistics_rows(store, "day", day_start, day_stop) == expected_day


def _without_costs(rows: list[tuple]) -> list[tuple]:
    return [row for row in rows if row[1] not in (*COST_FIELDS, FIXED_DAILY_FIELD)]


def test_regenerate_command_with_progress(session_config, store, tmp_path):
    # Remove the day, then let the command bring it back exactly.
    settings = session_config.influxdb
    store.compute.recompute(z("2026-01-13T00:00:00Z"), z("2026-01-16T00:00:00Z"), METER)
    expected = _statistics_rows(store, "day", z("2026-01-13T23:00:00Z"), z("2026-01-14T23:00:00Z"))
    with InfluxDBClient(url=settings.url, token=settings.token, org=settings.org) as client:
        client.delete_api().delete(
            z("2026-01-13T23:00:00Z"),
            z("2026-01-14T22:59:59Z"),
            f'_measurement="day" AND meter="{METER}"',
            bucket=settings.stats_bucket,
            org=settings.org,
        )
    result = subprocess.run(
        dsmr_ts_command(
            "--config", str(session_config.path), "regenerate", "--since", "2026-01-10", "--until", "2026-01-20"
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "11/11 days" in result.stderr and "ETA" in result.stderr
    assert _statistics_rows(store, "day", z("2026-01-13T23:00:00Z"), z("2026-01-14T23:00:00Z")) == expected


def test_regenerate_rejects_bad_dates(session_config):
    result = subprocess.run(
        dsmr_ts_command("--config", str(session_config.path), "regenerate", "--since", "June"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "expected a date like 2024-01-31, got 'June'" in result.stderr
    assert "Traceback" not in result.stderr


def _analyze(session_config) -> subprocess.CompletedProcess:
    return subprocess.run(
        dsmr_ts_command("--config", str(session_config.path), "regenerate", "--analyze", "--meter", METER,
                        "--since", "2026-01-13", "--until", "2026-01-15"),
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_regenerate_analyze_recomputes_without_writing_and_names_each_difference(store, session_config):
    clean = _analyze(session_config)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.strip() == "the statistics are as the readings make them"
    # Damage two stored values: an hour's usage, and a day's end position.
    hour, day = z("2026-01-14T00:00:00Z"), z("2026-01-13T23:00:00Z")
    store.client.write(
        f"hour,meter={METER} electricity1=9.9 {int(hour.timestamp()) * 10**9}\n"
        f"day,meter={METER} electricity_delivered_2=1.5 {int(day.timestamp()) * 10**9}",
        store.settings.stats_bucket,
    )
    damaged = _analyze(session_config)
    assert damaged.returncode == 1, damaged.stderr
    assert damaged.stdout.splitlines() == [
        f"day 2026-01-13T23:00:00Z {METER} electricity_delivered_2: stored 1.500, recomputed 201.900",
        f"hour 2026-01-14T00:00:00Z {METER} electricity1: stored 9.900, recomputed 0.500",
        "2 stored value(s) differ from their recomputation",
    ]
    # Nothing was written by the analysis: the damage is still there, until a regenerate mends it.
    assert _analyze(session_config).returncode == 1
    store.compute.recompute(z("2026-01-13T23:00:00Z"), z("2026-01-15T23:00:00Z"), METER)
    assert _analyze(session_config).returncode == 0
