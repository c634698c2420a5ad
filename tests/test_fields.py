"""One description of a reading: a field added to (a copy of) the table flows through the parser,
the line protocol, the v2 validators, the stored reading, GET, and the OpenAPI document."""

from __future__ import annotations

import datetime as dt
import urllib.parse

from falcon import testing

from dsmr_ts.app import create_app
from dsmr_ts.fields import SCHEMA, Kind, Post, ReadingField
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.store import Store
from dsmr_ts.resources.openapi import openapi_document
from dsmr_ts.telegram import Reading, build_telegram, parse_telegram
from helpers import TEST_KEY

UTC = dt.timezone.utc
KEY = {"X-AUTHKEY": TEST_KEY}
POWER_FACTOR = ReadingField("power_factor", obis=("1-0:13.7.0",), places=3, max_digits=4,
                            description="power factor, all phases")
BASE = {"electricity_delivered_1": 10.0, "electricity_delivered_2": 20.0, "electricity_returned_1": 0.0,
        "electricity_returned_2": 0.0, "electricity_currently_delivered": 0.5, "electricity_currently_returned": 0.0}


def test_the_default_table_names_every_field_once_in_api_order():
    names = [f.name for f in SCHEMA.fields]
    assert len(names) == len(set(names))
    assert [f.name for f in SCHEMA.api_fields][:6] == [
        "electricity_delivered_1", "electricity_returned_1", "electricity_delivered_2", "electricity_returned_2",
        "electricity_currently_delivered", "electricity_currently_returned"]
    assert SCHEMA.required == ("electricity_delivered_1", "electricity_returned_1", "electricity_delivered_2",
                               "electricity_returned_2", "electricity_currently_delivered",
                               "electricity_currently_returned")
    assert SCHEMA.usage == {"electricity_delivered_1": "electricity1", "electricity_returned_1": "electricity1_returned",
                            "electricity_delivered_2": "electricity2", "electricity_returned_2": "electricity2_returned",
                            "extra_device_delivered": "gas"}
    assert SCHEMA.mbus_pairs == (("extra_device_delivered", "extra_device_timestamp"),
                                 ("water_delivered", "water_timestamp"), ("heat_delivered", "heat_timestamp"))
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
        posted = client.simulate_post("/api/v1/datalogger/dsmrreading", body=urllib.parse.urlencode(
            {"telegram": telegram}), headers={**KEY, "Content-Type": "application/x-www-form-urlencoded"})
        assert posted.status_code == 201, posted.text
        body = client.simulate_get("/api/v2/datalogger/dsmrreading", headers=KEY, query_string=urllib.parse.urlencode(
            {"meter": "E-FIELDS", "timestamp__gte": moment.isoformat(), "limit": 1})).json
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
        assert document["components"]["schemas"]["Reading"]["properties"]["power_factor"]["pattern"] == r"^-?\d+\.\d{3}$"
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

