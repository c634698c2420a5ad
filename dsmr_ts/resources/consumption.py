"""The consumption routes (DSMR-reader v5 shapes): electricity-live, gas-live, today and
energy-supplier-prices; and the counted pages electricity (per minute), gas (per gas value) and
quarter-hour-peak-electricity.

Today is exact and live (dsmr_ts/influx/totals.py): the newest meter position minus the last one before
local midnight (the same rule as the statistics), not a sum of hour rows that may be an hour behind.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, ClassVar

import falcon

from dsmr_ts import costs
from dsmr_ts.config import PricePeriod
from dsmr_ts.fields import Kind
from dsmr_ts.formats import (
    datetime_string,
    decimal_string,
    exact,
    gas_json,
    gas_used,
    money,
    quarter_peak_json,
    rounded,
)
from dsmr_ts.resources.context import ApiContext
from dsmr_ts.resources.datalogger import filter_datetimes
from dsmr_ts.resources.errors import all_valid
from dsmr_ts.resources.pagination import Page, links, ordering, page_params

TARIFF_NAMES = {1: "Low", 2: "Normal"}  # tariff 1 is the low (night/weekend) tariff in NL


class _ConsumptionResource:
    def __init__(self, context: ApiContext):
        self.context = context
        self.store = context.store
        self.tz = context.tz
        self.output_tz = context.output_tz
        self.prices = context.prices

    def today_prices(self) -> PricePeriod | None:
        return costs.price_for(dt.datetime.now(self.tz).date(), self.prices)


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
        now = dt.datetime.now(dt.timezone.utc)
        cost = costs.cost_per_hour(float(delivered), float(returned), tariff, *self.context.live_price(now))
        resp.media = {
            "timestamp": datetime_string(min(latest["_time"], now), self.output_tz),  # a meter clock may run ahead
            "currently_delivered": round(delivered * 1000),  # W
            "currently_returned": round(returned * 1000),
            "cost_per_hour": cost,
            "tariff_name": TARIFF_NAMES.get(tariff) if isinstance(tariff, int) else None,
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
        body: dict[str, Any] = {
            "timestamp": datetime_string(newest_time, self.output_tz),
            "currently_delivered": decimal_string(float(used), 3),
        }
        price = self.today_prices()
        if price is not None:
            body["cost_per_interval"] = money(used * exact(price.gas))
        resp.media = body


class TodayResource(_ConsumptionResource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        meter = self.context.meter(req)
        now = dt.datetime.now(dt.timezone.utc)
        day = self.store.totals.today(meter, now, self.tz, self.prices)
        if day is None:  # as DSMR-reader says it
            resp.media = f"No electricity readings found for: {now.astimezone(self.tz).date().isoformat()}"
            return
        resp.media = {
            "day": day.day.isoformat(),
            **{name: decimal_string(day.usage[name], 3) for name in costs.USAGE if name != "gas"},
            "electricity1_cost": day.costs["electricity1_cost"],
            "electricity2_cost": day.costs["electricity2_cost"],
            "gas": decimal_string(day.usage["gas"], 3),
            "gas_cost": day.costs["gas_cost"],
            "total_cost": day.costs["total_cost"],
        }


class EnergySupplierPricesResource(_ConsumptionResource):
    """The config's price periods; a period ends the day before the next one starts."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        page = page_params(req)
        periods = []
        for index, period in enumerate(self.prices):
            following = self.prices[index + 1].start if index + 1 < len(self.prices) else None
            periods.append(
                {
                    "id": index + 1,
                    "description": f"prices from {period.start.isoformat()}",
                    "start": period.start.isoformat(),
                    "end": (following - dt.timedelta(days=1)).isoformat() if following else None,
                    **{
                        f"{name}_price": decimal_string(getattr(period, name), 5)
                        for name in (
                            "electricity_delivered_1",
                            "electricity_delivered_2",
                            "electricity_returned_1",
                            "electricity_returned_2",
                            "gas",
                        )
                    },
                    "fixed_daily_cost": decimal_string(period.fixed_daily_cost, 5),
                }
            )
        next_url, previous_url = links(req, page, len(periods), self.context.trust_forwarded)
        resp.media = {
            "count": len(periods),
            "next": next_url,
            "previous": previous_url,
            "results": periods[page.offset : page.offset + page.limit],
        }


class _CountedRowsResource(_ConsumptionResource):
    """A paged route over rows with a time field: filters <field>__gte/__lte, ordering <field> or
    -<field> (anything else: ascending, like the readings), limit/offset with an exact count."""

    time_field = "read_at"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        page, (gte, lte), meter = all_valid(
            lambda: page_params(req),
            lambda: filter_datetimes(req, self.time_field, self.tz),
            lambda: self.context.meter(req),
        )
        count, rows = self.rows(req, meter, gte, lte, page)
        next_url, previous_url = links(req, page, count, self.context.trust_forwarded)
        resp.media = {"count": count, "next": next_url, "previous": previous_url, "results": rows}

    def rows(
        self, req: falcon.Request, meter: str, gte: dt.datetime | None, lte: dt.datetime | None, page: Page
    ) -> tuple[int, list[dict[str, Any]]]:
        raise NotImplementedError


class ElectricityConsumptionResource(_CountedRowsResource):
    """GET consumption/electricity: one row per minute with readings, read_at = the minute's end;
    meter positions are the minute's last, power, voltage and current its averages.
    id = read_at in Unix minutes."""

    def rows(self, req, meter, gte, lte, page):
        descending = ordering(req, ("read_at", "-read_at")) == "-read_at"
        count, rows = self.store.minutes.page_by_end(meter, gte, lte, page.offset, page.limit, descending)
        columns = self.store.schema.minute_columns
        results = []
        for row in rows:
            read_at: dt.datetime = row["_time"]
            out: dict[str, Any] = {
                "id": int(read_at.timestamp()) // 60,
                "read_at": datetime_string(read_at, self.output_tz),
            }
            for spec, name, _ in columns:
                value = row.get(name)
                if value is None:
                    out[name] = None
                elif spec.kind is Kind.INTEGER:  # an average of whole amperes, as a whole number again
                    out[name] = int(rounded(exact(value), 0))
                else:
                    out[name] = decimal_string(value, spec.places)
            results.append(out)
        return count, results


class GasConsumptionResource(_CountedRowsResource):
    """GET consumption/gas: one row per gas value at its booking time; currently_delivered is the
    difference with the value before it (0 for a meter's first). id = read_at in Unix seconds."""

    def rows(self, req, meter, gte, lte, page):
        descending = ordering(req, ("read_at", "-read_at")) == "-read_at"
        count, found = self.store.gas.page(meter, gte, lte, page.offset, page.limit, descending)
        rows = list(found)
        oldest_first = rows[::-1] if descending else rows
        previous = self.store.gas.before(meter, oldest_first[0]["_time"]) if rows else None
        used: dict[dt.datetime, float] = {}
        for row in oldest_first:
            used[row["_time"]] = gas_used(row["delivered"], previous)
            previous = row["delivered"]
        return count, [
            {
                "id": int(row["_time"].timestamp()),
                **gas_json(row["_time"], row["delivered"], used[row["_time"]], self.output_tz),
            }
            for row in rows
        ]


class QuarterHourPeakResource(_CountedRowsResource):
    """GET consumption/quarter-hour-peak-electricity: completed quarter hours with at least two
    readings (see statistics.quarter_flux). Ordering read_at_start (default), -read_at_start,
    average_delivered or -average_delivered (this month's peak first). id = quarter start / 900 s."""

    time_field = "read_at_start"
    ORDERINGS: ClassVar[dict[str, tuple[bool, bool]]] = {
        "read_at_start": (False, False),
        "-read_at_start": (False, True),
        "average_delivered": (True, False),
        "-average_delivered": (True, True),
    }

    def rows(self, req, meter, gte, lte, page):
        by_average, descending = self.ORDERINGS.get(ordering(req, self.ORDERINGS) or "", (False, False))
        count, rows = self.store.statistics.quarters(meter, gte, lte, page.offset, page.limit, by_average, descending)
        return count, [
            {"id": int(row["_time"].timestamp()) // 900, **quarter_peak_json(row, self.output_tz)} for row in rows
        ]
