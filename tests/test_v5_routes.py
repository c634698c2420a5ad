"""The rest of DSMR-reader v5's v2 routes against real influxd, with hand-computed values.

Meter E-V5 (prices: d1 0.25, d2 0.30, r1 0.10, r2 0.10, gas 1.20, fixed 0.50 a day):
  an hour before local midnight: d1 100.0 d2 50.0 r2 1.0, gas 10.000
  10 s ago (the newest):          d1 101.2 d2 50.8 r2 1.5, 0.75 kW delivered, gas 10.450 (20 s ago 10.400)
so today: e1 1.2, e2 0.8, e2 returned 0.5, gas 0.45; costs 0.30, 0.19 (0.24 - 0.05), 0.54; total 1.53.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.parse

import pytest
from falcon import testing
from helpers import TEST_KEY, write_lines

from dsmr_ts import __version__
from dsmr_ts.app import create_app
from dsmr_ts.config import PricePeriod
from dsmr_ts.datetimes import local_midnight
from dsmr_ts.influx.server import free_port
from dsmr_ts.influx.store import Store

UTC = dt.timezone.utc
KEY = {"X-AUTHKEY": TEST_KEY}
METER = "E-V5"
PRICES = [
    PricePeriod(
        start=dt.date(2000, 1, 1),
        electricity_delivered_1=0.25,
        electricity_delivered_2=0.30,
        electricity_returned_1=0.10,
        electricity_returned_2=0.10,
        gas=1.20,
        fixed_daily_cost=0.50,
    ),
    PricePeriod(
        start=dt.date(2099, 1, 1),
        electricity_delivered_1=9.0,
        electricity_delivered_2=9.0,
        electricity_returned_1=9.0,
        electricity_returned_2=9.0,
        gas=9.0,
        fixed_daily_cost=9.0,
    ),
]


def ns(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * 10**9


@pytest.fixture(scope="module")
def store(session_config):
    store = Store(session_config.influxdb)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    before_midnight = local_midnight(now, session_config.tz) - dt.timedelta(hours=1)
    newest = now - dt.timedelta(seconds=10)
    write_lines(
        store,
        [
            f"reading,meter={METER} electricity_delivered_1=100.0,electricity_delivered_2=50.0,electricity_returned_1=0.0,"
            f"electricity_returned_2=1.0,electricity_currently_delivered=0.1,electricity_currently_returned=0.0 "
            f"{ns(before_midnight)}",
            f"gas,meter={METER} extra_device_delivered=10.0 {ns(before_midnight)}",
            f"reading,meter={METER} electricity_delivered_1=101.2,electricity_delivered_2=50.8,electricity_returned_1=0.0,"
            f"electricity_returned_2=1.5,electricity_currently_delivered=0.75,electricity_currently_returned=0.0 "
            f"{ns(newest)}",
            f"gas,meter={METER} extra_device_delivered=10.4 {ns(now - dt.timedelta(seconds=20))}",
            f"gas,meter={METER} extra_device_delivered=10.45 {ns(newest)}",
            f"meter_statistics,meter={METER} electricity_tariff=2i,power_failure_count=3i {ns(newest)}",
        ],
    )
    yield store
    store.close()


@pytest.fixture
def client(config, store):
    config.prices = list(PRICES)
    return testing.TestClient(create_app(config, store))


def get(client, path, **params):
    response = client.simulate_get(path, headers=KEY, query_string=urllib.parse.urlencode(params))
    assert response.status_code == 200, response.text
    return response.json


def test_version(client):
    assert get(client, "/api/v2/application/version") == {"version": __version__}


def test_today_hand_computed(client, config):
    body = get(client, "/api/v2/consumption/today", meter=METER)
    assert body == {
        "day": dt.datetime.now(config.tz).date().isoformat(),
        "electricity1": "1.200",
        "electricity2": "0.800",
        "electricity1_returned": "0.000",
        "electricity2_returned": "0.500",
        "electricity1_cost": "0.30",
        "electricity2_cost": "0.19",
        "gas": "0.450",
        "gas_cost": "0.54",
        "total_cost": "1.53",
    }


def test_today_without_readings_says_so(client):
    body = get(client, "/api/v2/consumption/today", meter="E-V5-NONE")
    assert isinstance(body, str) and body.startswith("No electricity readings found for: ")


def test_electricity_live(client):
    body = get(client, "/api/v2/consumption/electricity-live", meter=METER)
    assert (body["currently_delivered"], body["currently_returned"]) == (750, 0)
    assert body["tariff_name"] == "Normal"
    assert body["cost_per_hour"] == "0.23"  # 0.75 kW x 0.30, half up
    assert body["timestamp"].endswith("Z")
    assert get(client, "/api/v2/consumption/electricity-live", meter="E-V5-NONE") == {}


def test_gas_live(client):
    body = get(client, "/api/v2/consumption/gas-live", meter=METER)
    assert (body["currently_delivered"], body["cost_per_interval"]) == ("0.050", "0.06")
    assert get(client, "/api/v2/consumption/gas-live", meter="E-V5-NONE") == {}


def test_energy_supplier_prices(client):
    body = get(client, "/api/v2/consumption/energy-supplier-prices")
    assert body["count"] == 2
    first, second = body["results"]
    assert (first["start"], first["end"], second["end"]) == ("2000-01-01", "2098-12-31", None)
    assert (first["electricity_delivered_2_price"], first["fixed_daily_cost"]) == ("0.30000", "0.50000")


def test_meter_statistics_get_and_patch(client, store):
    body = get(client, "/api/v2/datalogger/meter-statistics", meter=METER)
    assert (body["electricity_tariff"], body["power_failure_count"], body["latest_telegram"]) == (2, 3, None)
    assert body["rejected_telegrams"] == store.meters.rejected_count()
    response = client.simulate_patch(
        "/api/v2/datalogger/meter-statistics",
        headers=KEY,
        json={"meter": METER, "electricity_tariff": 1, "power_failure_count": "7", "dsmr_version": "50"},
    )
    assert response.status_code == 200, response.text
    assert (
        response.json["electricity_tariff"],
        response.json["power_failure_count"],
        response.json["dsmr_version"],
    ) == (1, 7, "50")
    bad = client.simulate_patch(
        "/api/v2/datalogger/meter-statistics", headers=KEY, json={"meter": "4\n", "electricity_tariff": -1, "tarif": 2}
    )
    assert bad.status_code == 400
    assert bad.json == {
        "electricity_tariff": ["Ensure this value is greater than or equal to 0."],
        "meter": ["Enter a meter id of 1 to 64 printable characters."],  # found by fuzzing (was 503)
        "tarif": ["Not a meter statistic you can set."],
    }


def test_monitoring_healthy_then_problems(client, config, store, tmp_path):
    now = dt.datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    store.compute.recompute(hour - dt.timedelta(hours=1), hour + dt.timedelta(hours=1), METER)
    store.housekeeping.repair()  # what the reader's housekeeping job does every 15 s
    # The default meter is the one that reported last: E-V5, 10 s ago.
    assert get(client, "/api/v2/application/monitoring") == {"problems": 0, "details": []}

    # A spool with waiting telegrams, and an InfluxDB that does not answer.
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "influxdb.spool").write_text('{"telegram": "/x", "received": "2026-01-01T00:00:00+00:00"}\n')
    config.reader.spool_dir = str(spool_dir)
    dead = dataclasses.replace(config.influxdb, url=f"http://127.0.0.1:{free_port()}")
    broken = testing.TestClient(create_app(config, Store(dead, timeout_ms=2000)))
    body = get(broken, "/api/v2/application/monitoring")
    assert body["problems"] == 2
    assert [d["source"] for d in body["details"]] == ["influxdb", "reader"]
    assert "InfluxDB is unreachable" in body["details"][0]["description"]


def test_monitoring_no_recent_readings(config, session_config):
    # A meter whose newest reading is old, made the default meter by giving it a name (config
    # `meters`): the session has many meters, and which reported last must not matter here.
    store = Store(session_config.influxdb, meters={"OLD-HOUSE": ["E-V5-OLD"]})
    write_lines(
        store,
        [
            "reading,meter=E-V5-OLD electricity_delivered_1=1.0,electricity_currently_delivered=0.1 "
            f"{ns(dt.datetime(2020, 1, 1, tzinfo=UTC))}"
        ],
    )
    try:
        body = get(testing.TestClient(create_app(config, store)), "/api/v2/application/monitoring")
    finally:
        store.close()
    assert body["problems"] == 1
    assert body["details"][0]["source"] == "datalogger"
    assert body["details"][0]["since"] == "2020-01-01T00:00:00Z"
