"""Ingest over HTTP (falcon.testing, real influxd): access rules, v1 telegrams, v2 readings."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import logging
import urllib.parse

import pytest
from falcon import testing
from helpers import SAMPLE_TELEGRAMS, TEST_KEY, flux, sample_telegram, stored_reading

from dsmr_ts.app import create_app
from dsmr_ts.influx.store import Store
from dsmr_ts.resources.access import MAX_FAILURES, WINDOW, FailedKeys
from dsmr_ts.telegram import Reading, build_telegram

UTC = dt.timezone.utc
V1 = "/api/v1/datalogger/dsmrreading"
V2 = "/api/v2/datalogger/dsmrreading"
KEY = {"X-AUTHKEY": TEST_KEY}
_unique = itertools.count()


def unique_moment() -> dt.datetime:
    """A timestamp no other test uses (readings of one meter+timestamp overwrite each other)."""
    return dt.datetime(2021, 6, 1, tzinfo=UTC) + dt.timedelta(minutes=next(_unique), seconds=7)


@pytest.fixture
def store(config):
    store = Store(config.influxdb)
    yield store
    store.close()


def make_client(config, store, **api) -> testing.TestClient:
    config = dataclasses.replace(config, api=dataclasses.replace(config.api, **api))
    return testing.TestClient(create_app(config, store))


@pytest.fixture
def client(config, store):
    return make_client(config, store)


def form(data: dict, headers: dict | None = None) -> dict:
    """simulate_post kwargs for an application/x-www-form-urlencoded body (as requests sends it)."""
    return {
        "body": urllib.parse.urlencode(data),
        "headers": {**(headers or {}), "Content-Type": "application/x-www-form-urlencoded"},
    }


def stored_fields(store: Store, meter: str, moment: dt.datetime) -> dict:
    """The reading stored at meter+moment, as dsmr-ts reads it back ({} when there is none)."""
    return stored_reading(store, meter, moment)


def a_reading(moment: dt.datetime, meter: str = "E-API-TEST", **values) -> Reading:
    base = {
        "electricity_delivered_1": 100.0,
        "electricity_delivered_2": 200.0,
        "electricity_returned_1": 1.0,
        "electricity_returned_2": 2.0,
        "electricity_currently_delivered": 0.5,
        "electricity_currently_returned": 0.0,
    }
    return Reading(timestamp=moment, meter=meter, values={**base, **values})


# --- access --------------------------------------------------------------------------------


def test_disabled_api_answers_like_dsmr_reader(config, store):
    client = make_client(config, store, enabled=False)
    v1 = client.simulate_post(V1, **form({"telegram": "x"}, KEY))
    assert (v1.status_code, v1.text, v1.headers["Allow"]) == (405, "API is disabled", "POST")
    v2 = client.simulate_get(V2, headers=KEY)
    assert (v2.status_code, v2.json) == (403, {"detail": "API is disabled"})
    assert client.simulate_get("/health").status_code == 200  # always public


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-AUTHKEY": "wrong"},
        {"X-AUTHKEY": TEST_KEY[:-1]},
        {"Authorization": f"Bearer {TEST_KEY}"},
        {"Authorization": f"Token  {TEST_KEY}"},
        {"Authorization": f"token {TEST_KEY}"},
        {"X-AUTHKEY": TEST_KEY.lower()},
    ],
)
def test_wrong_or_missing_key_is_403(client, headers):
    v1 = client.simulate_post(V1, **form({"telegram": "x"}, headers))
    assert (v1.status_code, v1.text) == (403, "Invalid auth key")
    v2 = client.simulate_post(V2, headers=headers, json={})
    assert (v2.status_code, v2.json) == (403, {"detail": "Invalid auth key"})


def test_both_key_header_forms_work(client):
    for headers in (KEY, {"Authorization": f"Token {TEST_KEY}"}):
        response = client.simulate_post(V2, headers=headers, json={})
        assert response.status_code == 400  # past access control, into validation


def test_other_methods_are_405_with_drf_body(client):
    response = client.simulate_put(V2, headers=KEY, json={})
    assert response.status_code == 405
    assert response.json == {"detail": 'Method "PUT" not allowed.'}


def test_key_never_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    client.simulate_post(V1, **form({"telegram": "x"}, {"X-AUTHKEY": "WRONGKEY-SECRET"}))
    client.simulate_post(V1, **form({"telegram": "not a telegram"}, KEY))
    assert TEST_KEY not in caplog.text and "WRONGKEY-SECRET" not in caplog.text


# --- v1 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLE_TELEGRAMS)
def test_v1_accepts_every_sample_telegram(client, store, name):
    telegram = sample_telegram(name).decode("latin-1")
    response = client.simulate_post(V1, **form({"telegram": telegram}, KEY))
    assert (response.status_code, response.text) == (201, "")


def test_v1_stores_reading_and_meter_statistics(client, store):
    telegram = sample_telegram("dsmr50_nl_1.txt").decode("latin-1")
    assert client.simulate_post(V1, **form({"telegram": telegram}, KEY)).status_code == 201
    fields = stored_fields(store, "K8EG004046395507", dt.datetime(2010, 12, 9, 10, 30, 20, tzinfo=UTC))
    assert fields["electricity_delivered_1"] == 123456.789
    assert fields["phase_power_current_l3"] == 3
    assert fields["extra_device_delivered"] == 12785.123
    assert fields["extra_device_timestamp"] == dt.datetime(2010, 12, 9, 10, 25, tzinfo=UTC)
    stats = store.meters.statistics("K8EG004046395507")
    assert stats["dsmr_version"] == "50" and stats["electricity_tariff"] == 2
    assert (stats["voltage_sag_count_l2"], stats["voltage_swell_count_l2"], stats["power_failure_count"]) == (1, 3, 4)


def test_v1_multipart_and_nul_bytes(client, store):
    moment = unique_moment()
    telegram = "\x00" + build_telegram(a_reading(moment, meter="E-MULTIPART")) + "\x00\x00"
    body = (f'--XyZ\r\nContent-Disposition: form-data; name="telegram"\r\n\r\n{telegram}\r\n--XyZ--\r\n').encode(
        "latin-1"
    )
    response = client.simulate_post(V1, headers={**KEY, "Content-Type": "multipart/form-data; boundary=XyZ"}, body=body)
    assert response.status_code == 201, response.text
    assert stored_fields(store, "E-MULTIPART", moment)["electricity_delivered_1"] == 100.0


@pytest.mark.parametrize("params", [{}, {"telegram": ""}, {"telegram": "\x00\x00"}, {"other": "x"}])
def test_v1_missing_field_is_invalid_data(client, params):
    response = client.simulate_post(V1, **form(params, KEY))
    assert (response.status_code, response.text) == (400, "Invalid data")


def test_v1_rejected_telegram_stores_nothing_and_is_counted(client, store):
    moment = unique_moment()
    good = build_telegram(a_reading(moment, meter="E-REJECT"))
    tampered = good.replace("1-0:1.8.1(000100.000*kWh)", "1-0:1.8.1(000999.000*kWh)")
    before = store.meters.rejected_count()
    response = client.simulate_post(V1, **form({"telegram": tampered}, KEY))
    assert response.status_code == 400
    assert response.text.startswith("CRC mismatch: telegram says ")
    assert stored_fields(store, "E-REJECT", moment) == {}
    assert store.meters.rejected_count() == before + 1


def test_v1_future_telegram_rejected(client, store):
    future = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(days=3)
    response = client.simulate_post(V1, **form({"telegram": build_telegram(a_reading(future, "E-FUT"))}, KEY))
    assert response.status_code == 400
    assert "more than 24 h in the future" in response.text
    assert stored_fields(store, "E-FUT", future) == {}


def test_v1_documentation_example_gives_the_crc_reason(client):
    from test_telegram import DOC_EXAMPLE

    response = client.simulate_post(V1, **form({"telegram": DOC_EXAMPLE}, KEY))
    assert (response.status_code, response.text) == (400, "CRC mismatch: telegram says 74B0, computed A97E")


# --- v2 POST -------------------------------------------------------------------------------

DOC_POST = {
    "electricity_currently_delivered": 1.500,
    "electricity_currently_returned": 0.025,
    "electricity_delivered_1": 2000,
    "electricity_delivered_2": 3000,
    "electricity_returned_1": 0,
    "electricity_returned_2": 0,
}


def test_v2_post_documentation_example_urlencoded(client, store):
    data = {**DOC_POST, "timestamp": "2017-04-15T00:00:00+02", "meter": "E-V2-DOC"}
    response = client.simulate_post(V2, **form({k: str(v) for k, v in data.items()}, KEY))
    assert response.status_code == 201, response.text
    assert response.json == {
        "id": 1492207200,
        "timestamp": "2017-04-14T22:00:00Z",
        "electricity_delivered_1": "2000.000",
        "electricity_returned_1": "0.000",
        "electricity_delivered_2": "3000.000",
        "electricity_returned_2": "0.000",
        "electricity_currently_delivered": "1.500",
        "electricity_currently_returned": "0.025",
        "phase_currently_delivered_l1": None,
        "phase_currently_delivered_l2": None,
        "phase_currently_delivered_l3": None,
        "extra_device_timestamp": None,
        "extra_device_delivered": None,
        "phase_currently_returned_l1": None,
        "phase_currently_returned_l2": None,
        "phase_currently_returned_l3": None,
        "phase_voltage_l1": None,
        "phase_voltage_l2": None,
        "phase_voltage_l3": None,
        "phase_power_current_l1": None,
        "phase_power_current_l2": None,
        "phase_power_current_l3": None,
    }
    assert list(response.json)[:13] == [
        "id",
        "timestamp",
        "electricity_delivered_1",
        "electricity_returned_1",
        "electricity_delivered_2",
        "electricity_returned_2",
        "electricity_currently_delivered",
        "electricity_currently_returned",
        "phase_currently_delivered_l1",
        "phase_currently_delivered_l2",
        "phase_currently_delivered_l3",
        "extra_device_timestamp",
        "extra_device_delivered",
    ]
    fields = stored_fields(store, "E-V2-DOC", dt.datetime(2017, 4, 14, 22, tzinfo=UTC))
    assert fields["electricity_currently_returned"] == 0.025


def test_v2_post_json_z_and_naive_local(client, store):
    moment = unique_moment()
    data = {
        **DOC_POST,
        "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "meter": "E-V2-JSON",
        "extra_device_timestamp": "2021-06-01T04:00:00",
        "extra_device_delivered": "12.5",
        "phase_voltage_l1": 231.4,
        "phase_power_current_l1": 12,
    }
    response = client.simulate_post(V2, headers=KEY, json=data)
    assert response.status_code == 201, response.text
    body = response.json
    assert body["timestamp"] == moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert body["extra_device_timestamp"] == "2021-06-01T02:00:00Z"  # naive = Europe/Amsterdam (CEST)
    assert (body["extra_device_delivered"], body["phase_voltage_l1"], body["phase_power_current_l1"]) == (
        "12.500",
        "231.4",
        12,
    )


def test_v2_post_multipart(client, store):
    moment = unique_moment()
    data = {**DOC_POST, "timestamp": moment.isoformat(), "meter": "E-V2-MULTI"}
    body = (
        "".join(f'--B\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in data.items())
        + "--B--\r\n"
    )
    response = client.simulate_post(
        V2, headers={**KEY, "Content-Type": "multipart/form-data; boundary=B"}, body=body.encode()
    )
    assert response.status_code == 201, response.text
    assert stored_fields(store, "E-V2-MULTI", moment)["electricity_delivered_2"] == 3000.0


def test_v2_post_errors_name_each_field(client, store):
    moment = unique_moment()
    data = {
        "timestamp": "yesterday",
        "electricity_currently_delivered": "abc",
        "electricity_delivered_1": "1.2345",
        "electricity_delivered_2": "12345678",
        "electricity_returned_1": None,
        "phase_power_current_l1": 1000,
        "phase_voltage_l1": "230.12",
        "meter": "E-V2-BAD",
    }
    response = client.simulate_post(V2, headers=KEY, json=data)
    assert response.status_code == 400
    assert response.json == {
        "timestamp": [
            "Datetime has wrong format. Use one of these formats instead: "
            "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
        ],
        "electricity_currently_delivered": ["A valid number is required."],
        "electricity_currently_returned": ["This field is required."],
        "electricity_delivered_1": ["Ensure that there are no more than 3 decimal places."],
        "electricity_delivered_2": ["Ensure that there are no more than 6 digits before the decimal point."],
        "electricity_returned_1": ["This field may not be null."],
        "electricity_returned_2": ["This field is required."],
        "phase_voltage_l1": ["Ensure that there are no more than 4 digits in total."],  # DRF checks this first
        "phase_power_current_l1": ["Ensure this value is less than or equal to 999."],
    }
    assert stored_fields(store, "E-V2-BAD", moment) == {}


@pytest.mark.parametrize("value", ["inf", "NaN", True, "12.5"])
def test_v2_post_current_must_be_a_finite_whole_number(client, value):
    data = {**DOC_POST, "timestamp": unique_moment().isoformat(), "meter": "E-V2-CUR", "phase_power_current_l1": value}
    response = client.simulate_post(V2, headers=KEY, json=data)
    assert response.status_code == 400
    assert response.json == {"phase_power_current_l1": ["A valid integer is required."]}


@pytest.mark.parametrize(
    "body, content_type, status",
    [
        (b"[1, 2]", "application/json", 400),
        (b"{not json", "application/json", 400),
        (b"<xml/>", "application/xml", 415),
        (b"x" * 70_000, "application/x-www-form-urlencoded", 413),
    ],
)
def test_v2_post_bad_bodies_are_4xx(client, body, content_type, status):
    response = client.simulate_post(V2, headers={**KEY, "Content-Type": content_type}, body=body)
    assert response.status_code == status
    assert "detail" in response.json


def test_v2_same_timestamp_twice_keeps_one_reading_the_second(client, store):
    moment = unique_moment()
    first = {**DOC_POST, "timestamp": moment.isoformat(), "meter": "E-V2-TWICE", "phase_currently_delivered_l1": 0.7}
    second = {**DOC_POST, "timestamp": moment.isoformat(), "meter": "E-V2-TWICE", "electricity_delivered_1": 2001}
    assert client.simulate_post(V2, headers=KEY, json=first).status_code == 201
    assert client.simulate_post(V2, headers=KEY, json=second).status_code == 201
    fields = stored_fields(store, "E-V2-TWICE", moment)
    assert fields["electricity_delivered_1"] == 2001.0
    assert "phase_currently_delivered_l1" not in fields  # nothing of the first reading survives
    rows = flux(
        store,
        "from(bucket: bucket) |> range(start: 2021-01-01T00:00:00Z, stop: 2022-01-01T00:00:00Z)"
        ' |> filter(fn: (r) => r._measurement == "reading" and r.meter == "E-V2-TWICE"'
        ' and r._field == "electricity_delivered_1") |> count()',
    )
    assert rows[0]["_value"] == 1
    # ... and the API serves exactly the second one (no request queried or deleted the first:
    # its phase value is still a field of the point, but not of the reading its mask describes).
    served = client.simulate_get(
        V2,
        headers=KEY,
        params={"meter": "E-V2-TWICE", "timestamp__gte": moment.isoformat(), "timestamp__lte": moment.isoformat()},
    ).json["results"]
    assert len(served) == 1 and served[0]["phase_currently_delivered_l1"] is None
    assert served[0]["electricity_delivered_1"] == "2001.000"


def test_a_page_of_readings_with_different_fields_shows_each_its_own(client):
    """A page is formatted a column at a time: each reading still shows only the fields it had."""
    first, second = unique_moment(), unique_moment()
    for moment, extra in (
        (first, {"phase_currently_delivered_l1": 0.7}),
        (second, {"phase_currently_delivered_l1": 0.5}),
        (second, {}),
    ):  # the second posted again without its phase
        body = {**DOC_POST, "timestamp": moment.isoformat(), "meter": "E-V2-MIXED", **extra}
        assert client.simulate_post(V2, headers=KEY, json=body).status_code == 201
    served = client.simulate_get(
        V2,
        headers=KEY,
        params={
            "meter": "E-V2-MIXED",
            "timestamp__gte": min(first, second).isoformat(),
            "timestamp__lte": max(first, second).isoformat(),
        },
    ).json["results"]
    phases = {row["id"]: row["phase_currently_delivered_l1"] for row in served}
    assert phases == {int(first.timestamp()): "0.700", int(second.timestamp()): None}


def test_v2_post_json_body_round_trips_through_json_module(client):
    moment = unique_moment()
    data = json.dumps({**DOC_POST, "timestamp": moment.isoformat(), "meter": "E-V2-RAW"})
    response = client.simulate_post(V2, headers={**KEY, "Content-Type": "application/json"}, body=data)
    assert response.status_code == 201


def test_guessing_the_key_is_refused_with_429_while_the_right_key_keeps_working(client):
    attacker, meter = "203.0.113.7", "192.0.2.10"
    for _ in range(MAX_FAILURES):
        assert client.simulate_get(V2, headers={"X-AUTHKEY": "guess"}, remote_addr=attacker).status_code == 403
    refused = client.simulate_get(V2, headers=KEY, remote_addr=attacker)  # even the right key: no oracle
    assert refused.status_code == 429 and 55 <= int(refused.headers["Retry-After"]) <= int(WINDOW)
    assert refused.json["detail"].startswith("Too many wrong keys; try again in ")
    v1 = client.simulate_post(V1, remote_addr=attacker, **form({"telegram": "x"}, {"X-AUTHKEY": "guess"}))
    assert v1.status_code == 429 and v1.text.startswith("Too many wrong keys")
    assert client.simulate_get(V2, remote_addr=attacker).status_code == 403  # no key: no guess, no lock-out
    assert client.simulate_get(V2, headers=KEY, remote_addr=meter).status_code == 200  # others unaffected


def test_wrong_keys_age_out():
    clock = [1000.0]
    failed = FailedKeys(clock=lambda: clock[0])
    for _ in range(MAX_FAILURES - 1):
        failed.failed("a")
    assert failed.retry_after("a") == 0  # one below the threshold
    failed.failed("a")
    assert failed.retry_after("a") == WINDOW
    clock[0] += 30
    assert failed.retry_after("a") == WINDOW - 30
    clock[0] += 30
    assert failed.retry_after("a") == 0 and failed.retry_after("b") == 0


def test_a_lock_out_limit_of_zero_never_locks_out(config, store):
    """api.wrong_keys_per_minute: 0 (many clients behind one untrusted proxy address)."""
    config.api.wrong_keys_per_minute = 0
    client = testing.TestClient(create_app(config, store))
    for _ in range(MAX_FAILURES * 3):
        assert client.simulate_get(V2, headers={"X-AUTHKEY": "guess"}).status_code == 403
    assert client.simulate_get(V2, headers=KEY).status_code == 200


def test_requests_without_a_key_never_count_as_guesses(client):
    """A keyless monitoring probe is refused, but never locks out the datalogger behind its address."""
    shared = "198.51.100.20"
    for _ in range(MAX_FAILURES * 3):
        assert client.simulate_get(V2, remote_addr=shared).status_code == 403
        assert client.simulate_post(V1, remote_addr=shared, **form({"telegram": "x"})).status_code == 403
    assert client.simulate_get(V2, headers=KEY, remote_addr=shared).status_code == 200


def test_either_key_header_being_right_authorises_as_in_dsmr_reader(client):
    for headers in (
        {"X-AUTHKEY": "wrong", "Authorization": f"Token {TEST_KEY}"},
        {"X-AUTHKEY": TEST_KEY, "Authorization": "Token wrong"},
    ):
        assert client.simulate_post(V2, headers=headers, json={}).status_code == 400  # past access control
    both_wrong = client.simulate_post(V2, headers={"X-AUTHKEY": "wrong", "Authorization": "Token wrong"}, json={})
    assert both_wrong.status_code == 403


def test_ordering_keeps_its_valid_terms_as_drf_does(client, store):
    meter = "E-ORDERING"
    first, second = unique_moment(), unique_moment()
    for moment in (first, second):
        store.writer.store_reading(Reading(moment, meter, {"electricity_delivered_1": 1.0,
                                                           "electricity_currently_delivered": 0.1}))  # fmt: skip
    ids = lambda ordering: [r["id"] for r in client.simulate_get(
        V2, headers=KEY, params={"meter": meter, "ordering": ordering}).json["results"]]  # fmt: skip
    newest_first = [int(second.timestamp()), int(first.timestamp())]
    assert ids("-timestamp,foo") == newest_first
    assert ids("foo, -timestamp") == newest_first
    assert ids("foo,bar") == newest_first[::-1]  # nothing valid: the default order
    assert ids("timestamp,-timestamp") == newest_first[::-1]  # the first valid term decides


def test_v2_gas_far_from_the_readings_time_is_refused_and_nothing_stored(client, store):
    moment = unique_moment()
    data = {
        "timestamp": moment.isoformat(),
        "electricity_currently_delivered": "0.5",
        "electricity_currently_returned": "0",
        "electricity_delivered_1": "1.000",
        "electricity_delivered_2": "2.000",
        "electricity_returned_1": "0",
        "electricity_returned_2": "0",
        "extra_device_delivered": "12.345",
        "extra_device_timestamp": "2010-01-01T00:00:00Z",
        "meter": "E-V2-GAS-CLOCK",
    }
    response = client.simulate_post(V2, headers=KEY, json=data)
    assert (response.status_code, response.json) == (
        400,
        {"extra_device_timestamp": ["Ensure this datetime is within 24 hours of timestamp."]},
    )
    assert stored_fields(store, "E-V2-GAS-CLOCK", moment) == {}
    data["extra_device_timestamp"] = (moment - dt.timedelta(minutes=5)).isoformat()
    assert client.simulate_post(V2, headers=KEY, json=data).status_code == 201


def test_meter_statistics_hold_the_latest_raw_telegram(client):
    texts = []
    for _ in range(2):
        reading = Reading(unique_moment(), "E-LATEST-TELEGRAM", {"electricity_delivered_1": 1.0,
                                                                  "electricity_currently_delivered": 0.25})  # fmt: skip
        texts.append(build_telegram(reading))
        assert client.simulate_post(V1, **form({"telegram": texts[-1]}, KEY)).status_code == 201
        body = client.simulate_get("/api/v2/datalogger/meter-statistics", headers=KEY,
                                   params={"meter": "E-LATEST-TELEGRAM"}).json  # fmt: skip
        assert body["latest_telegram"] == texts[-1]  # as sent, \r\n and CRC included
    assert texts[0] != texts[1]
