"""The costs of a day's usage, and the names of a day's usage and costs: one place for the API
(statistics/day, consumption/today) and MQTT (day-consumption, current-month, current-year). The
usage they are computed from is read from the store by dsmr_ts/influx/totals.py.

Costs come from the config's price periods (the period with the latest start on or before a day
applies), so changed fixed prices need no regeneration:
  electricityN_cost = electricityN x delivered_N price - electricityN_returned x returned_N price
  gas_cost = gas x gas price;  total_cost = the three rounded costs + fixed_daily_cost.
Each is rounded half-up to 2 decimals; a day before every price period costs "0.00". A day
created with POST statistics/day keeps the costs it was given. Under a dynamic contract the
electricity costs are computed per quarter hour at the market prices (tariffs.py, hour_costs.py)
and stored with the statistics; gas and the fixed daily cost stay as above.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dsmr_ts.config import PricePeriod
from dsmr_ts.fields import SCHEMA
from dsmr_ts.formats import exact, money, rounded
from dsmr_ts.tariffs import MarketPrice, delivered_price, returned_price

ELECTRICITY = ("electricity1", "electricity2", "electricity1_returned", "electricity2_returned")
USAGE = (*ELECTRICITY, "gas")
COSTS = ("total_cost", "electricity1_cost", "electricity2_cost", "gas_cost")
TEMPERATURES = ("lowest_temperature", "highest_temperature", "average_temperature")
SUMMED = (*USAGE, *COSTS, "fixed_cost")  # what a period adds up over its days
UNPRICED = "unpriced_quarters"  # a stored row's quarter hours with usage but no market price
DAY_FIELDS = (*SUMMED, *TEMPERATURES)  # what a stored day row may hold (DSMR-reader's DayStatistics)
# DSMR-reader v5.10+'s day positions: (its name, the reading field), e.g. electricity1_reading is
# the day's last electricity_delivered_1.
DAY_POSITIONS = {
    f"{usage}_reading": position for usage in USAGE for position, used in SCHEMA.usage.items() if used == usage
}
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
    """The costs of a day's usage at a price period ("0.00" without one: DSMR-reader's costs are
    never null, and its clients count on that). Under a dynamic contract the electricity costs are
    the row's own (the sum of its quarter hours at their market prices, hour_costs.py): null while
    a quarter hour with usage has no price, or before they were computed."""
    if price is None:
        return {name: money(Decimal(0)) for name in COSTS}

    def amount(field: str) -> Decimal:
        return exact(row.get(field) or 0.0)

    e1: Decimal | None
    e2: Decimal | None
    if price.dynamic is not None:
        used = any(row.get(name) for name in ELECTRICITY)
        known = not row.get(UNPRICED) and (row.get("electricity1_cost") is not None or not used)
        e1 = rounded(amount("electricity1_cost"), 2) if known else None
        e2 = rounded(amount("electricity2_cost"), 2) if known else None
    else:
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
    total = e1 + e2 + gas + exact(price.fixed_daily_cost) if e1 is not None and e2 is not None else None
    return {
        "total_cost": money(total) if total is not None else None,
        "electricity1_cost": money(e1) if e1 is not None else None,
        "electricity2_cost": money(e2) if e2 is not None else None,
        "gas_cost": money(gas),
    }


def cost_per_hour(
    delivered_kw: float,
    returned_kw: float,
    tariff: object,
    price: PricePeriod | None,
    market: MarketPrice | None = None,
) -> str | None:
    """What power now costs per hour: at the tariff's prices, or under a dynamic contract at the
    current interval's market price (None without prices, a tariff or a market price)."""
    if price is not None and price.dynamic is not None:
        if market is None:
            return None
        return money(
            exact(delivered_kw) * delivered_price(price.dynamic, market.price)
            - exact(returned_kw) * returned_price(price.dynamic, market.price)
        )
    if price is None or tariff not in (1, 2):
        return None
    return money(
        exact(delivered_kw) * exact(getattr(price, f"electricity_delivered_{tariff}"))
        - exact(returned_kw) * exact(getattr(price, f"electricity_returned_{tariff}"))
    )


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
