"""consumption/electricity-live, gas-live, today and energy-supplier-prices (DSMR-reader v5 shapes).

Today is exact and live: the newest meter position minus the last one before local midnight
(the same rule as the statistics), not a sum of hour rows that may be an hour behind.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import falcon

from dsmr_ts.config import PricePeriod
from dsmr_ts.influx.statistics import local_midnight, usage_fields
from dsmr_ts.resources.context import ApiContext
from dsmr_ts.resources.formats import datetime_string, decimal_string, exact, money
from dsmr_ts.resources.pagination import links, page_params
from dsmr_ts.resources.statistics import day_costs, price_for

TARIFF_NAMES = {1: "Low", 2: "Normal"}  # tariff 1 is the low (night/weekend) tariff in NL


class _ConsumptionResource:
    def __init__(self, context: ApiContext):
        self.context = context
        self.store = context.store
        self.tz = context.tz
        self.output_tz = context.output_tz
        self.prices = context.prices

    def today_prices(self) -> PricePeriod | None:
        return price_for(dt.datetime.now(self.tz).date(), self.prices)


class ElectricityLiveResource(_ConsumptionResource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        meter = self.context.meter(req)
        latest = self.store.readings.latest(meter)
        if latest is None:
            resp.media = {}
            return
        delivered = exact(latest.get("electricity_currently_delivered") or 0.0)
        returned = exact(latest.get("electricity_currently_returned") or 0.0)
        tariff = self.store.meters.statistics(meter).get("electricity_tariff")
        cost = None
        price = self.today_prices()
        if price is not None and tariff in (1, 2):
            cost = money(delivered * exact(getattr(price, f"electricity_delivered_{tariff}"))
                          - returned * exact(getattr(price, f"electricity_returned_{tariff}")))
        now = dt.datetime.now(dt.timezone.utc)
        resp.media = {
            "timestamp": datetime_string(min(latest["_time"], now), self.output_tz),  # a meter clock may run ahead
            "currently_delivered": int(round(delivered * 1000)),  # W
            "currently_returned": int(round(returned * 1000)),
            "cost_per_hour": cost,
            "tariff_name": TARIFF_NAMES.get(tariff),
        }


class GasLiveResource(_ConsumptionResource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        meter = self.context.meter(req)
        gas = self.store.readings.latest_gas(meter, count=2)
        if len(gas) < 2:
            resp.media = {}
            return
        (newest_time, newest), (_, previous) = gas
        used = max(exact(newest) - exact(previous), Decimal(0))  # the gas used in the newest interval
        body: dict[str, Any] = {"timestamp": datetime_string(newest_time, self.output_tz),
                                "currently_delivered": decimal_string(float(used), 3)}
        price = self.today_prices()
        if price is not None:
            body["cost_per_interval"] = money(used * exact(price.gas))
        resp.media = body


class TodayResource(_ConsumptionResource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        meter = self.context.meter(req)
        now = dt.datetime.now(dt.timezone.utc)
        today = now.astimezone(self.tz).date()
        midnight = local_midnight(now, self.tz)
        latest = self.store.readings.latest(meter)
        if latest is None or latest["_time"] < midnight:
            resp.media = f"No electricity readings found for: {today.isoformat()}"  # as DSMR-reader says it
            return
        # Baseline: the last position before midnight, or (a meter's first day) its first reading today.
        base = self.store.readings.latest(meter, before=midnight) or self.store.readings.latest(
            meter, after=midnight, first=True)
        usage: dict[str, float] = {}
        for position, name in usage_fields(self.store.schema)[0].items():
            used = exact(latest.get(position) or 0.0) - exact(base.get(position) or 0.0)
            usage[name] = float(max(used, Decimal(0)))
        gas_now = self.store.readings.latest_gas(meter, count=1)
        gas_before = self.store.readings.latest_gas(meter, count=1, before=midnight)
        gas = exact(gas_now[0][1]) - exact(gas_before[0][1]) if gas_now and gas_before else Decimal(0)
        usage["gas"] = float(max(gas, Decimal(0)))
        costs = day_costs(usage, price_for(today, self.prices))
        resp.media = {
            "day": today.isoformat(),
            **{name: decimal_string(value, 3) for name, value in usage.items() if name != "gas"},
            "electricity1_cost": costs["electricity1_cost"],
            "electricity2_cost": costs["electricity2_cost"],
            "gas": decimal_string(usage["gas"], 3),
            "gas_cost": costs["gas_cost"],
            "total_cost": costs["total_cost"],
        }


class EnergySupplierPricesResource(_ConsumptionResource):
    """The config's price periods; a period ends the day before the next one starts."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        page = page_params(req)
        periods = []
        for index, period in enumerate(self.prices):
            following = self.prices[index + 1].start if index + 1 < len(self.prices) else None
            periods.append({
                "id": index + 1,
                "description": f"prices from {period.start.isoformat()}",
                "start": period.start.isoformat(),
                "end": (following - dt.timedelta(days=1)).isoformat() if following else None,
                **{f"{name}_price": decimal_string(getattr(period, name), 5)
                   for name in ("electricity_delivered_1", "electricity_delivered_2", "electricity_returned_1",
                                "electricity_returned_2", "gas")},
                "fixed_daily_cost": decimal_string(period.fixed_daily_cost, 5),
            })
        next_url, previous_url = links(req, page, len(periods), self.context.trust_forwarded)
        resp.media = {"count": len(periods), "next": next_url, "previous": previous_url,
                      "results": periods[page.offset:page.offset + page.limit]}
