"""What energy costs under a contract: the price of a kWh in an interval, and the costs of the
usage of an interval, with exact decimals. Pure arithmetic: the usage and the market prices are
read from the store by dsmr_ts/influx/hour_costs.py.

A fixed contract (a price period with per-tariff prices) prices every kWh of a tariff alike. A
dynamic contract prices each interval of the day-ahead market (15 or 60 minutes):
  delivered (all-in) = (market + markup + energy_tax) x (1 + vat / 100)
  returned           = market + export_markup (with netting: the delivered all-in price)
An interval's cost per tariff register N:
  electricityN_cost = electricityN x delivered - electricityN_returned x returned
so that, like DSMR-reader's, the two registers' costs add up to the electricity cost. An interval
of a dynamic contract without a market price has no cost (it is counted as unpriced), never a
made-up one.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from dsmr_ts.config import DynamicContract, PricePeriod
from dsmr_ts.formats import exact

REGISTERS = ("electricity1", "electricity2", "electricity1_returned", "electricity2_returned")
QUARTER = dt.timedelta(minutes=15)
HUNDRED = Decimal(100)
# Belgium's capacity tariff counts at least this peak (kW).
CAPACITY_MINIMUM_KW = Decimal("2.5")


@dataclass(frozen=True)
class MarketPrice:
    """A day-ahead market price: EUR/kWh from start (UTC) for `seconds` (900 or 3600)."""

    start: dt.datetime
    seconds: int
    price: Decimal

    @property
    def stop(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.seconds)


class PriceIndex:
    """Market prices that do not overlap, found by time."""

    def __init__(self, prices: Iterable[MarketPrice]):
        self.prices = sorted(prices, key=lambda price: price.start)
        self.starts = [price.start for price in self.prices]

    def at(self, moment: dt.datetime) -> MarketPrice | None:
        i = bisect.bisect_right(self.starts, moment) - 1
        if i >= 0 and moment < self.prices[i].stop:
            return self.prices[i]
        return None

    def __len__(self) -> int:
        return len(self.prices)


def delivered_price(contract: DynamicContract, market: Decimal) -> Decimal:
    """The all-in price of a delivered kWh (EUR/kWh, VAT included)."""
    return (market + exact(contract.markup) + exact(contract.energy_tax)) * (1 + exact(contract.vat) / HUNDRED)


def returned_price(contract: DynamicContract, market: Decimal) -> Decimal:
    """What a returned kWh earns (EUR/kWh; negative when the market price is low enough)."""
    if contract.netting:
        return delivered_price(contract, market)
    return market + exact(contract.export_markup)


def register_costs(
    usage: Mapping[str, Decimal], delivered: tuple[Decimal, Decimal], returned: tuple[Decimal, Decimal]
) -> tuple[Decimal, Decimal]:
    """(electricity1_cost, electricity2_cost) of an interval's usage per register at its prices
    (delivered and returned, per tariff)."""
    return (
        usage["electricity1"] * delivered[0] - usage["electricity1_returned"] * returned[0],
        usage["electricity2"] * delivered[1] - usage["electricity2_returned"] * returned[1],
    )


def fixed_costs(usage: Mapping[str, Decimal], period: PricePeriod) -> tuple[Decimal, Decimal]:
    return register_costs(
        usage,
        (exact(period.electricity_delivered_1), exact(period.electricity_delivered_2)),
        (exact(period.electricity_returned_1), exact(period.electricity_returned_2)),
    )


def dynamic_costs(usage: Mapping[str, Decimal], contract: DynamicContract, market: Decimal) -> tuple[Decimal, Decimal]:
    delivered, returned = delivered_price(contract, market), returned_price(contract, market)
    return register_costs(usage, (delivered, delivered), (returned, returned))


@dataclass
class HourCost:
    """The electricity costs of an hour (or of any sum of intervals): per tariff register, and the
    number of quarter hours with usage but without a market price (costs are unknown then)."""

    electricity1_cost: Decimal = Decimal(0)
    electricity2_cost: Decimal = Decimal(0)
    unpriced_quarters: int = 0

    def add(self, costs: tuple[Decimal, Decimal]) -> None:
        self.electricity1_cost += costs[0]
        self.electricity2_cost += costs[1]


def quarter_hour_costs(
    quarters: Iterable[tuple[dt.datetime, Mapping[str, Decimal]]], contract: DynamicContract, prices: PriceIndex
) -> dict[dt.datetime, HourCost]:
    """Per UTC hour, the costs of its quarter hours' usage (quarter start, usage per register) at
    each quarter's market price (an hourly price covers its four quarters)."""
    hours: dict[dt.datetime, HourCost] = {}
    for start, usage in quarters:
        hour = hours.setdefault(start.replace(minute=0, second=0, microsecond=0), HourCost())
        price = prices.at(start)
        if price is None:
            if any(usage[name] for name in REGISTERS):
                hour.unpriced_quarters += 1
            continue
        hour.add(dynamic_costs(usage, contract, price.price))
    return hours


def capacity_cost(peak_kw: Decimal | None, yearly_tariff: Decimal) -> Decimal:
    """A month's capacity tariff: EUR per kW per year on the month's highest quarter-hour average,
    at least CAPACITY_MINIMUM_KW, billed as a twelfth each month."""
    peak = max(peak_kw or Decimal(0), CAPACITY_MINIMUM_KW)
    return peak * yearly_tariff / 12


def cheapest_window(prices: list[MarketPrice], seconds: int) -> tuple[dt.datetime, Decimal] | None:
    """The start and average price of the cheapest consecutive `seconds` covered by prices without
    a gap (a window starts at an interval's start); None when no such window exists."""
    quarters: list[tuple[dt.datetime, Decimal]] = []
    for price in sorted(prices, key=lambda p: p.start):
        moment = price.start
        while moment < price.stop:
            quarters.append((moment, price.price))
            moment += QUARTER
    needed = seconds // 900
    best: tuple[dt.datetime, Decimal] | None = None
    window_sum, first = Decimal(0), 0
    for i, (moment, amount) in enumerate(quarters):
        if i > first and quarters[i - 1][0] + QUARTER != moment:  # a gap: start afresh
            window_sum, first = Decimal(0), i
        window_sum += amount
        if i - first + 1 > needed:
            window_sum -= quarters[first][1]
            first += 1
        if i - first + 1 == needed:
            average = window_sum / needed
            if best is None or average < best[1]:
                best = (quarters[first][0], average)
    return best
