"""What dsmr-ts publishes: DSMR-reader v5's topics and payloads (../MQTT-NOTES in the design
notes), built from the same values and formats as the API. Pure functions: values in, messages out.

Split topics carry one value as a plain string ("1234.567", "2", an ISO datetime); JSON topics one
object. Values the meter does not send (and costs without prices) are left out, not sent empty.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal
from typing import Any, Iterable

from dsmr_ts.config import DynamicContract
from dsmr_ts.costs import ELECTRICITY, PRICE_FIELDS, USAGE, DayTotals
from dsmr_ts.fields import SCHEMA, Kind, ReadingSchema
from dsmr_ts.formats import decimal_string, gas_json, money, quarter_peak_json, reading_json, unit_price
from dsmr_ts.mqtt.outbox import Message
from dsmr_ts.tariffs import MarketPrice, delivered_price, returned_price

PERIOD_FIELDS = (
    *ELECTRICITY,
    "electricity_merged",
    "electricity_returned_merged",
    "electricity1_cost",
    "electricity2_cost",
    "electricity_cost_merged",
    "gas",
    "gas_cost",
    "fixed_cost",
    "total_cost",
)


def _split(prefix: str, values: dict[str, Any]) -> list[Message]:
    return [Message(f"{prefix}/{name}", str(value)) for name, value in values.items() if value is not None]


def _json(topic: str, values: dict[str, Any]) -> Message:
    return Message(topic, json.dumps(values))


def reading(
    prefix: str, row: dict[str, Any], tz: dt.tzinfo | None, split: bool, as_json: bool, schema: ReadingSchema = SCHEMA
) -> list[Message]:
    """A reading: `<prefix>/reading/<field>` (id, timestamp and every v2 field) and `<prefix>/json`."""
    values = reading_json(row["_time"], row, tz, schema)
    messages = _split(f"{prefix}/reading", values) if split else []
    if as_json:
        messages.append(_json(f"{prefix}/json", values))
    return messages


def _merged(values: dict[str, Decimal | None]) -> dict[str, Decimal | None]:
    """DSMR-reader's merged fields: tariff 1 + 2 (None when a part is)."""

    def plus(a: str, b: str) -> Decimal | None:
        first, second = values.get(a), values.get(b)
        return None if first is None or second is None else first + second

    return {
        "electricity_merged": plus("electricity1", "electricity2"),
        "electricity_returned_merged": plus("electricity1_returned", "electricity2_returned"),
        "electricity_cost_merged": plus("electricity1_cost", "electricity2_cost"),
    }


def _totals_strings(values: dict[str, Decimal | None]) -> dict[str, str | None]:
    """kWh and m3 with 3 decimals, money with 2, as the API shows them."""
    out: dict[str, str | None] = {}
    for name, value in values.items():
        if value is None:
            out[name] = None
        elif name.endswith("cost"):
            out[name] = money(value)
        else:
            out[name] = decimal_string(float(value), 3)
    return out


def day_consumption(prefix: str, day: DayTotals) -> list[Message]:
    """Today so far: `<prefix>/day-consumption/<field>` and the JSON `<prefix>/day-consumption`."""
    values: dict[str, Decimal | None] = {name: Decimal(repr(day.usage[name])) for name in USAGE}
    values.update({name: Decimal(cost) if cost is not None else None for name, cost in day.costs.items()})
    values["fixed_cost"] = day.fixed_cost if day.price else None
    values.update(_merged(values))
    shown: dict[str, Any] = _totals_strings(values)
    if day.price:
        shown.update(
            {f"energy_supplier_price_{name}": decimal_string(getattr(day.price, name), 5) for name in PRICE_FIELDS}
        )
    messages = _split(f"{prefix}/day-consumption", shown)
    messages.append(
        _json(
            f"{prefix}/day-consumption",
            {"day": day.day.isoformat(), **{k: v for k, v in shown.items() if v is not None}},
        )
    )
    return messages


def period_totals(prefix: str, month: dict[str, Decimal], year: dict[str, Decimal], priced: bool) -> list[Message]:
    """`<prefix>/current-month/<field>`, `<prefix>/current-year/<field>` and the JSON
    `<prefix>/current-period` (costs left out when no price period applies)."""
    shown = {}
    for name, sums in (("current-month", month), ("current-year", year)):
        values: dict[str, Decimal | None] = {
            key: value for key, value in sums.items() if priced or not key.endswith("cost")
        }
        values.update(_merged(values))
        shown[name] = {
            key: value for key, value in _totals_strings(values).items() if key in PERIOD_FIELDS and value is not None
        }
    messages = [message for name, values in shown.items() for message in _split(f"{prefix}/{name}", values)]
    messages.append(
        _json(
            f"{prefix}/current-period", {"current_month": shown["current-month"], "current_year": shown["current-year"]}
        )
    )
    return messages


def meter_statistics(
    prefix: str, statistics: dict[str, Any], rejected: int, schema: ReadingSchema = SCHEMA
) -> list[Message]:
    """`<prefix>/meter-stats/<field>`: the meter's counters and the rejected telegrams."""
    values = {spec.name: statistics.get(spec.name) for spec in schema.statistics}
    values["rejected_telegrams"] = rejected
    return _split(f"{prefix}/meter-stats", values)


def gas(prefix: str, read_at: dt.datetime, delivered: float, used: float, tz: dt.tzinfo | None) -> list[Message]:
    """A new gas value: `<prefix>/consumption/gas/<field>` and `.../json`."""
    values = gas_json(read_at, delivered, used, tz)
    return [*_split(f"{prefix}/consumption/gas", values), _json(f"{prefix}/consumption/gas/json", values)]


def quarter_hour_peak(prefix: str, quarter: dict[str, Any], tz: dt.tzinfo | None) -> list[Message]:
    """A completed quarter hour: `<prefix>/consumption/quarter-hour-peak-electricity/<field>` and `.../json`."""
    values = quarter_peak_json(quarter, tz)
    topic = f"{prefix}/consumption/quarter-hour-peak-electricity"
    return [*_split(topic, values), _json(f"{topic}/json", values)]


def prices(prefix: str, now: MarketPrice, following: MarketPrice | None, contract: DynamicContract) -> list[Message]:
    """The all-in price of a delivered kWh now and in the next interval (EUR/kWh; empty while the
    next is not known), and the market price now, under a dynamic contract."""
    return [
        Message(f"{prefix}/prices/current", unit_price(delivered_price(contract, now.price))),
        Message(f"{prefix}/prices/next", unit_price(delivered_price(contract, following.price)) if following else ""),
        Message(f"{prefix}/prices/current_market", unit_price(now.price)),
        Message(f"{prefix}/prices/current_export", unit_price(returned_price(contract, now.price))),
    ]


def raw(prefix: str, telegram: str) -> Message:
    return Message(f"{prefix}/raw", telegram)


# --- Home Assistant discovery ---------------------------------------------------------------------

# unit -> (device_class, state_class) as Home Assistant's energy dashboard wants them
SENSOR_CLASSES = {
    "kWh": ("energy", "total_increasing"),
    "kW": ("power", "measurement"),
    "V": ("voltage", "measurement"),
    "A": ("current", "measurement"),
    "m3": ("gas", "total_increasing"),
    "EUR": ("monetary", "total"),
    "EUR/kWh": ("monetary", None),  # a price: no state class (Home Assistant's monetary allows only total)
}


def _sensor(
    object_id: str,
    name: str,
    state_topic: str,
    unit: str | None,
    device: dict[str, Any],
    discovery_prefix: str,
    node: str,
    timestamp: bool = False,
) -> Message:
    config: dict[str, Any] = {
        "name": name,
        "unique_id": f"{node}_{object_id}",
        "object_id": f"{node}_{object_id}",
        "state_topic": state_topic,
        "device": device,
    }
    if timestamp:
        config["device_class"] = "timestamp"
    elif unit:
        config["unit_of_measurement"] = "m³" if unit == "m3" else unit
        device_class, state_class = SENSOR_CLASSES.get(unit, (None, "measurement"))
        if device_class:
            config["device_class"] = device_class
        if state_class:
            config["state_class"] = state_class
    return _json(f"{discovery_prefix}/sensor/{node}/{object_id}/config", config)


def discovery(
    discovery_prefix: str, prefix: str, meter: str, sources: Iterable[str], schema: ReadingSchema = SCHEMA
) -> list[Message]:
    """Retained sensor configs for Home Assistant's MQTT discovery: one device per meter, a
    sensor per published value (unit, device_class, state_class for the energy dashboard)."""
    sources = set(sources)
    node = "dsmr_ts_" + re.sub(r"[^A-Za-z0-9_-]", "_", meter)
    device = {"identifiers": [node], "name": f"Smart meter {meter}", "manufacturer": "dsmr-ts", "model": "DSMR P1"}
    messages = []

    def sensor(object_id: str, name: str, topic: str, unit: str | None, timestamp: bool = False) -> None:
        messages.append(_sensor(object_id, name, topic, unit, device, discovery_prefix, node, timestamp))

    if "reading" in sources:
        sensor("timestamp", "Reading time", f"{prefix}/reading/timestamp", None, timestamp=True)
        for spec in schema.api_fields:
            label = spec.description or spec.name.replace("_", " ")
            sensor(
                spec.name,
                label[0].upper() + label[1:],
                f"{prefix}/reading/{spec.mqtt_topic}",
                spec.unit,
                timestamp=spec.kind is Kind.DATETIME,
            )
    if "gas" in sources:
        sensor("gas_delivered", "Gas meter", f"{prefix}/consumption/gas/delivered", "m3")
        sensor("gas_read_at", "Gas read at", f"{prefix}/consumption/gas/read_at", None, timestamp=True)
    if "day" in sources:
        for name in (*ELECTRICITY, "electricity_merged", "electricity_returned_merged"):
            sensor(f"day_{name}", f"Today {name.replace('_', ' ')}", f"{prefix}/day-consumption/{name}", "kWh")
        sensor("day_gas", "Today gas", f"{prefix}/day-consumption/gas", "m3")
        sensor("day_total_cost", "Today total cost", f"{prefix}/day-consumption/total_cost", "EUR")
    if "quarter_hour_peaks" in sources:
        sensor(
            "quarter_hour_peak",
            "Quarter-hour average power",
            f"{prefix}/consumption/quarter-hour-peak-electricity/average_delivered",
            "kW",
        )
    if "prices" in sources:
        sensor("price_current", "Electricity price now", f"{prefix}/prices/current", "EUR/kWh")
        sensor("price_next", "Electricity price next", f"{prefix}/prices/next", "EUR/kWh")
        sensor("price_current_export", "Return price now", f"{prefix}/prices/current_export", "EUR/kWh")
    if "meter_stats" in sources:
        sensor("electricity_tariff", "Electricity tariff", f"{prefix}/meter-stats/electricity_tariff", None)
    return messages
