"""A meter replacement (config `meters`: a name for a meter and its replacements, ids oldest first):
every route reads the name as all of its ids in time order, statistics across the swap add up the
old meter's usage up to its last reading and the new meter's from its first position, nothing is
negative, and no hand work is needed. A position that goes down within one id is reported.

Meter `home` = E-OLD then E-NEW, on 2026-03-10 (winter, UTC+1), delivered tariff 1 in kWh:
  E-OLD  09:45Z 999.750   10:00Z 1000.000   10:15Z 1000.250   10:30Z 1000.500 (its last reading)
  E-NEW  10:45Z   0.010   10:55Z    0.110   11:10Z    0.210   11:40Z    0.410
Hours: 09 -> 0 (E-OLD's first reading); 10 -> 0.750 (E-OLD: 1000.500 - 999.750) + 0.100 (E-NEW
from its first position: 0.110 - 0.010) = 0.850; 11 -> 0.300. Day 2026-03-10: 1.150.
Gas: E-OLD 500.000 @10:00Z, E-NEW 0.500 @11:00Z: never a negative delivery at the swap.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from falcon import testing
from helpers import TEST_KEY

from dsmr_ts.app import create_app
from dsmr_ts.config import ConfigError, load_config
from dsmr_ts.influx.store import Store
from dsmr_ts.telegram import Reading

UTC = dt.timezone.utc
KEY = {"X-AUTHKEY": TEST_KEY}
NAMES = {"home": ["E-OLD", "E-NEW"]}
POSITIONS = [
    ("E-OLD", "09:45", 999.750, None),
    ("E-OLD", "10:00", 1000.000, ("10:00", 500.0)),
    ("E-OLD", "10:15", 1000.250, None),
    ("E-OLD", "10:30", 1000.500, None),
    ("E-NEW", "10:45", 0.010, None),
    ("E-NEW", "10:55", 0.110, None),
    ("E-NEW", "11:10", 0.210, ("11:00", 0.5)),
    ("E-NEW", "11:40", 0.410, None),
]


def at(clock: str) -> dt.datetime:
    hour, minute = map(int, clock.split(":"))
    return dt.datetime(2026, 3, 10, hour, minute, tzinfo=UTC)


def reading(meter: str, clock: str, d1: float, gas: tuple[str, float] | None) -> Reading:
    values: dict = {
        "electricity_delivered_1": d1,
        "electricity_delivered_2": 0.0,
        "electricity_returned_1": 0.0,
        "electricity_returned_2": 0.0,
        "electricity_currently_delivered": 1.0,
        "electricity_currently_returned": 0.0,
    }
    if gas:
        values.update(extra_device_timestamp=at(gas[0]), extra_device_delivered=gas[1])
    return Reading(at(clock), meter, values)


@pytest.fixture(scope="module")
def household(influxd_binary, tmp_path_factory):
    """An empty store of its own (the default meter must not depend on other tests' meters) with
    the swap above, and an app whose config names the meter."""
    from dsmr_ts.influx.bootstrap import bootstrap
    from dsmr_ts.influx.server import ManagedInfluxd, free_port

    folder = tmp_path_factory.mktemp("names")
    server = ManagedInfluxd(influxd_binary, folder / "influxd", port=free_port()).start()
    path = folder / "dsmr-ts.yaml"
    path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\n"
        f"influxdb:\n  managed: false\n  url: {server.url}\n"
        "meters:\n  home:\n    - E-OLD\n    - E-NEW\n"
    )
    bootstrap(load_config(path))
    config = load_config(path)
    store = Store(config.influxdb, timezone=config.timezone, meters=config.meters)
    store.writer.store_readings([reading(*row) for row in POSITIONS])
    store.compute.regenerate(at("00:00") - dt.timedelta(hours=1), at("00:00") + dt.timedelta(hours=23))
    yield config, store, testing.TestClient(create_app(config, store))
    store.close()
    server.stop()


def get(client, path: str, **params) -> dict:
    response = client.simulate_get(path, headers=KEY, params=params)
    assert response.status_code == 200, response.text
    return response.json


def test_the_name_is_the_default_meter_and_reads_every_id_in_time_order(household):
    config, store, client = household
    assert config.meters == NAMES
    assert store.meters.default() == "home"
    body = get(client, "/api/v2/datalogger/dsmrreading", limit=100)  # no meter: the named one
    assert body["count"] == 8
    assert [row["electricity_delivered_1"] for row in body["results"]] == [
        "999.750", "1000.000", "1000.250", "1000.500", "0.010", "0.110", "0.210", "0.410",
    ]  # fmt: skip
    newest = get(client, "/api/v2/datalogger/dsmrreading", meter="home", ordering="-timestamp", limit=1)
    assert newest["results"][0]["timestamp"] == "2026-03-10T11:40:00Z"
    one = get(client, "/api/v2/datalogger/dsmrreading", meter="E-OLD")  # an id still reads alone
    assert one["count"] == 4


def test_statistics_across_the_swap_add_up_and_lose_nothing(household):
    _, _, client = household
    hours = get(client, "/api/v2/statistics/hour", meter="home")["results"]
    assert [(h["hour_start"], h["electricity1"]) for h in hours] == [
        ("2026-03-10T09:00:00Z", "0.000"),
        ("2026-03-10T10:00:00Z", "0.850"),  # E-OLD 0.750 + E-NEW 0.100 from its first position
        ("2026-03-10T11:00:00Z", "0.300"),
    ]
    (day,) = get(client, "/api/v2/statistics/day", meter="home")["results"]
    assert (day["day"], day["electricity1"]) == ("2026-03-10", "1.150")
    assert day["electricity1_reading"] == "0.410"  # the new meter's position at the day's end
    assert day["electricity_reading_timestamp"] == "2026-03-10T11:40:00Z"
    assert get(client, "/api/v2/statistics/day", meter="home", day__gte="2026-03-10")["count"] == 1
    assert all(not value.startswith("-") for h in hours for value in (h["electricity1"], h["gas"] or "0"))


def test_consumption_routes_read_the_name(household):
    _, _, client = household
    gas = get(client, "/api/v2/consumption/gas", meter="home")["results"]
    assert [(g["read_at"], g["delivered"], g["currently_delivered"]) for g in gas] == [
        ("2026-03-10T10:00:00Z", "500.000", "0.000"),
        ("2026-03-10T11:00:00Z", "0.500", "0.000"),  # a new gas meter: never a negative delivery
    ]
    minutes = get(client, "/api/v2/consumption/electricity", meter="home", limit=100)
    assert minutes["count"] == 8
    quarters = get(client, "/api/v2/consumption/quarter-hour-peak-electricity", meter="home")
    assert (
        quarters["count"]
        == get(client, "/api/v2/consumption/quarter-hour-peak-electricity", meter="E-OLD")["count"]
        + get(client, "/api/v2/consumption/quarter-hour-peak-electricity", meter="E-NEW")["count"]
    )


def test_writes_for_the_name_go_to_its_newest_id(household):
    _, store, client = household
    posted = client.simulate_post(
        "/api/v2/datalogger/dsmrreading",
        headers=KEY,
        json={
            "timestamp": "2026-03-10T11:50:00Z",
            "electricity_currently_delivered": "1.0",
            "electricity_currently_returned": "0",
            "electricity_delivered_1": "0.420",
            "electricity_delivered_2": "0",
            "electricity_returned_1": "0",
            "electricity_returned_2": "0",
        },
    )
    assert posted.status_code == 201, posted.text
    assert get(client, "/api/v2/datalogger/dsmrreading", meter="E-NEW")["count"] == 5
    statistics = client.simulate_patch(
        "/api/v2/datalogger/meter-statistics", headers=KEY, json={"meter": "home", "electricity_tariff": 2}
    )
    assert statistics.json["electricity_tariff"] == 2
    assert store.meters.statistics("E-NEW")["electricity_tariff"] == 2


def test_a_position_that_goes_down_within_one_id_is_reported(household):
    config, store, _ = household
    now = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=3)
    drop = dataclasses.replace(config, meters={"shed": ["E-SHED"]})
    store_shed = Store(config.influxdb, timezone=config.timezone, meters=drop.meters)
    try:
        store_shed.writer.store_readings(
            [
                dataclasses.replace(reading("E-SHED", "10:00", 50.0, None), timestamp=now + dt.timedelta(minutes=10)),
                dataclasses.replace(reading("E-SHED", "10:00", 1.0, None), timestamp=now + dt.timedelta(minutes=20)),
            ]
        )
        store_shed.compute.recompute(now, now + dt.timedelta(hours=1), "E-SHED")
        hour = get(testing.TestClient(create_app(drop, store_shed)), "/api/v2/statistics/hour", meter="shed")
        assert hour["results"][0]["electricity1"] == "0.000"  # never negative usage
        problems = get(testing.TestClient(create_app(drop, store_shed)), "/api/v2/application/monitoring")
        described = [p["description"] for p in problems["details"] if p["source"] == "statistics"]
        assert any(text.startswith("The meter position of E-SHED went down") for text in described), problems
    finally:
        store_shed.close()


@pytest.mark.parametrize(
    "text, message",
    [
        ("meters:\n  home: E-OLD\n", "meters.home: expected a list of equipment ids"),
        ("meters:\n  home: []\n", "meters.home: expected a list of equipment ids"),
        ("meters:\n  home: [E-1]\n  shed: [E-1]\n", "meters.shed[0]: E-1 is also a meter of home"),
        ("meters:\n  home: [12345]\n", "meters.home[0]: expected an equipment id"),
    ],
)
def test_meter_names_are_checked_at_start(tmp_path, text, message):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path, create=False)
    assert message in str(error.value)


def test_every_worker_gives_the_same_default_meter_at_once(household, tmp_path):
    """The default meter (no config `meters` here) is asked of InfluxDB on every request: the
    moment another meter reports last, every gunicorn worker serves it (each used to keep its own
    choice for a minute)."""
    from helpers import start_api

    config, store, _ = household
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\n"
        f"influxdb:\n  managed: false\n  url: {config.influxdb.url}\n  token: {config.influxdb.token}\n"
        "server:\n  workers: 2\n"
    )
    api, url = start_api(load_config(path), tmp_path / "api.log")
    try:
        import requests

        def defaults() -> set[str]:
            meters = set()
            for _ in range(12):  # keep-alive off: each request may go to either worker
                body = requests.get(f"{url}/api/v2/application/monitoring", headers={**KEY, "Connection": "close"})
                assert body.status_code == 200
                latest = requests.get(f"{url}/api/v2/datalogger/dsmrreading", params={"ordering": "-timestamp",
                                      "limit": 1}, headers={**KEY, "Connection": "close"}).json()  # fmt: skip
                meters.add(latest["results"][0]["timestamp"])
            return meters

        before = defaults()
        assert len(before) == 1
        newest = dt.datetime.now(UTC).replace(microsecond=0)
        store.writer.store_readings([dataclasses.replace(reading("E-LATEST", "10:00", 5.0, None), timestamp=newest)])
        after = defaults()
        assert after == {newest.strftime("%Y-%m-%dT%H:%M:%SZ")}  # every answer, from both workers, at once
    finally:
        api.terminate()
        api.wait(30)
