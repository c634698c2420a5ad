"""One description of a reading: a field added to (a copy of) the table flows through the parser,
the line protocol, the v2 validators, the stored reading, GET, and the OpenAPI document."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from decimal import Decimal

import pytest
from falcon import testing
from helpers import TEST_KEY, stored_reading

from dsmr_ts.app import create_app
from dsmr_ts.fields import SCHEMA, Kind, Post, ReadingField
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.store import Store
from dsmr_ts.resources.openapi import openapi_document
from dsmr_ts.telegram import Reading, build_telegram, crc16_arc, parse_telegram

UTC = dt.timezone.utc
KEY = {"X-AUTHKEY": TEST_KEY}
POWER_FACTOR = ReadingField(
    "power_factor", obis=("1-0:13.7.0",), places=3, max_digits=4, description="power factor, all phases"
)
BASE = {
    "electricity_delivered_1": 10.0,
    "electricity_delivered_2": 20.0,
    "electricity_returned_1": 0.0,
    "electricity_returned_2": 0.0,
    "electricity_currently_delivered": 0.5,
    "electricity_currently_returned": 0.0,
}


def test_the_default_table_names_every_field_once_in_api_order():
    names = [f.name for f in SCHEMA.fields]
    assert len(names) == len(set(names))
    assert [f.name for f in SCHEMA.api_fields][:6] == [
        "electricity_delivered_1",
        "electricity_returned_1",
        "electricity_delivered_2",
        "electricity_returned_2",
        "electricity_currently_delivered",
        "electricity_currently_returned",
    ]
    assert SCHEMA.required == (
        "electricity_delivered_1",
        "electricity_returned_1",
        "electricity_delivered_2",
        "electricity_returned_2",
        "electricity_currently_delivered",
        "electricity_currently_returned",
    )
    assert SCHEMA.usage == {
        "electricity_delivered_1": "electricity1",
        "electricity_returned_1": "electricity1_returned",
        "electricity_delivered_2": "electricity2",
        "electricity_returned_2": "electricity2_returned",
        "extra_device_delivered": "gas",
    }
    assert SCHEMA.mbus_pairs == (
        ("extra_device_delivered", "extra_device_timestamp"),
        ("water_delivered", "water_timestamp"),
        ("heat_delivered", "heat_timestamp"),
    )
    # The stored mask numbers the rows by position: existing rows keep their bits when a row is added.
    extended = SCHEMA.with_fields(POWER_FACTOR)
    assert all(extended.bits[name] == SCHEMA.bits[name] for name in SCHEMA.bits)


def test_an_added_field_flows_through_parse_store_get_and_schema(config, session_config):
    schema = SCHEMA.with_fields(POWER_FACTOR)
    moment = dt.datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)
    telegram = build_telegram(Reading(moment, "E-FIELDS", {**BASE, "power_factor": 0.987}), schema=schema)
    assert "1-0:13.7.0(00.987)" in telegram  # written by the table's inverse
    # parse: the new OBIS code becomes the new field; the default table ignores it.
    assert parse_telegram(telegram, schema=schema).reading.values["power_factor"] == 0.987
    assert "power_factor" not in parse_telegram(telegram).reading.values
    # line protocol: a float field, in the present mask.
    reading = parse_telegram(telegram, schema=schema).reading
    line = lineprotocol.reading_line(reading, schema)
    assert "power_factor=0.987" in line
    assert f"present={sum(schema.bits[name] for name in reading.values)}i" in line

    store = Store(session_config.influxdb, schema=schema)
    try:
        client = testing.TestClient(create_app(config, store))
        posted = client.simulate_post(
            "/api/v1/datalogger/dsmrreading",
            body=urllib.parse.urlencode({"telegram": telegram}),
            headers={**KEY, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert posted.status_code == 201, posted.text
        body = client.simulate_get(
            "/api/v2/datalogger/dsmrreading",
            headers=KEY,
            query_string=urllib.parse.urlencode(
                {"meter": "E-FIELDS", "timestamp__gte": moment.isoformat(), "limit": 1}
            ),
        ).json
        assert body["results"][0]["power_factor"] == "0.987"
        # v2 POST: validated from the row (4 digits, 3 decimals), answered with it.
        v2 = {**BASE, "timestamp": (moment + dt.timedelta(seconds=1)).isoformat(), "meter": "E-FIELDS"}
        bad = client.simulate_post("/api/v2/datalogger/dsmrreading", headers=KEY, json={**v2, "power_factor": "12.345"})
        assert bad.status_code == 400
        assert bad.json == {"power_factor": ["Ensure that there are no more than 4 digits in total."]}
        good = client.simulate_post("/api/v2/datalogger/dsmrreading", headers=KEY, json={**v2, "power_factor": "0.5"})
        assert good.status_code == 201 and good.json["power_factor"] == "0.500"
        # schema: served by this app, checked against every response above (tests/openapi_check.py).
        document = client.simulate_get("/api/v2/schema", params={"format": "json"}).json
        assert (
            document["components"]["schemas"]["Reading"]["properties"]["power_factor"]["pattern"] == r"^-?\d+\.\d{3}$"
        )
        assert "power_factor" in document["components"]["schemas"]["ReadingInput"]["properties"]
        assert "power_factor" not in openapi_document()["components"]["schemas"]["Reading"]["properties"]
        assert POWER_FACTOR.mqtt_topic == "power_factor"
    finally:
        store.close()


def test_refused_and_hidden_fields_are_stored_but_not_in_the_v2_reading():
    water = SCHEMA.by_name["water_delivered"]
    assert water.post is Post.REFUSED and not water.in_api and water.mqtt_topic is None
    assert "water_delivered" not in openapi_document()["components"]["schemas"]["ReadingInput"]["properties"]
    assert SCHEMA.by_name["extra_device_timestamp"].kind is Kind.DATETIME


def _fluvius_telegram(meter_hex: str, mbus_lines: list[str]) -> str:
    """A Fluvius (e-MUCS) telegram of 2023-01-19 12:46:38 local with these M-Bus lines, valid CRC."""
    lines = [
        "/FLU5253769484_A",
        "",
        "0-0:96.1.4(50217)",
        f"0-0:96.1.1({meter_hex})",
        "0-0:1.0.0(230119124638W)",
        "1-0:1.8.1(004423.770*kWh)",
        "1-0:1.8.2(002607.237*kWh)",
        "1-0:2.8.1(001194.693*kWh)",
        "1-0:2.8.2(000755.554*kWh)",
        "0-0:96.14.0(0001)",
        "1-0:1.7.0(00.000*kW)",
        "1-0:2.7.0(00.204*kW)",
        *mbus_lines,
    ]
    body = "\r\n".join(lines) + "\r\n!"
    return f"{body}{crc16_arc(body.encode('latin-1')):04X}\r\n"


@pytest.mark.parametrize(
    "meter, mbus_lines, gas, water",
    [
        # Gas on channel 1 (device type 3), a water meter on channel 2 (device type 7).
        (
            "E-MBUS-WATER",
            [
                "0-1:24.1.0(003)",
                "0-1:24.2.3(230119124616W)(00734.607*m3)",
                "0-2:24.1.0(007)",
                "0-2:24.2.1(230119124500W)(00123.456*m3)",
            ],
            (734.607, "2023-01-19T11:46:16Z"),
            (123.456, dt.datetime(2023, 1, 19, 11, 45, tzinfo=UTC)),
        ),
        # An empty slot on channel 1, the gas meter on channel 2.
        (
            "E-MBUS-CH2",
            ["0-1:24.1.0()", "0-1:96.1.1()", "0-2:24.1.0(003)", "0-2:24.2.3(230119124616W)(00555.123*m3)"],
            (555.123, "2023-01-19T11:46:16Z"),
            None,
        ),
    ],
)
def test_mbus_devices_are_told_apart_by_their_type(config, session_config, meter, mbus_lines, gas, water):
    telegram = _fluvius_telegram(meter.encode().hex().upper(), mbus_lines)
    store = Store(session_config.influxdb)
    try:
        client = testing.TestClient(create_app(config, store))
        posted = client.simulate_post(
            "/api/v1/datalogger/dsmrreading",
            body=urllib.parse.urlencode({"telegram": telegram}),
            headers={**KEY, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert posted.status_code == 201, posted.text
        moment = dt.datetime(2023, 1, 19, 11, 46, 38, tzinfo=UTC)
        stored = stored_reading(store, meter, moment)
        assert stored["extra_device_delivered"] == gas[0]  # only a gas meter feeds the gas fields
        if water:
            assert (stored["water_delivered"], stored["water_timestamp"]) == water
        else:
            assert "water_delivered" not in stored
        body = client.simulate_get(
            "/api/v2/datalogger/dsmrreading",
            headers=KEY,
            query_string=urllib.parse.urlencode({"meter": meter, "limit": 1}),
        ).json
        (row,) = body["results"]
        assert (row["extra_device_delivered"], row["extra_device_timestamp"]) == (f"{gas[0]:.3f}", gas[1])
        assert "water_delivered" not in row  # DSMR-reader's v2 reading, unchanged
        gas_rows = client.simulate_get(
            "/api/v2/consumption/gas", headers=KEY, query_string=urllib.parse.urlencode({"meter": meter})
        ).json["results"]
        assert [(r["read_at"], r["delivered"]) for r in gas_rows] == [(gas[1], f"{gas[0]:.3f}")]
    finally:
        store.close()


@pytest.mark.parametrize("tz", [None, dt.timezone(dt.timedelta(hours=1))])
def test_a_page_of_readings_as_text_is_exactly_the_readings_as_json(tz):
    """Pages write readings as JSON text a column at a time (readings_text); it must say what
    json.dumps of reading_json says, for every sample telegram and where rounding is delicate."""
    import json

    from helpers import SAMPLE_TELEGRAMS, sample_telegram

    from dsmr_ts.formats import reading_json, readings_text

    moment = dt.datetime(2024, 3, 31, 1, 59, 59, tzinfo=dt.timezone.utc)
    readings = [parse_telegram(sample_telegram(name), now=moment).reading for name in SAMPLE_TELEGRAMS]
    readings.append(
        Reading(
            moment,
            "m",
            {
                "electricity_delivered_1": 0.0005,
                "electricity_delivered_2": -0.0004,
                "electricity_returned_1": 52185.7825309,
                "phase_voltage_l1": 229.95,
                "phase_power_current_l1": 7,
                "extra_device_timestamp": moment,
            },
        )
    )
    readings.append(Reading(moment, "m", {}))

    def stored(value):  # as a page reads it from InfluxDB: datetimes in Unix s
        return int(value.timestamp()) if isinstance(value, dt.datetime) else value

    times = [int(r.timestamp.timestamp()) for r in readings]
    columns = {spec.name: [stored(r.values.get(spec.name)) for r in readings] for spec in SCHEMA.api_fields}
    texts = readings_text(times, columns, tz)
    assert len(texts) == len(readings)
    for reading, text in zip(readings, texts):
        assert text == json.dumps(reading_json(reading.timestamp, reading.values, tz))
    assert '"electricity_delivered_1": "0.001"' in texts[-2] and '"electricity_delivered_2": "0.000"' in texts[-2]


def test_reading_lines_of_different_fields_each_say_their_own():
    """reading_line fills a template kept per set of fields: readings with other fields, NULLs or
    names outside the schema each get their own line, typed as the schema says."""
    moment = dt.datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)
    gas_time = dt.datetime(2024, 2, 3, 4, 0, tzinfo=UTC)
    bits = SCHEMA.bits
    full = Reading(
        moment,
        "E 1,a=b",
        {
            "electricity_delivered_1": Decimal("001234.567"),
            "phase_power_current_l1": 2,
            "extra_device_timestamp": gas_time,
            "extra_device_delivered": 5,
        },
    )
    assert lineprotocol.reading_line(full) == (
        "reading,meter=E\\ 1\\,a\\=b electricity_delivered_1=1234.567,phase_power_current_l1=2i,"
        f"extra_device_timestamp={int(gas_time.timestamp())}i,extra_device_delivered=5.0,"
        f"present={bits['electricity_delivered_1'] | bits['phase_power_current_l1'] | bits['extra_device_timestamp'] | bits['extra_device_delivered']}i"
        f" {int(moment.timestamp())}000000000"
    )
    # The same fields in another reading: the same template, its own values.
    later = Reading(moment + dt.timedelta(seconds=1), "E 1,a=b", {**full.values, "electricity_delivered_1": 0.1})
    assert "electricity_delivered_1=0.1," in lineprotocol.reading_line(later)
    # A NULL and a name the schema does not know are left out, and out of the mask.
    sparse = Reading(moment, "E2", {"electricity_delivered_1": 1.5, "phase_voltage_l2": None, "no_such_field": 7})
    assert lineprotocol.reading_line(sparse) == (
        f"reading,meter=E2 electricity_delivered_1=1.5,present={bits['electricity_delivered_1']}i"
        f" {int(moment.timestamp())}000000000"
    )
