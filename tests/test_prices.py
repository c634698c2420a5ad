"""Dynamic prices: the price formats, the contract's arithmetic, prices stored and corrected, and
costs per quarter hour against real influxd, every figure computed by hand.

The hand-checked day (meter E-DYN, area T-HAND, 2026-12-03, Europe/Amsterdam = UTC+1), tariff 2:
  contract: markup 0.02, energy tax 0.10, VAT 21 %, export markup -0.015, no netting
  delivered(m) = (m + 0.12) x 1.21     returned(m) = m - 0.015
  quarter (UTC)  usage d2 / r2   market        cost
  10:00          0.5 / 0         0.10 (15m)    0.5 x 0.2662                   =  0.13310
  10:15          0.3 / 0         0.20 (15m)    0.3 x 0.3872                   =  0.11616
  10:30          0   / 0.4      -0.05 (15m)   -0.4 x -0.065                   =  0.02600
  10:45          0.2 / 0         0.30 (15m)    0.2 x 0.5082                   =  0.10164
  11:00          0.1 / 0.6      -0.02 (60m)    0.1 x 0.121 - 0.6 x -0.035     =  0.03310
  11:15          0   / 0.5      -0.02 (60m)   -0.5 x -0.035                   =  0.01750
  12:00          0.2 / 0         0.25 (15m)    0.2 x 0.4477                   =  0.08954
  12:15          0.1 / 0         none, then 0.30 posted late: 0.1 x 0.5082   =  0.05082
  hours: 10 = 0.37690, 11 = 0.05060, 12 = unknown, then 0.14036
  day: electricity2_cost 0.56786 -> "0.57", electricity1_cost "0.00", gas "0.00",
       total = 0.57 + 0.50 fixed = "1.07" (null while 12:15 has no price)
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import subprocess
import threading
import urllib.parse
from decimal import Decimal
from pathlib import Path

import pytest
from falcon import testing
from helpers import TEST_KEY, dsmr_ts_command, env_without_overrides

from dsmr_ts.app import create_app
from dsmr_ts.config import ConfigError, DynamicContract, PricePeriod, load_config
from dsmr_ts.influx.bootstrap import bootstrap
from dsmr_ts.influx.store import Store
from dsmr_ts.mqtt.messages import discovery
from dsmr_ts.mqtt.publisher import MqttPublisher
from dsmr_ts.price_formats import PriceFormatError, parse_prices
from dsmr_ts.resources.application import MonitoringResource
from dsmr_ts.resources.context import ApiContext
from dsmr_ts.tariffs import (
    MarketPrice,
    PriceIndex,
    cheapest_window,
    delivered_price,
    quarter_hour_costs,
    returned_price,
)
from dsmr_ts.telegram import Reading

UTC = dt.timezone.utc
AMSTERDAM = dt.timezone(dt.timedelta(hours=1))
KEY = {"X-AUTHKEY": TEST_KEY}
FIXTURES = Path(__file__).parent / "prices"
CONTRACT = DynamicContract(area="T-HAND", markup=0.02, energy_tax=0.10, vat=21, export_markup=-0.015)
D = Decimal


def z(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def reading(at: str, meter: str, d1: float = 0.0, d2: float = 0.0, r2: float = 0.0) -> Reading:
    values = {
        "electricity_delivered_1": d1,
        "electricity_delivered_2": d2,
        "electricity_returned_1": 0.0,
        "electricity_returned_2": r2,
        "electricity_currently_delivered": 0.5,
        "electricity_currently_returned": 0.0,
    }
    return Reading(timestamp=z(at), meter=meter, values=values)


def get(client, path: str, **params):
    response = client.simulate_get(path, headers=KEY, query_string=urllib.parse.urlencode(params))
    assert response.status_code == 200, response.text
    return response.json


def post_prices(client, body):
    return client.simulate_post("/api/v2/prices", headers=KEY, json=body)


# --- formats ------------------------------------------------------------------------------------


def test_entsoe_document_parsed_to_the_exact_points_with_a03_gaps_filled():
    area, prices = parse_prices((FIXTURES / "entsoe-nl-2026-12-06.xml").read_bytes(), AMSTERDAM)
    assert area == "NL"
    # The finer (PT15M) series replaces the hourly one of the same day: 96 quarters, no hours.
    assert len(prices) == 96 and {p.seconds for p in prices} == {900}
    assert prices[0] == MarketPrice(z("2026-12-05T23:00:00Z"), 900, D("0.09512"))
    # Positions 2 and 3 were left out: they repeat position 1; 4 and 5 are given.
    assert [p.price for p in prices[:5]] == [D("0.09512"), D("0.09512"), D("0.09512"), D("0.088"), D("0.0805")]
    # 49 is negative; 50..52 repeat it; 53 is given.
    assert [p.price for p in prices[48:53]] == [D("-0.0124")] * 4 + [D("0.101")]
    assert prices[49].start == z("2026-12-06T11:15:00Z")
    assert prices[-1].start == z("2026-12-06T22:45:00Z")


def test_energyzero_and_csv_parsed():
    area, prices = parse_prices((FIXTURES / "energyzero-2026-12-06.json").read_bytes(), AMSTERDAM)
    assert area == "NL" and len(prices) == 24 and {p.seconds for p in prices} == {3600}
    assert prices[5] == MarketPrice(z("2026-12-06T05:00:00Z"), 3600, D("-0.01234"))
    area, prices = parse_prices((FIXTURES / "prices.csv").read_bytes(), AMSTERDAM)
    assert area is None
    # A start without an offset is local time (the config's time zone).
    assert [(p.start, p.seconds, p.price) for p in prices] == [
        (z("2026-12-05T23:00:00Z"), 900, D("0.1010")),
        (z("2026-12-05T23:15:00Z"), 900, D("0.1020")),
        (z("2026-12-05T23:30:00Z"), 900, D("-0.0030")),
        (z("2026-12-05T23:45:00Z"), 900, D("0.1040")),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<Publication_MarketDocument><TimeSeries></TimeSeries>", "not well-formed XML"),
        (
            b"<Acknowledgement_MarketDocument><Reason><text>No matching data found</text></Reason>"
            b"</Acknowledgement_MarketDocument>",
            "ENTSO-E answered with no prices: No matching data found",
        ),
        (b'{"Prices": []}', 'a list "Prices"'),
        (b"start,price\n2026-12-06T00:00:00Z,abc\n", "line 2: 'abc' is not a number"),
        (b"start,price\n2026-12-06T00:00:00Z,0.1\n2026-12-06T00:20:00Z,0.1\n", "every 15 or 60 minutes"),
        (b"when,what\n", "expected the header start,price"),
    ],
)
def test_bad_price_files_say_what_is_wrong(data, message):
    with pytest.raises(PriceFormatError, match=message.replace("(", r"\(")):
        parse_prices(data, AMSTERDAM)


# --- the contract's arithmetic ------------------------------------------------------------------


def test_all_in_and_export_prices():
    assert delivered_price(CONTRACT, D("0.10")) == D("0.2662")
    assert returned_price(CONTRACT, D("-0.05")) == D("-0.065")
    netting = DynamicContract(area="X", markup=0.02, energy_tax=0.10, vat=21, export_markup=-0.015, netting=True)
    assert returned_price(netting, D("-0.05")) == delivered_price(netting, D("-0.05")) == D("0.0847")


def usage(d2: str = "0", r2: str = "0") -> dict[str, Decimal]:
    return {"electricity1": D(0), "electricity2": D(d2), "electricity1_returned": D(0), "electricity2_returned": D(r2)}


HAND_QUARTERS = [
    (z("2026-12-03T10:00:00Z"), usage("0.5")),
    (z("2026-12-03T10:15:00Z"), usage("0.3")),
    (z("2026-12-03T10:30:00Z"), usage(r2="0.4")),
    (z("2026-12-03T10:45:00Z"), usage("0.2")),
    (z("2026-12-03T11:00:00Z"), usage("0.1", "0.6")),
    (z("2026-12-03T11:15:00Z"), usage(r2="0.5")),
]
HAND_PRICES = [
    MarketPrice(z("2026-12-03T10:00:00Z"), 900, D("0.10")),
    MarketPrice(z("2026-12-03T10:15:00Z"), 900, D("0.20")),
    MarketPrice(z("2026-12-03T10:30:00Z"), 900, D("-0.05")),
    MarketPrice(z("2026-12-03T10:45:00Z"), 900, D("0.30")),
    MarketPrice(z("2026-12-03T11:00:00Z"), 3600, D("-0.02")),
]


def test_quarter_costs_netting_off_and_on():
    hours = quarter_hour_costs(HAND_QUARTERS, CONTRACT, PriceIndex(HAND_PRICES))
    assert hours[z("2026-12-03T10:00:00Z")].electricity2_cost == D("0.37690")
    assert hours[z("2026-12-03T11:00:00Z")].electricity2_cost == D("0.05060")
    netting = DynamicContract(area="X", markup=0.02, energy_tax=0.10, vat=21, export_markup=-0.015, netting=True)
    hours = quarter_hour_costs(HAND_QUARTERS, netting, PriceIndex(HAND_PRICES))
    # 10:30: -0.4 x 0.0847; 11:00: (0.1 - 0.6) x 0.121; 11:15: -0.5 x 0.121
    assert hours[z("2026-12-03T10:00:00Z")].electricity2_cost == D("0.31702")
    assert hours[z("2026-12-03T11:00:00Z")].electricity2_cost == D("-0.12100")
    assert all(hour.unpriced_quarters == 0 for hour in hours.values())


def test_cheapest_window():
    prices = [
        MarketPrice(z("2026-12-06T00:00:00Z") + dt.timedelta(minutes=15 * i), 900, D(p))
        for i, p in enumerate(["0.30", "0.10", "0.05", "0.20", "0.01", "0.50"])
    ]
    assert cheapest_window(prices, 1800) == (z("2026-12-06T00:15:00Z"), D("0.075"))  # 0.10 + 0.05
    assert cheapest_window(prices, 900) == (z("2026-12-06T01:00:00Z"), D("0.01"))
    assert cheapest_window(prices, 7200) is None  # no two hours of prices
    # A gap: no window runs across it.
    gapped = [*prices[:2], *prices[3:]]
    assert cheapest_window(gapped, 2700) == (z("2026-12-06T00:45:00Z"), D("0.2366666666666666666666666667"))


def test_config_checks_a_dynamic_period(tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    base = "api:\n  key: " + TEST_KEY + "\nprices:\n  - start: 2026-01-01\n"
    path.write_text(base + "    dynamic:\n      area: nl\n      vat: 21\n")
    with pytest.raises(ConfigError, match=r"prices\[0\]\.dynamic\.area: name the market area"):
        load_config(path, create=False)
    path.write_text(base + "    electricity_delivered_1: 0.25\n    dynamic:\n      area: NL\n")
    with pytest.raises(ConfigError, match=r"prices\[0\]\.electricity_delivered_1: a dynamic period prices"):
        load_config(path, create=False)
    path.write_text(base + "    dynamic:\n      area: NL\n      vat: 210\n")
    with pytest.raises(ConfigError, match=r"prices\[0\]\.dynamic\.vat: expected a percentage"):
        load_config(path, create=False)
    path.write_text(
        base + "    dynamic:\n      area: NL\n      markup: 0.02\n    gas: 1.20\n    capacity_tariff: 41.3\n"
    )
    period = load_config(path, create=False).prices[0]
    assert period.dynamic == DynamicContract(area="NL", markup=0.02) and period.capacity_tariff == 41.3


# --- against real influxd ------------------------------------------------------------------------


HAND_METER = "E-DYN"
HAND_READINGS = [
    reading("2026-12-03T09:59:50Z", HAND_METER, 1000.0, 2000.0, 500.0),
    reading("2026-12-03T10:14:50Z", HAND_METER, 1000.0, 2000.5, 500.0),
    reading("2026-12-03T10:29:50Z", HAND_METER, 1000.0, 2000.8, 500.0),
    reading("2026-12-03T10:44:50Z", HAND_METER, 1000.0, 2000.8, 500.4),
    reading("2026-12-03T10:59:50Z", HAND_METER, 1000.0, 2001.0, 500.4),
    reading("2026-12-03T11:14:50Z", HAND_METER, 1000.0, 2001.1, 501.0),
    reading("2026-12-03T11:29:50Z", HAND_METER, 1000.0, 2001.1, 501.5),
    reading("2026-12-03T12:14:50Z", HAND_METER, 1000.0, 2001.3, 501.5),
    reading("2026-12-03T12:29:50Z", HAND_METER, 1000.0, 2001.4, 501.5),
]
HAND_PERIODS = [PricePeriod(start=dt.date(2026, 11, 1), dynamic=CONTRACT, gas=1.20, fixed_daily_cost=0.50)]


def quarter(start: str, price: str) -> dict[str, str]:
    return {"start": start, "price": price}


@pytest.fixture
def hand_day(session_config, config):
    config.prices = list(HAND_PERIODS)
    store = Store.for_config(config)
    client = testing.TestClient(create_app(config, store))
    store.writer.store_readings(HAND_READINGS, False)
    for body in (
        {
            "area": "T-HAND",
            "resolution": "PT15M",
            "prices": [
                quarter("2026-12-03T10:00:00Z", "0.10"),
                quarter("2026-12-03T10:15:00Z", "0.20"),
                quarter("2026-12-03T10:30:00Z", "-0.05"),
                quarter("2026-12-03T10:45:00Z", "0.30"),
                quarter("2026-12-03T12:00:00Z", "0.25"),
                quarter("2026-12-03T12:30:00Z", "0.25"),
            ],
        },
        {"area": "T-HAND", "resolution": "PT60M", "prices": [quarter("2026-12-03T11:00:00Z", "-0.02")]},
    ):
        response = post_prices(client, body)
        assert response.status_code == 201, response.text
    store.compute.recompute(z("2026-12-03T09:00:00Z"), z("2026-12-03T13:00:00Z"), HAND_METER)
    yield store, client
    store.close()


def day_row(client, meter: str, day: str) -> dict:
    body = get(client, "/api/v2/statistics/day", meter=meter, day__gte=day, day__lte=day)
    assert body["count"] == 1, body
    return body["results"][0]


def test_hand_checked_day_and_a_late_price_repairs_it(hand_day):
    store, client = hand_day
    hours = {
        row["_time"]: row
        for row in store.client.flux(
            "from(bucket: stats) |> range(start: 2026-12-03T09:00:00Z, stop: 2026-12-03T13:00:00Z)"
            ' |> filter(fn: (r) => r._measurement == "hour" and r.meter == "E-DYN")'
            ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
        )
    }
    assert round(hours[z("2026-12-03T10:00:00Z")]["electricity2_cost"], 5) == 0.3769
    assert round(hours[z("2026-12-03T11:00:00Z")]["electricity2_cost"], 5) == 0.0506
    assert hours[z("2026-12-03T12:00:00Z")]["unpriced_quarters"] == 1.0
    row = day_row(client, HAND_METER, "2026-12-03")
    assert row["electricity2"] == "1.400" and row["electricity2_returned"] == "1.500"
    # A quarter hour with usage has no price: the costs are unknown, not made up.
    assert (row["electricity1_cost"], row["electricity2_cost"], row["total_cost"]) == (None, None, None)
    assert row["gas_cost"] == "0.00"
    monitoring = MonitoringResource(ApiContext(store=store, tz=AMSTERDAM, prices=HAND_PERIODS), FIXTURES)
    assert [p[:2] for p in monitoring.problems(HAND_METER) if p[0] == "prices"] == [
        (
            "prices",
            "1 quarter hours with usage have no market price, so their costs are unknown: import or post the prices"
            " (`dsmr-ts prices import`, POST /api/v2/prices)",
        ),
        ("prices", "No market price of T-HAND for now: import or post the day-ahead prices"),
    ]
    # The price arrives late: the repair job recomputes the hour it prices, and the day with it.
    response = post_prices(
        client, {"area": "T-HAND", "resolution": "PT15M", "prices": [quarter("2026-12-03T12:15:00Z", "0.30")]}
    )
    assert response.status_code == 201 and response.json["stored"] == 1
    store.housekeeping.repair()
    row = day_row(client, HAND_METER, "2026-12-03")
    assert (row["electricity1_cost"], row["electricity2_cost"], row["total_cost"]) == ("0.00", "0.57", "1.07")
    assert [p[1] for p in monitoring.problems(HAND_METER) if p[0] == "prices"] == [
        "No market price of T-HAND for now: import or post the day-ahead prices"
    ]


def test_today_and_power_now_cost_at_the_current_market_price(session_config, config, tmp_path):
    """Market 0.10 all day, no markup, tax or VAT: today's electricity costs its kWh x 0.10, and
    0.5 kW now costs 0.05 an hour."""
    area, meter = "T-LIVE", "E-DYN-LIVE"
    config.prices = [
        PricePeriod(start=dt.date(2026, 1, 1), dynamic=DynamicContract(area=area, vat=0), capacity_tariff=40.0)
    ]
    store = Store.for_config(config)
    client = testing.TestClient(create_app(config, store))
    now = dt.datetime.now(UTC).replace(microsecond=0)
    midnight = dt.datetime.combine(now.astimezone(config.tz).date(), dt.time(), config.tz).astimezone(UTC)
    stamp = lambda moment: moment.isoformat().replace("+00:00", "Z")
    store.writer.store_readings(
        [
            reading(stamp(midnight - dt.timedelta(seconds=60)), meter, d1=10.0),
            reading(stamp(now - dt.timedelta(seconds=120)), meter, d1=10.3),
            reading(stamp(now - dt.timedelta(seconds=60)), meter, d1=10.5),
        ],
        False,
    )
    first = midnight - dt.timedelta(hours=1)
    current = (now - first) // dt.timedelta(minutes=15)  # the quarter hour of now; the next one costs 0.20
    prices = [
        quarter(stamp(first + dt.timedelta(minutes=15 * i)), "0.20" if i == current + 1 else "0.10") for i in range(108)
    ]
    assert post_prices(client, {"area": area, "resolution": "PT15M", "prices": prices}).status_code == 201
    today = get(client, "/api/v2/consumption/today", meter=meter)
    assert today["electricity1"] == "0.500" or now - midnight < dt.timedelta(minutes=3)
    assert today["electricity1_cost"] == str((Decimal(today["electricity1"]) * D("0.10")).quantize(D("0.01")))
    assert today["electricity2_cost"] == "0.00" and today["total_cost"] == today["electricity1_cost"]
    live = get(client, "/api/v2/consumption/electricity-live", meter=meter)
    assert live["cost_per_hour"] == "0.05"
    # The page: the price now, and the capacity tariff on the month's peak (none yet: the 2.5 kW
    # minimum, 2.5 x 40 / 12 = 8.33 a month).
    page = client.simulate_get("/web/data/live", params={"meter": meter}).json
    assert (page["price"], page["cost_per_hour"], page["capacity_cost"]) == ("0.10000", "0.05", "8.33")
    # MQTT (source prices): the all-in price now and next, for Home Assistant.
    config.reader.spool_dir = str(tmp_path)
    published = {m.topic: m.payload for m in MqttPublisher(config, store)._prices(now)}
    assert published == {
        "dsmr/prices/current": "0.10000",
        "dsmr/prices/next": "0.20000",
        "dsmr/prices/current_market": "0.10000",
        "dsmr/prices/current_export": "0.10000",
    }
    sensors = {m.topic: json.loads(m.payload) for m in discovery("homeassistant", "dsmr", meter, ["prices"])}
    price_now = sensors[f"homeassistant/sensor/dsmr_ts_{meter}/price_current/config"]
    assert (price_now["unit_of_measurement"], price_now["device_class"]) == ("EUR/kWh", "monetary")
    assert "state_class" not in price_now  # Home Assistant's monetary sensors take none but total
    store.close()


def test_prices_posted_twice_change_nothing_and_a_correction_replaces(hand_day):
    _, client = hand_day
    body = {"area": "T-HAND", "resolution": "PT15M", "prices": [quarter("2026-12-03T10:00:00Z", "0.10")]}
    assert post_prices(client, body).json == {"area": "T-HAND", "stored": 0, "unchanged": 1}
    listed = get(
        client, "/api/v2/prices", area="T-HAND", start__gte="2026-12-03T10:00:00Z", start__lte="2026-12-03T11:00:00Z"
    )
    assert [
        (p["start"], p["resolution"], p["market_price"], p["price"], p["export_price"]) for p in listed["results"]
    ] == [
        ("2026-12-03T10:00:00Z", "PT15M", "0.10000", "0.26620", "0.08500"),
        ("2026-12-03T10:15:00Z", "PT15M", "0.20000", "0.38720", "0.18500"),
        ("2026-12-03T10:30:00Z", "PT15M", "-0.05000", "0.08470", "-0.06500"),
        ("2026-12-03T10:45:00Z", "PT15M", "0.30000", "0.50820", "0.28500"),
        ("2026-12-03T11:00:00Z", "PT60M", "-0.02000", "0.12100", "-0.03500"),
    ]
    # The hour 11:00 corrected to quarters: the newest prices hold.
    corrected = {
        "area": "T-HAND",
        "resolution": "PT15M",
        "prices": [quarter("2026-12-03T11:00:00Z", "0.01"), quarter("2026-12-03T11:30:00Z", "0.03")],
    }
    assert post_prices(client, corrected).json["stored"] == 2
    listed = get(
        client, "/api/v2/prices", area="T-HAND", start__gte="2026-12-03T11:00:00Z", start__lte="2026-12-03T11:45:00Z"
    )
    assert [(p["start"], p["market_price"]) for p in listed["results"]] == [
        ("2026-12-03T11:00:00Z", "0.01000"),
        ("2026-12-03T11:15:00Z", "-0.02000"),
        ("2026-12-03T11:30:00Z", "0.03000"),
        ("2026-12-03T11:45:00Z", "-0.02000"),
    ]
    cheapest = get(
        client,
        "/api/v2/prices/cheapest",
        area="T-HAND",
        duration="PT30M",
        start__gte="2026-12-03T10:00:00Z",
        start__lte="2026-12-03T12:00:00Z",
    )
    # By the all-in price: 11:00 + 11:15 = (0.01 + -0.02) / 2 + 0.12, x 1.21
    assert cheapest == {
        "area": "T-HAND",
        "start": "2026-12-03T11:00:00Z",
        "end": "2026-12-03T11:30:00Z",
        "average_price": "0.13915",
        "average_market_price": "-0.00500",
        "all_in": True,
    }


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            {},
            {
                "area": ["This field is required."],
                "resolution": ["This field is required."],
                "prices": ["This field is required."],
            },
        ),
        (
            {"area": "nl", "resolution": "PT5M", "prices": []},
            {
                "area": ["Enter a market area such as NL or BE (capitals, digits, - and _)."],
                "resolution": ['"PT15M" or "PT60M".'],
                "prices": ["Expected a non-empty list of {start, price}."],
            },
        ),
        (
            {
                "area": "T-BAD",
                "resolution": "PT15M",
                "prices": [
                    quarter("2026-12-03T10:00:00Z", "0.1"),
                    quarter("2026-12-03T10:07:00Z", "0.1"),
                    {"start": "yesterday", "price": "x"},
                    quarter("2026-12-03T10:15:00Z", "100.5"),
                ],
            },
            {
                "prices": [
                    {},
                    {"start": ["Start on a quarter hour (minutes 00, 15, 30 or 45), from 1970 to 2199."]},
                    {
                        "start": [
                            "Datetime has wrong format. Use one of these formats instead: "
                            "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
                        ],
                        "price": ["A valid number is required."],
                    },
                    {"price": ["Ensure that there are no more than 2 digits before the decimal point."]},
                ]
            },
        ),
    ],
)
def test_bad_prices_are_a_400_naming_the_field_and_nothing_is_stored(hand_day, body, errors):
    _, client = hand_day
    response = post_prices(client, body)
    assert response.status_code == 400 and response.json == errors
    assert get(client, "/api/v2/prices", area="T-BAD", start__gte="2026-12-03")["count"] == 0


def quarters_of_a_day(meter: str, first: dt.datetime, count: int) -> list[Reading]:
    """A reading at the end of every quarter hour, 0.1 kWh each on tariff 1, from a baseline."""
    return [
        reading((first + dt.timedelta(minutes=15 * i)).isoformat(), meter, d1=100.0 + 0.1 * i) for i in range(count + 1)
    ]


@pytest.mark.parametrize(("day", "quarters"), [("2026-03-29", 92), ("2026-10-25", 100)])
def test_dst_days_and_a_period_change_at_midnight(session_config, config, day, quarters):
    """Fixed prices (0.50/kWh) until the DST day, a dynamic contract from it (market 0.10, no
    markup, tax or VAT): the evening before costs 16 quarters x 0.1 x 0.50 = 0.80, the DST day
    `quarters` x 0.1 x 0.10."""
    area = f"T-DST{quarters}"
    first_day = dt.date.fromisoformat(day)
    contract = DynamicContract(area=area, vat=0)
    config.prices = [
        PricePeriod(start=first_day - dt.timedelta(days=30), electricity_delivered_1=0.50),
        PricePeriod(start=first_day, dynamic=contract),
    ]
    store = Store.for_config(config)
    client = testing.TestClient(create_app(config, store))
    meter = f"E-DST{quarters}"
    midnight = dt.datetime.combine(first_day, dt.time(), config.tz).astimezone(UTC)
    evening = midnight - dt.timedelta(hours=4)
    # Each reading 10 s before its quarter's end, the first one (the baseline) before the evening's.
    store.writer.store_readings(quarters_of_a_day(meter, evening - dt.timedelta(seconds=10), 16 + quarters), False)
    prices = [quarter((midnight + dt.timedelta(minutes=15 * i)).isoformat(), "0.10") for i in range(quarters)]
    assert post_prices(client, {"area": area, "resolution": "PT15M", "prices": prices}).status_code == 201
    store.compute.recompute(evening - dt.timedelta(hours=1), midnight + dt.timedelta(minutes=15 * quarters), meter)
    before = day_row(client, meter, (first_day - dt.timedelta(days=1)).isoformat())
    assert (before["electricity1"], before["electricity1_cost"]) == ("1.600", "0.80")
    row = day_row(client, meter, day)
    assert row["electricity1"] == f"{quarters / 10:.3f}"
    assert row["electricity1_cost"] == f"{quarters / 100:.2f}" and row["total_cost"] == f"{quarters / 100:.2f}"
    store.close()


def test_prices_import_command_and_changed_prices_recost_history(import_target, tmp_path):
    config_path, store = import_target
    entsoe = str(FIXTURES / "entsoe-nl-2026-12-06.xml")
    command = dsmr_ts_command("prices", "import", entsoe, "--config", str(config_path))
    first = subprocess.run(command, capture_output=True, text=True, env=env_without_overrides(), timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("NL: 96 prices stored, 0 unchanged (2026-12-06 00:00 to 2026-12-07 00:00, ")
    again = subprocess.run(command, capture_output=True, text=True, env=env_without_overrides(), timeout=120)
    assert again.stdout.startswith("NL: 0 prices stored, 96 unchanged")
    bad = tmp_path / "bad.csv"
    bad.write_text("start,price\n2026-12-06T00:00:00Z,0.1\n2026-12-06T00:07:00Z,0.1\n")
    refused = subprocess.run(
        dsmr_ts_command("prices", "import", str(bad), "--area", "NL", "--config", str(config_path)),
        capture_output=True,
        text=True,
        env=env_without_overrides(),
        timeout=120,
    )
    assert refused.returncode != 0 and refused.stdout == ""
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .endswith("expected prices every 15 or 60 minutes, found a step of 7 minutes")
    )

    # Stored costs follow a changed price: setup recomputes them (Grafana reads them).
    meter = "E-RECOST"
    start = z("2026-11-10T10:00:00Z")
    store.writer.store_readings(quarters_of_a_day(meter, start - dt.timedelta(seconds=10), 4), False)

    def hour_cost() -> float:
        (row,) = store.client.flux(
            "from(bucket: stats) |> range(start: 2026-11-10T10:00:00Z, stop: 2026-11-10T11:00:00Z)"
            ' |> filter(fn: (r) => r._measurement == "hour" and r._field == "electricity1_cost")'
        )
        return round(row["_value"], 6)

    for price, expected in (("0.20", 0.08), ("0.50", 0.2)):
        with open(config_path, "a") as config_file:
            config_file.write(f"prices:\n  - {{start: 2026-01-01, electricity_delivered_1: {price}}}\n")
        bootstrap(load_config(config_path))
        config = load_config(config_path)
        priced = Store.for_config(config)
        if price == "0.20":
            priced.compute.recompute(start - dt.timedelta(hours=1), start + dt.timedelta(hours=1), meter)
        assert hour_cost() == expected
        assert priced.compute.reprice() is False  # unchanged now: nothing to do
        priced.close()
        config_path.write_text(config_path.read_text().split("prices:\n")[0])


ENTSOE_REFUSAL = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Acknowledgement_MarketDocument'
    b' xmlns="urn:iec62325.351:tc57wg16:451-1:acknowledgementdocument:7:0"><mRID>x</mRID>'
    b"<Reason><code>999</code><text>Unauthorized. Missing or invalid security token</text></Reason>"
    b"</Acknowledgement_MarketDocument>"
)


def test_price_fetch_from_an_entsoe_like_server(import_target, tmp_path):
    """`price_fetch`: the URL with {start}, {end} and {token} (from its file), the answer stored;
    a refusal explained in one line, and the token never shown."""
    config_path, _ = import_target
    token = "entsoe-token-0f9a8b7c6d5e"
    seen: list[dict] = []
    document = (FIXTURES / "entsoe-nl-2026-12-06.xml").read_bytes()

    class Entsoe(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            seen.append(query)
            good = query.get("securityToken") == [token]
            body = document if good else ENTSOE_REFUSAL
            self.send_response(200 if good else 401)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Entsoe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token_file = tmp_path / "entsoe.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    url = (
        f"http://127.0.0.1:{server.server_port}/api?documentType=A44&in_Domain=10YNL----------L"
        "&periodStart={start}&periodEnd={end}&securityToken={token}"
    )
    with open(config_path, "a") as config_file:
        config_file.write(f'price_fetch:\n  enabled: true\n  url: "{url}"\n  token_file: entsoe.token\n')
    fetch = dsmr_ts_command("prices", "fetch", "--config", str(config_path))
    try:
        done = subprocess.run(fetch, capture_output=True, text=True, env=env_without_overrides(), timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "NL: 96 prices stored, 0 unchanged\n"
        config = load_config(config_path)
        today = dt.datetime.now(config.tz).date()
        start = dt.datetime.combine(today, dt.time(), config.tz).astimezone(UTC)
        assert seen[0]["periodStart"] == [start.strftime("%Y%m%d%H%M")]
        assert seen[0]["periodEnd"] == [(start + dt.timedelta(days=2)).strftime("%Y%m%d%H%M")]
        token_file.write_text("a-wrong-token\n")
        refused = subprocess.run(fetch, capture_output=True, text=True, env=env_without_overrides(), timeout=120)
        assert refused.returncode != 0
        message = refused.stderr.strip().splitlines()[-1]
        assert message.endswith(
            "securityToken=*** answered HTTP 401: ENTSO-E answered with no prices:"
            " Unauthorized. Missing or invalid security token"
        )
        assert "a-wrong-token" not in refused.stderr + refused.stdout and token not in done.stdout + done.stderr
    finally:
        server.shutdown()
