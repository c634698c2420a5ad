"""Usage and costs of today so far and of a period, read from the store: the newest meter
positions minus the last ones before local midnight (the statistics' rule, live), and the day
statistics of a month or a year. Costs: dsmr_ts/costs.py."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from dsmr_ts.config import PricePeriod
from dsmr_ts.costs import SUMMED, UNPRICED, USAGE, DayTotals, day_costs, fixed_cost, price_for, stored_or_computed_costs
from dsmr_ts.datetimes import day_start, local_midnight
from dsmr_ts.fields import SCHEMA, ReadingSchema
from dsmr_ts.formats import exact
from dsmr_ts.influx.hour_costs import HourCosts
from dsmr_ts.influx.lineprotocol import DAY_MEASUREMENT
from dsmr_ts.influx.readings import ReadingQueries
from dsmr_ts.influx.statistics_flux import usage_fields
from dsmr_ts.influx.statistics_pages import StatisticsPages


class Totals:
    def __init__(
        self,
        readings: ReadingQueries,
        pages: StatisticsPages,
        schema: ReadingSchema = SCHEMA,
        costs: HourCosts | None = None,
    ):
        self.readings = readings
        self.pages = pages
        self.schema = schema
        self.costs = costs

    def today(self, meter: str, now: dt.datetime, tz: dt.tzinfo, prices: list[PricePeriod]) -> DayTotals | None:
        """Today so far, live: the newest meter positions minus the last ones before local midnight
        (the statistics' rule), or a meter's first reading today on its first day. None: no reading
        today yet. A named meter (config `meters`) adds up its ids, as its statistics do."""
        day = now.astimezone(tz).date()
        midnight = local_midnight(now, tz)
        used = [found for one in self.readings.client.meter_ids(meter) if (found := self._used(one, midnight))]
        if not used:
            return None
        usage = {name: float(sum((exact(part[name]) for part in used), Decimal(0))) for name in used[0]}
        price = price_for(day, prices)
        row: dict[str, object] = dict(usage)
        if price is not None and price.dynamic is not None and self.costs is not None:
            live = self.costs.between(self.readings.client.meter_ids(meter), midnight, now)
            if live is not None:
                row.update(
                    electricity1_cost=float(live.electricity1_cost),
                    electricity2_cost=float(live.electricity2_cost),
                    **{UNPRICED: live.unpriced_quarters},
                )
        return DayTotals(
            day, usage, day_costs(row, price), exact(price.fixed_daily_cost) if price else Decimal(0), price
        )

    def _used(self, meter: str, midnight: dt.datetime) -> dict[str, float] | None:
        """One equipment id's usage since local midnight; None: no reading of it today."""
        latest = self.readings.latest(meter)
        if latest is None or latest["_time"] < midnight:
            return None
        base = self.readings.latest(meter, before=midnight) or self.readings.latest(meter, after=midnight, first=True)
        assert base is not None  # the latest reading is today's, so today has a first one
        usage: dict[str, float] = {}
        for position, name in usage_fields(self.schema)[0].items():
            used = exact(latest.get(position) or 0.0) - exact(base.get(position) or 0.0)
            usage[name] = float(max(used, Decimal(0)))
        gas_now = self.readings.latest_gas(meter, count=1)
        gas_before = self.readings.latest_gas(meter, count=1, before=midnight)
        gas = exact(gas_now[0][1]) - exact(gas_before[0][1]) if gas_now and gas_before else Decimal(0)
        usage["gas"] = float(max(gas, Decimal(0)))
        return usage

    def period(
        self, meter: str, first_day: dt.date, live_today: DayTotals | None, tz: dt.tzinfo, prices: list[PricePeriod]
    ) -> dict[str, Decimal]:
        """Usage and costs summed over the local days from first_day up to today: the day statistics
        before today, and today live. Costs per day at that day's prices (or as posted)."""
        today_date = live_today.day if live_today else dt.datetime.now(tz).date()
        start, stop = day_start(first_day, tz), day_start(today_date, tz)
        _, rows = self.pages.page(DAY_MEASUREMENT, meter, start, stop, 0, 400, False, (*SUMMED, UNPRICED))
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
