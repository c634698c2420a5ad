"""Usage and costs of a day, of today so far, and of a period: one place for the API
(statistics/day, consumption/today) and MQTT (day-consumption, current-month, current-year).

Costs come from the config's price periods (the period with the latest start on or before a day
applies), so changed prices need no regeneration:
  electricityN_cost = electricityN x delivered_N price - electricityN_returned x returned_N price
  gas_cost = gas x gas price;  total_cost = the three rounded costs + fixed_daily_cost.
Each is rounded half-up to 2 decimals; a day before every price period has null costs. A day
created with POST statistics/day keeps the costs it was given.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dsmr_ts.config import PricePeriod
from dsmr_ts.formats import exact, money, rounded
from dsmr_ts.influx.statistics import DAY_MEASUREMENT, day_start, local_midnight, usage_fields
from dsmr_ts.influx.store import Store

ELECTRICITY = ("electricity1", "electricity2", "electricity1_returned", "electricity2_returned")
USAGE = (*ELECTRICITY, "gas")
COSTS = ("total_cost", "electricity1_cost", "electricity2_cost", "gas_cost")
TEMPERATURES = ("lowest_temperature", "highest_temperature", "average_temperature")
SUMMED = (*USAGE, *COSTS, "fixed_cost")  # what a period adds up over its days
DAY_FIELDS = (*SUMMED, *TEMPERATURES)  # what a stored day row may hold (DSMR-reader's DayStatistics)
PRICE_FIELDS = (
    "electricity_delivered_1",
    "electricity_delivered_2",
    "electricity_returned_1",
    "electricity_returned_2",
    "gas",
)


def price_for(day: dt.date, prices: list[PricePeriod]) -> PricePeriod | None:
    applicable = [period for period in prices if period.start <= day]  # prices are sorted by start
    return applicable[-1] if applicable else None


def day_costs(row: dict[str, Any], price: PricePeriod | None) -> dict[str, str | None]:
    """The costs of a day's usage at a price period (all None without one)."""
    if price is None:
        return {name: None for name in COSTS}

    def amount(field: str) -> Decimal:
        return exact(row.get(field) or 0.0)

    e1 = rounded(
        amount("electricity1") * exact(price.electricity_delivered_1)
        - amount("electricity1_returned") * exact(price.electricity_returned_1),
        2,
    )
    e2 = rounded(
        amount("electricity2") * exact(price.electricity_delivered_2)
        - amount("electricity2_returned") * exact(price.electricity_returned_2),
        2,
    )
    gas = rounded(amount("gas") * exact(price.gas), 2)
    total = e1 + e2 + gas + exact(price.fixed_daily_cost)
    return {
        "total_cost": money(total),
        "electricity1_cost": money(e1),
        "electricity2_cost": money(e2),
        "gas_cost": money(gas),
    }


def stored_or_computed_costs(row: dict[str, Any], day: dt.date, prices: list[PricePeriod]) -> dict[str, str | None]:
    """A day row's costs: as posted (POST statistics/day) when it has them, else from the prices."""
    if row.get("total_cost") is not None:
        return {name: money(rounded(exact(row[name]), 2)) if row.get(name) is not None else None for name in COSTS}
    return day_costs(row, price_for(day, prices))


def fixed_cost(row: dict[str, Any], day: dt.date, prices: list[PricePeriod]) -> Decimal:
    if row.get("fixed_cost") is not None:
        return exact(row["fixed_cost"])
    price = price_for(day, prices)
    return exact(price.fixed_daily_cost) if price else Decimal(0)


@dataclass(frozen=True)
class DayTotals:
    day: dt.date
    usage: dict[str, float]  # USAGE
    costs: dict[str, str | None]  # COSTS, as money strings (None without prices)
    fixed_cost: Decimal
    price: PricePeriod | None


def today(store: Store, meter: str, now: dt.datetime, tz: dt.tzinfo, prices: list[PricePeriod]) -> DayTotals | None:
    """Today so far, live: the newest meter positions minus the last ones before local midnight
    (the statistics' rule), or a meter's first reading today on its first day. None: no reading
    today yet."""
    day = now.astimezone(tz).date()
    midnight = local_midnight(now, tz)
    latest = store.readings.latest(meter)
    if latest is None or latest["_time"] < midnight:
        return None
    base = store.readings.latest(meter, before=midnight) or store.readings.latest(meter, after=midnight, first=True)
    assert base is not None  # the latest reading is today's, so today has a first one
    usage: dict[str, float] = {}
    for position, name in usage_fields(store.schema)[0].items():
        used = exact(latest.get(position) or 0.0) - exact(base.get(position) or 0.0)
        usage[name] = float(max(used, Decimal(0)))
    gas_now = store.readings.latest_gas(meter, count=1)
    gas_before = store.readings.latest_gas(meter, count=1, before=midnight)
    gas = exact(gas_now[0][1]) - exact(gas_before[0][1]) if gas_now and gas_before else Decimal(0)
    usage["gas"] = float(max(gas, Decimal(0)))
    price = price_for(day, prices)
    return DayTotals(day, usage, day_costs(usage, price), exact(price.fixed_daily_cost) if price else Decimal(0), price)


def period(
    store: Store, meter: str, first_day: dt.date, live_today: DayTotals | None, tz: dt.tzinfo, prices: list[PricePeriod]
) -> dict[str, Decimal]:
    """Usage and costs summed over the local days from first_day up to today: the day statistics
    before today, and today live. Costs per day at that day's prices (or as posted)."""
    today_date = live_today.day if live_today else dt.datetime.now(tz).date()
    start, stop = day_start(first_day, tz), day_start(today_date, tz)
    _, rows = store.statistics.page(DAY_MEASUREMENT, meter, start, stop, 0, 400, False, SUMMED)
    sums = {name: Decimal(0) for name in SUMMED}
    days = [(row, row["_time"].astimezone(tz).date()) for row in rows]
    for row, day in days:
        for name in USAGE:
            sums[name] += exact(row.get(name) or 0.0)
        for name, value in stored_or_computed_costs(row, day, prices).items():
            sums[name] += Decimal(value) if value is not None else Decimal(0)
        sums["fixed_cost"] += fixed_cost(row, day, prices)
    if live_today:
        for name in USAGE:
            sums[name] += exact(live_today.usage[name])
        for name, value in live_today.costs.items():
            sums[name] += Decimal(value) if value is not None else Decimal(0)
        sums["fixed_cost"] += live_today.fixed_cost
    return sums
