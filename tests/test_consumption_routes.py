"""consumption/electricity, consumption/gas, quarter-hour peaks and POST statistics/day against
real influxd, with hand-computed values.

Meter E-MIN, 2026-01-20 (winter, UTC+1), delivered positions d1 / d2 in kWh, power in kW:
  10:00:05Z  d1 100.000  d2 50.000  cd 0.5  V1 230.0  A1 2   gas 10.000 @ 10:00:00Z
  10:00:35Z  d1 100.010  d2 50.000  cd 0.7  V1 231.0  A1 3
  10:01:10Z  d1 100.020  d2 50.000  cd 1.0  V1 232.0  A1 4   gas 10.000 @ 10:00:00Z (the same value again)
  10:03:00Z  d1 100.050  d2 50.000  cd 2.0  V1 229.0  A1 9   gas 10.125 @ 10:02:30Z
  10:14:50Z  d1 100.200  d2 50.050  cd 1.0                  gas 10.100 @ 10:10:00Z (a new, lower gas meter)
  10:20:00Z  d1 100.250  d2 50.050  cd 1.0
  10:30:00Z  d1 100.300  d2 50.050  cd 1.0
  10:44:59Z  d1 100.300  d2 50.550  cd 1.0
Minutes (read_at = the minute's end): 10:01 (2 readings: d1 100.010, cd 0.6, V 230.5, A 2.5 -> 3),
10:02, 10:04, 10:15, 10:21, 10:31, 10:45.
Quarters: 10:00 first 10:00:05 (150.000) last 10:14:50 (150.250): 0.25 kWh x 3600 / 885 s = 1.017 kW;
10:15 has one reading: no row; 10:30: 0.5 x 3600 / 899 = 2.002 kW.
Gas: 10.000 @10:00 (first: 0), 10.125 @10:02:30 (0.125), 10.100 @10:10 (lower: 0, never negative).
"""

from __future__ import annotations

import datetime as dt
import urllib.parse

import pytest
from falcon import testing
from helpers import TEST_KEY, flux, run_task, sample_telegram, stored_reading
from influxdb_client import InfluxDBClient

from dsmr_ts.app import create_app
from dsmr_ts.influx.store import Store
from dsmr_ts.influx.tasks import QUARTER_TASK
from dsmr_ts.telegram import Reading, parse_telegram

UTC = dt.timezone.utc
KEY = {"X-AUTHKEY": TEST_KEY}
METER = "E-MIN"
DST_METER = "E-DST"


def z(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def reading(
    at: str,
    d1: float,
    d2: float,
    cd: float,
    volt: float | None = None,
    amp: int | None = None,
    gas: tuple[str, float] | None = None,
    meter: str = METER,
) -> Reading:
    values = {
        "electricity_delivered_1": d1,
        "electricity_delivered_2": d2,
        "electricity_returned_1": 0.0,
        "electricity_returned_2": 0.0,
        "electricity_currently_delivered": cd,
        "electricity_currently_returned": 0.0,
    }
    if volt is not None:
        values["phase_voltage_l1"] = volt
    if amp is not None:
        values["phase_power_current_l1"] = amp
    if gas:
        values.update(extra_device_timestamp=z(gas[0]), extra_device_delivered=gas[1])
    return Reading(timestamp=z(at), meter=meter, values=values)


SCENARIO = [
    reading("2026-01-20T10:00:05Z", 100.000, 50.000, 0.5, 230.0, 2, gas=("2026-01-20T10:00:00Z", 10.0)),
    reading("2026-01-20T10:00:35Z", 100.010, 50.000, 0.7, 231.0, 3),
    reading("2026-01-20T10:01:10Z", 100.020, 50.000, 1.0, 232.0, 4, gas=("2026-01-20T10:00:00Z", 10.0)),
    reading("2026-01-20T10:03:00Z", 100.050, 50.000, 2.0, 229.0, 9, gas=("2026-01-20T10:02:30Z", 10.125)),
    reading("2026-01-20T10:14:50Z", 100.200, 50.050, 1.0, gas=("2026-01-20T10:10:00Z", 10.1)),
    reading("2026-01-20T10:20:00Z", 100.250, 50.050, 1.0),
    reading("2026-01-20T10:30:00Z", 100.300, 50.050, 1.0),
    reading("2026-01-20T10:44:59Z", 100.300, 50.550, 1.0),
]
# The night the clocks go back (2026-10-25): local 02:00-03:00 happens twice, at 00Z and at 01Z.
DST_SCENARIO = [
    reading("2026-10-25T00:50:00Z", 100.0, 100.0, 1.0, meter=DST_METER),  # 02:50 CEST
    reading("2026-10-25T00:55:00Z", 100.1, 100.0, 1.0, meter=DST_METER),  # 1.2 kW
    reading("2026-10-25T01:50:00Z", 100.2, 100.0, 1.0, meter=DST_METER),  # 02:50 CET
    reading("2026-10-25T01:55:00Z", 100.2, 100.3, 1.0, meter=DST_METER),  # 3.6 kW
]


@pytest.fixture(scope="module")
def store(session_config):
    store = Store(session_config.influxdb)
    store.writer.store_readings(SCENARIO, False)
    store.writer.store_readings(DST_SCENARIO, False)
    # As the tasks and the repair job would: the hours, their minute and gas counts, the quarters.
    store.compute.regenerate(z("2026-01-20T00:00:00Z"), z("2026-01-21T00:00:00Z"))
    store.compute.regenerate(z("2026-10-24T00:00:00Z"), z("2026-10-26T00:00:00Z"))
    yield store
    store.close()


@pytest.fixture
def client(config, store):
    return testing.TestClient(create_app(config, store))


def get(client, path: str, **params) -> dict:
    response = client.simulate_get(path, headers=KEY, query_string=urllib.parse.urlencode(params))
    assert response.status_code == 200, response.text
    return response.json


FORM = "application/x-www-form-urlencoded"
ELECTRICITY = "/api/v2/consumption/electricity"
GAS = "/api/v2/consumption/gas"
PEAKS = "/api/v2/consumption/quarter-hour-peak-electricity"


# --- consumption/electricity ---------------------------------------------------------------------


def test_electricity_one_row_per_minute_hand_computed(client):
    body = get(client, ELECTRICITY, meter=METER)
    assert body["count"] == 7 and body["next"] is None
    assert [row["read_at"] for row in body["results"]] == [
        "2026-01-20T10:01:00Z",
        "2026-01-20T10:02:00Z",
        "2026-01-20T10:04:00Z",
        "2026-01-20T10:15:00Z",
        "2026-01-20T10:21:00Z",
        "2026-01-20T10:31:00Z",
        "2026-01-20T10:45:00Z",
    ]
    first = body["results"][0]
    assert first["id"] == int(z("2026-01-20T10:01:00Z").timestamp()) // 60
    assert first["delivered_1"] == "100.010"  # the minute's last position
    assert first["delivered_2"] == "50.000" and first["returned_1"] == "0.000"
    assert first["currently_delivered"] == "0.600"  # the mean of 0.5 and 0.7
    assert first["phase_voltage_l1"] == "230.5"
    assert first["phase_power_current_l1"] == 3  # 2.5 A, half up
    assert first["phase_voltage_l2"] is None  # the meter does not send it
    assert body["results"][2]["phase_power_current_l1"] == 9


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"read_at__gte": "2026-01-20T10:02:00Z"}, ["10:02", "10:04", "10:15", "10:21", "10:31", "10:45"]),
        ({"read_at__gte": "2026-01-20T10:01:30Z"}, ["10:02", "10:04", "10:15", "10:21", "10:31", "10:45"]),
        ({"read_at__lte": "2026-01-20T10:02:00Z"}, ["10:01", "10:02"]),
        ({"read_at__lte": "2026-01-20T10:01:59Z"}, ["10:01"]),
        ({"read_at__gte": "2026-01-20 11:02:00", "read_at__lte": "2026-01-20 11:15:00"}, ["10:02", "10:04", "10:15"]),
        ({"read_at__gte": "2026-01-20T10:05:00Z", "read_at__lte": "2026-01-20T10:14:00Z"}, []),
        ({"ordering": "-read_at", "limit": 2}, ["10:45", "10:31"]),
        ({"ordering": "-read_at", "limit": 2, "offset": 5}, ["10:02", "10:01"]),
        ({"limit": 2, "offset": 2}, ["10:04", "10:15"]),
    ],
)
def test_electricity_filters_ordering_and_pages(client, params, expected):
    body = get(client, ELECTRICITY, meter=METER, **params)
    assert [row["read_at"][11:16] for row in body["results"]] == expected
    if "limit" not in params:
        assert body["count"] == len(expected)
    else:
        assert body["count"] == 7


def test_electricity_pages_through_the_index_agree_with_a_brute_force_count(client, store):
    """Deep pages are located through minute_count in the hour rows; the same pages read directly."""
    direct = [
        get(client, ELECTRICITY, meter=METER, limit=3, offset=offset, ordering=order)
        for order in ("read_at", "-read_at")
        for offset in (0, 3, 6)
    ]
    store.minutes.direct_offset = 0
    try:
        indexed = [
            get(client, ELECTRICITY, meter=METER, limit=3, offset=offset, ordering=order)
            for order in ("read_at", "-read_at")
            for offset in (0, 3, 6)
        ]
    finally:
        store.minutes.direct_offset = 3600
    assert indexed == direct
    assert store.minutes.brute_force_count(METER, None, None) == 7


def test_a_late_reading_in_a_new_minute_counts_at_once(client, store):
    late = reading("2026-01-20T10:50:30Z", 100.4, 50.6, 1.0)
    store.writer.store_readings([late], False)  # into an indexed hour: it is marked, not yet repaired
    store.minutes.direct_offset = 0
    try:
        body = get(client, ELECTRICITY, meter=METER, offset=7)
    finally:
        store.minutes.direct_offset = 3600
    assert body["count"] == 8
    assert [row["read_at"] for row in body["results"]] == ["2026-01-20T10:51:00Z"]
    store.housekeeping.repair()  # the repaired hour now counts it in its index
    assert get(client, ELECTRICITY, meter=METER)["count"] == 8
    assert _hour_field(store, METER, "2026-01-20T10:00:00Z", "minute_count") == 8


def test_newest_first_after_a_meter_went_quiet_and_came_back(client, store):
    """A newest-first page of a meter whose last minute ended long ago is located once, then read from
    where its newest row was; a reading after that still comes first."""
    quiet = [
        reading(f"2026-02-01T08:{minute:02d}:10Z", 200 + minute / 100, 60.0, 1.0, meter="E-QUIET")
        for minute in range(5)
    ]
    store.writer.store_readings(quiet, False)
    store.compute.regenerate(z("2026-02-01T00:00:00Z"), z("2026-02-02T00:00:00Z"))
    pages = [get(client, ELECTRICITY, meter="E-QUIET", ordering="-read_at", limit=2) for _ in range(2)]
    assert pages[0] == pages[1]
    assert [row["read_at"] for row in pages[0]["results"]] == ["2026-02-01T08:05:00Z", "2026-02-01T08:04:00Z"]
    store.writer.store_readings([reading("2026-02-01T09:30:00Z", 201.0, 60.0, 1.0, meter="E-QUIET")], False)
    body = get(client, ELECTRICITY, meter="E-QUIET", ordering="-read_at", limit=2)
    assert body["count"] == 6
    assert [row["read_at"] for row in body["results"]] == ["2026-02-01T09:31:00Z", "2026-02-01T08:05:00Z"]
    readings = get(client, "/api/v2/datalogger/dsmrreading", meter="E-QUIET", ordering="-timestamp", limit=1)
    assert readings["count"] == 6 and readings["results"][0]["timestamp"] == "2026-02-01T09:30:00Z"


def _hour_field(store: Store, meter: str, hour: str, field: str) -> float | None:
    rows = flux(
        store,
        "from(bucket: stats) |> range(start: start, stop: stop)"
        ' |> filter(fn: (r) => r._measurement == "hour" and r.meter == meter and r._field == field)',
        {"start": z(hour), "stop": z(hour) + dt.timedelta(hours=1), "meter": meter, "field": field},
    )
    return rows[0]["_value"] if rows else None


def test_electricity_bad_filters_are_400(client):
    response = client.simulate_get(ELECTRICITY, headers=KEY, query_string="read_at__gte=yesterday&limit=-1")
    assert response.status_code == 400
    assert set(response.json) == {"read_at__gte", "limit"}


# --- consumption/gas -----------------------------------------------------------------------------


def test_gas_one_row_per_value_with_the_difference(client, store):
    body = get(client, GAS, meter=METER)
    assert body["count"] == 3
    assert body["results"] == [
        {
            "id": int(z("2026-01-20T10:00:00Z").timestamp()),
            "read_at": "2026-01-20T10:00:00Z",
            "delivered": "10.000",
            "currently_delivered": "0.000",
        },
        {
            "id": int(z("2026-01-20T10:02:30Z").timestamp()),
            "read_at": "2026-01-20T10:02:30Z",
            "delivered": "10.125",
            "currently_delivered": "0.125",
        },
        {
            "id": int(z("2026-01-20T10:10:00Z").timestamp()),
            "read_at": "2026-01-20T10:10:00Z",
            "delivered": "10.100",
            "currently_delivered": "0.000",  # a position that went down used no gas (never negative)
        },
    ]
    assert _hour_field(store, METER, "2026-01-20T10:00:00Z", "gas_count") == 3


def test_gas_page_differences_reach_before_the_page(client):
    body = get(client, GAS, meter=METER, ordering="-read_at", limit=1, offset=1)
    assert body["count"] == 3 and body["next"] and body["previous"]
    assert [(r["read_at"], r["currently_delivered"]) for r in body["results"]] == [("2026-01-20T10:02:30Z", "0.125")]
    body = get(client, GAS, meter=METER, read_at__gte="2026-01-20T10:01:00Z")
    assert [r["currently_delivered"] for r in body["results"]] == ["0.125", "0.000"]


def test_hourly_gas_is_booked_an_hour_earlier(client, store):
    meter = "E-DSMR4"
    store.writer.store_readings(
        [
            reading("2026-01-20T12:00:10Z", 1.0, 1.0, 0.1, gas=("2026-01-20T12:00:00Z", 5.0), meter=meter),
            reading("2026-01-20T13:00:10Z", 1.0, 1.0, 0.1, gas=("2026-01-20T13:00:00Z", 5.5), meter=meter),
        ],
        True,
    )
    body = get(client, GAS, meter=meter)
    assert [(r["read_at"], r["currently_delivered"]) for r in body["results"]] == [
        ("2026-01-20T11:00:00Z", "0.000"),
        ("2026-01-20T12:00:00Z", "0.500"),
    ]


# --- quarter-hour peaks --------------------------------------------------------------------------


def test_quarter_hour_peaks_hand_computed(client):
    body = get(client, PEAKS, meter=METER)
    assert body["count"] == 2  # the quarter with one reading has no row
    assert body["results"] == [
        {
            "id": int(z("2026-01-20T10:00:00Z").timestamp()) // 900,
            "read_at_start": "2026-01-20T10:00:05Z",
            "read_at_end": "2026-01-20T10:14:50Z",
            "average_delivered": "1.017",
        },
        {
            "id": int(z("2026-01-20T10:30:00Z").timestamp()) // 900,
            "read_at_start": "2026-01-20T10:30:00Z",
            "read_at_end": "2026-01-20T10:44:59Z",
            "average_delivered": "2.002",
        },
    ]


@pytest.mark.parametrize(
    "ordering, expected",
    [
        ("read_at_start", ["1.200", "3.600"]),
        ("-read_at_start", ["3.600", "1.200"]),
        ("average_delivered", ["1.200", "3.600"]),
        ("-average_delivered", ["3.600", "1.200"]),
    ],
)
def test_quarter_hour_peaks_over_the_autumn_dst_change(client, ordering, expected):
    body = get(client, PEAKS, meter=DST_METER, ordering=ordering)
    assert [row["average_delivered"] for row in body["results"]] == expected
    starts = {row["average_delivered"]: row["read_at_start"] for row in body["results"]}
    assert starts == {"1.200": "2026-10-25T00:50:00Z", "3.600": "2026-10-25T01:50:00Z"}


def test_quarter_hour_peaks_in_local_time_and_filtered(config, store):
    config.api.local_datetimes = True
    local = testing.TestClient(create_app(config, store))
    body = get(local, PEAKS, meter=DST_METER)
    assert [row["read_at_start"] for row in body["results"]] == [
        "2026-10-25T02:50:00+02:00",
        "2026-10-25T02:50:00+01:00",
    ]  # the same local time, twice
    body = get(local, PEAKS, meter=DST_METER, read_at_start__gte="2026-10-25T01:50:00Z")
    assert [row["average_delivered"] for row in body["results"]] == ["3.600"]
    body = get(local, PEAKS, meter=DST_METER, read_at_start__lte="2026-10-25T00:50:00Z")
    assert [row["average_delivered"] for row in body["results"]] == ["1.200"]
    body = get(
        local,
        PEAKS,
        meter=DST_METER,
        read_at_start__gte="2026-10-25T00:50:01Z",
        read_at_start__lte="2026-10-25T01:49:59Z",
    )
    assert body == {"count": 0, "next": None, "previous": None, "results": []}


def test_peak_pages_by_average(client, store):
    meter = "E-PEAKS"
    readings = []
    for quarter, kwh in enumerate([0.1, 0.4, 0.2, 0.4, 0.3]):  # two equal peaks: the earlier first
        start = z("2026-02-02T08:00:00Z") + dt.timedelta(minutes=15 * quarter)
        readings += [
            reading(start.isoformat(), 10.0 * quarter, 0.0, 1.0, meter=meter),
            reading((start + dt.timedelta(minutes=10)).isoformat(), 10.0 * quarter + kwh, 0.0, 1.0, meter=meter),
        ]
    store.writer.store_readings(readings, False)
    store.compute.regenerate(z("2026-02-02T00:00:00Z"), z("2026-02-03T00:00:00Z"))
    pages = [
        get(client, PEAKS, meter=meter, ordering="-average_delivered", limit=2, offset=offset) for offset in (0, 2, 4)
    ]
    assert [p["count"] for p in pages] == [5, 5, 5]
    assert [(r["read_at_start"][11:16], r["average_delivered"]) for p in pages for r in p["results"]] == [
        ("08:15", "2.400"),
        ("08:45", "2.400"),
        ("09:00", "1.800"),
        ("08:30", "1.200"),
        ("08:00", "0.600"),
    ]
    assert pages[0]["next"].endswith("limit=2&meter=E-PEAKS&offset=2&ordering=-average_delivered")


@pytest.mark.parametrize("ordering", ["read_at_start", "-read_at_start"])
@pytest.mark.parametrize(
    "bounds", [{}, {"read_at_start__gte": "2026-04-20T06:00:00Z", "read_at_start__lte": "2026-06-10T12:00:00Z"}]
)
def test_deep_peak_pages_located_by_span_give_what_offset_gives(client, store, monkeypatch, ordering, bounds):
    """A deep page in time order starts at the 30-day span of its first row; across several spans,
    at every offset, it must give what InfluxQL's own OFFSET gives."""
    meter = "E-PEAK-SPANS"
    if not get(client, PEAKS, meter=meter)["count"]:
        readings, position = [], 100.0
        for day in range(0, 120, 3):  # four months, three quarters on every third day
            for quarter in (24, 33, 70):
                start = z("2026-03-01T00:00:00Z") + dt.timedelta(days=day, minutes=15 * quarter)
                position += 0.1 + day / 1000
                readings += [
                    reading(start.isoformat(), position, 0.0, 1.0, meter=meter),
                    reading((start + dt.timedelta(minutes=14)).isoformat(), position + 0.05, 0.0, 1.0, meter=meter),
                ]
        store.writer.store_readings(readings, False)
        store.compute.regenerate(z("2026-03-01T00:00:00Z"), z("2026-07-01T00:00:00Z"))

    def pages(direct_offset: int) -> list[tuple[int, list[str]]]:
        monkeypatch.setattr("dsmr_ts.influx.statistics_pages.QUARTER_DIRECT_OFFSET", direct_offset)
        found = []
        for offset in (0, 1, 7, 20, 37, 38, 59, 80, 118, 119, 120, 500):
            body = get(client, PEAKS, meter=meter, ordering=ordering, limit=7, offset=offset, **bounds)
            found.append((body["count"], [row["read_at_start"] for row in body["results"]]))
        return found

    direct, located = pages(10**9), pages(0)
    assert direct[0][0] == (120 if not bounds else 51)
    assert located == direct
    assert any(rows for _, rows in direct[1:]) and not direct[-1][1]


def test_fluvius_demand_and_month_peak_are_stored_from_each_telegram(client, store):
    text = sample_telegram("fluvius_be_4.txt")
    response = client.simulate_post(
        "/api/v1/datalogger/dsmrreading",
        headers={**KEY, "Content-Type": FORM},
        body=urllib.parse.urlencode({"telegram": text.decode("latin-1")}),
    )
    assert response.status_code == 201, response.text
    meter = parse_telegram(text).reading.meter
    stored = stored_reading(store, meter, z("2023-02-01T14:50:56Z"))
    assert stored["electricity_average_demand"] == 0.078
    assert stored["electricity_month_peak"] == 1.566
    assert stored["electricity_month_peak_timestamp"] == z("2023-02-01T01:00:00Z")


# --- POST statistics/day -------------------------------------------------------------------------


DAY = {
    "day": "2019-03-04",
    "electricity1": "7.289",
    "electricity2": "1.5",
    "electricity1_returned": "0",
    "electricity2_returned": "0.250",
    "electricity1_cost": "1.30",
    "electricity2_cost": "0.40",
    "total_cost": "3.14",
    "gas": "3.047",
    "gas_cost": "1.84",
    "average_temperature": "4.3",
}


def test_post_day_statistics_then_read_it(client):
    response = client.simulate_post("/api/v2/statistics/day", headers=KEY, json={**DAY, "meter": "E-HISTORY"})
    assert response.status_code == 201, response.text
    created = response.json
    assert created == {
        "id": 20190304,
        "day": "2019-03-04",
        "total_cost": "3.14",
        "electricity1": "7.289",
        "electricity2": "1.500",
        "electricity1_returned": "0.000",
        "electricity2_returned": "0.250",
        "electricity1_cost": "1.30",
        "electricity2_cost": "0.40",
        "gas": "3.047",
        "gas_cost": "1.84",
        "lowest_temperature": None,
        "highest_temperature": None,
        "average_temperature": "4.3",
        "fixed_cost": "0.00",  # as posted (DSMR-reader's default 0)
        "electricity_reading_timestamp": None,  # a posted day has no readings
        "electricity1_reading": None,
        "electricity2_reading": None,
        "electricity1_returned_reading": None,
        "electricity2_returned_reading": None,
        "gas_reading_timestamp": None,
        "gas_reading": None,
    }
    body = get(client, "/api/v2/statistics/day", meter="E-HISTORY", day__gte="2019-03-04", day__lte="2019-03-04")
    assert body["results"] == [created]  # the posted costs, not the configured prices
    again = client.simulate_post("/api/v2/statistics/day", headers=KEY, json={**DAY, "meter": "E-HISTORY"})
    assert again.status_code == 400
    assert again.json == {"day": ["day statistics with this day already exists."]}


def test_post_day_statistics_as_a_form_without_optional_fields(client):
    form = {key: value for key, value in DAY.items() if key not in ("gas", "gas_cost", "average_temperature")}
    response = client.simulate_post(
        "/api/v2/statistics/day",
        headers={**KEY, "Content-Type": FORM},
        body=urllib.parse.urlencode({**form, "day": "2019-03-05", "meter": "E-HISTORY"}),
    )
    assert response.status_code == 201, response.text
    assert response.json["gas"] is None and response.json["gas_cost"] is None


@pytest.mark.parametrize(
    "change, errors",
    [
        ({"day": "04-03-2019"}, {"day": ["Date has wrong format. Use one of these formats instead: YYYY-MM-DD."]}),
        ({"day": None}, {"day": ["This field may not be null."]}),
        ({"electricity1": "1.2345"}, {"electricity1": ["Ensure that there are no more than 3 decimal places."]}),
        ({"total_cost": "much"}, {"total_cost": ["A valid number is required."]}),
        (
            {"average_temperature": "1234.5"},
            {"average_temperature": ["Ensure that there are no more than 4 digits in total."]},
        ),
        ({"lowest_temperature": "-123.4"}, {}),  # 3 digits before the point are fine: stored
    ],
)
def test_post_day_statistics_validation(client, change, errors):
    meter = "E-POST-" + "-".join(change)
    response = client.simulate_post(
        "/api/v2/statistics/day", headers=KEY, json={**DAY, "day": "2019-04-01", "meter": meter, **change}
    )
    if not errors:
        assert response.status_code == 201 and response.json["lowest_temperature"] == "-123.4"
        return
    assert response.status_code == 400
    assert response.json == errors
    assert get(client, "/api/v2/statistics/day", meter=meter)["count"] == 0  # nothing stored


def test_post_day_statistics_missing_fields(client):
    response = client.simulate_post("/api/v2/statistics/day", headers=KEY, json={"day": "2019-04-02"})
    assert response.status_code == 400
    assert set(response.json) == {
        "electricity1",
        "electricity2",
        "electricity1_returned",
        "electricity2_returned",
        "electricity1_cost",
        "electricity2_cost",
        "total_cost",
    }
    assert all(messages == ["This field is required."] for messages in response.json.values())


# --- the quarter task and the repair --------------------------------------------------------------


def _quarter_rows(store: Store, meter: str, start: dt.datetime, stop: dt.datetime) -> list[tuple]:
    rows = flux(
        store,
        "from(bucket: stats) |> range(start: start, stop: stop)"
        ' |> filter(fn: (r) => r._measurement == "quarter" and r.meter == meter)',
        {"start": start, "stop": stop, "meter": meter},
    )
    return sorted((r["_time"], r["_field"], r["_value"]) for r in rows)


def test_the_quarter_task_writes_what_regenerate_writes(session_config, store):
    start, stop = z("2026-01-20T10:00:00Z"), z("2026-01-20T11:00:00Z")
    expected = _quarter_rows(store, METER, start, stop)
    assert len(expected) == 6  # two quarters, three fields each
    settings = session_config.influxdb
    with InfluxDBClient(url=settings.url, token=settings.token, org=settings.org) as influx:
        influx.delete_api().delete(
            start, stop, f'_measurement="quarter" AND meter="{METER}"', bucket=settings.stats_bucket, org=settings.org
        )
    assert _quarter_rows(store, METER, start, stop) == []
    run_task(session_config, QUARTER_TASK, stop)  # a run covers the hour before its scheduled time
    assert _quarter_rows(store, METER, start, stop) == expected


def test_a_late_reading_repairs_its_quarter(client, store):
    meter = "E-LATE"
    store.writer.store_readings(
        [
            reading("2026-01-21T09:00:00Z", 1.0, 0.0, 1.0, meter=meter),
            reading("2026-01-21T09:10:00Z", 1.1, 0.0, 1.0, meter=meter),
        ],
        False,
    )
    store.compute.regenerate(z("2026-01-21T00:00:00Z"), z("2026-01-22T00:00:00Z"))
    assert [r["average_delivered"] for r in get(client, PEAKS, meter=meter)["results"]] == ["0.600"]
    store.writer.store_readings([reading("2026-01-21T09:14:00Z", 1.4, 0.0, 1.0, meter=meter)], False)
    assert store.housekeeping.repair() >= 1  # what `dsmr-ts reader` does within a minute
    row = get(client, PEAKS, meter=meter)["results"][0]
    assert (row["average_delivered"], row["read_at_end"]) == ("1.714", "2026-01-21T09:14:00Z")  # 0.4 x 3600 / 840


def test_a_repeated_gas_value_is_written_once(store):
    """DSMR 4 repeats the hourly gas value in every telegram for an hour, booked in the hour before
    (which has ended): only its first write stores it and marks that hour for the repair."""
    meter = "E-DSMR4-LIVE"
    now = dt.datetime.now(UTC).replace(microsecond=0)
    stamped = now.replace(minute=0, second=0)
    for seconds in (0, 1, 2):
        store.writer.store_readings(
            [
                reading(
                    (now + dt.timedelta(seconds=seconds)).isoformat(),
                    1.0,
                    1.0,
                    0.1,
                    gas=(stamped.isoformat(), 7.5),
                    meter=meter,
                )
            ],
            True,
        )
    booked = int((stamped - dt.timedelta(hours=1)).timestamp())
    (marks,) = store.client.influxql(
        [f'SELECT "hour" FROM repair_request WHERE meter = \'{meter}\' AND "hour" = {booked}']
    )
    assert sum(len(found.values) for found in marks) == 1
    assert store.readings.latest_gas(meter, count=5) == [(stamped - dt.timedelta(hours=1), 7.5)]
