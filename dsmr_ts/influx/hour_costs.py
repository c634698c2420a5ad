"""The costs step of the statistics: the costs of each hour row, written into the row (fields
electricity1_cost, electricity2_cost, gas_cost, unpriced_quarters; the day rows sum them, and get
fixed_daily_cost), so that Grafana and the API read the costs dsmr-ts computes. The arithmetic is
in dsmr_ts/tariffs.py.

- Under a fixed price period an hour's cost is its usage per register at the period's prices
  (read from the hour rows).
- Under a dynamic contract each quarter hour's usage per register (the last position at or before
  its end minus the last one before its start, from the readings; pushed-down windows) is priced
  at its market price; a quarter with usage but without a price leaves its hour's costs unknown.

It runs wherever hour rows are (re)computed from Python: after the hour task (housekeeping), in
the repair of late readings and of late or corrected prices, and in regenerate. The API reads
fixed-price costs from the config at read time (a changed price needs no regeneration); the stored
costs follow at the next `dsmr-ts regenerate` or setup (see bootstrap).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import zoneinfo
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from dsmr_ts.config import PricePeriod
from dsmr_ts.costs import price_for
from dsmr_ts.datetimes import day_start
from dsmr_ts.fields import SCHEMA, ReadingSchema
from dsmr_ts.formats import exact
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.client import InfluxClient, ident, ns, quote
from dsmr_ts.influx.lineprotocol import DAY_MEASUREMENT, FIXED_DAILY_FIELD, HOUR_MEASUREMENT, UNPRICED_FIELD
from dsmr_ts.influx.prices import PriceStore
from dsmr_ts.influx.statistics_flux import LOOKBACK, usage_fields
from dsmr_ts.tariffs import REGISTERS, HourCost, PriceIndex, fixed_costs, quarter_hour_costs

Usage = dict[str, Decimal]
COSTS_CONFIG = "costs_config"  # stats bucket, one point: the price periods the stored costs follow


def _periods_json(periods: Sequence[PricePeriod]) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(dataclasses.asdict(period), default=str)) for period in periods]


class HourCosts:
    def __init__(
        self,
        client: InfluxClient,
        prices: PriceStore,
        periods: Sequence[PricePeriod],
        timezone: str = "Europe/Amsterdam",
        schema: ReadingSchema = SCHEMA,
    ):
        self.client = client
        self.prices = prices
        self.periods = list(periods)
        self.tz = zoneinfo.ZoneInfo(timezone)
        self.positions = usage_fields(schema)[0]  # electricity position field -> usage name

    def recompute(self, start: dt.datetime, stop: dt.datetime, meter_id: str | None = None) -> None:
        """Write the costs of the hour rows in [start, stop) (whole UTC hours): electricity per
        register, gas (at the period's gas price), and the quarter hours left unpriced."""
        lines: list[str] = []
        for span_start, span_stop, period in self._spans(start, stop):
            hours = self._hour_usage(span_start, span_stop, meter_id)
            dynamic = period is not None and period.dynamic is not None
            priced = self._dynamic(span_start, span_stop, period, meter_id) if dynamic else {}
            for (meter, hour), usage in hours.items():
                if dynamic:
                    cost = priced.get((meter, hour), HourCost())
                else:
                    cost = HourCost()
                    if period is not None:
                        cost.add(fixed_costs(usage, period))
                gas_cost = usage["gas"] * exact(period.gas) if period is not None else Decimal(0)
                fields = {
                    "electricity1_cost": float(cost.electricity1_cost),
                    "electricity2_cost": float(cost.electricity2_cost),
                    "gas_cost": float(gas_cost),
                    UNPRICED_FIELD: float(cost.unpriced_quarters),
                }
                lines.append(lineprotocol.line(HOUR_MEASUREMENT, meter, fields, int(hour.timestamp())))
        if lines:
            self.client.write("\n".join(lines), self.client.settings.stats_bucket)

    def fixed_days(self, start: dt.datetime, stop: dt.datetime, meter_id: str | None = None) -> None:
        """Day rows of [start, stop) (local midnights) get their period's fixed daily cost, so that
        a day's stored costs are complete (fixed_daily_cost; the API's fixed_cost comes from the
        config or a posted day)."""
        meter = f" AND meter = {quote(meter_id)}" if meter_id else ""
        (series,) = self.client.influxql(
            [
                f"SELECT electricity1 FROM {self.client.in_stats(DAY_MEASUREMENT)}"
                f" WHERE time >= {ns(start)} AND time < {ns(stop)}{meter} GROUP BY meter"
            ]
        )
        lines = []
        for found in series:
            for row in found.rows():
                day = dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc).astimezone(self.tz).date()
                period = price_for(day, self.periods)
                fixed = {FIXED_DAILY_FIELD: period.fixed_daily_cost if period else 0.0}
                lines.append(lineprotocol.line(DAY_MEASUREMENT, found.tags["meter"], fixed, int(row["time"])))
        if lines:
            self.client.write("\n".join(lines), self.client.settings.stats_bucket)

    def changed_since(self) -> tuple[bool, dt.date | None]:
        """Whether the price periods differ from those the stored costs were computed with, and
        from which day (None: from the start, e.g. costs never computed by this version)."""
        (series,) = self.client.influxql([f"SELECT last(periods) FROM {self.client.in_stats(COSTS_CONFIG)}"])
        stored = next((row["last"] for found in series for row in found.rows()), None)
        if stored is None:
            return True, None
        old, new = json.loads(stored), _periods_json(self.periods)
        if old == new:
            return False, None
        first = next(i for i in range(max(len(old), len(new))) if old[i : i + 1] != new[i : i + 1])
        # The first period that differs (changed, added or gone): from the earlier of its starts.
        changed = (*old[first : first + 1], *new[first : first + 1])
        return True, min(dt.date.fromisoformat(period["start"]) for period in changed)

    def save_periods(self) -> None:
        """Remember the price periods the stored costs now follow."""
        periods = json.dumps(_periods_json(self.periods)).replace("\\", "\\\\").replace('"', '\\"')
        self.client.write(f'{COSTS_CONFIG} periods="{periods}" 0', self.client.settings.stats_bucket)

    def between(self, meter_ids: Sequence[str], start: dt.datetime, stop: dt.datetime) -> HourCost | None:
        """The electricity costs of [start, stop) (today so far) of a meter's ids under a dynamic
        contract, live from the readings; None when no dynamic contract applies then."""
        total = HourCost()
        dynamic = False
        for span_start, span_stop, period in self._spans(start, stop):
            if period is None or period.dynamic is None:
                continue
            dynamic = True
            for meter_id in meter_ids:
                for cost in self._dynamic(span_start, span_stop, period, meter_id).values():
                    total.add((cost.electricity1_cost, cost.electricity2_cost))
                    total.unpriced_quarters += cost.unpriced_quarters
        return total if dynamic else None

    def _spans(
        self, start: dt.datetime, stop: dt.datetime
    ) -> Iterator[tuple[dt.datetime, dt.datetime, PricePeriod | None]]:
        """[start, stop) cut where the price period changes (at local midnight)."""
        cuts = [day_start(period.start, self.tz) for period in self.periods]
        edges = sorted({start, stop, *(cut for cut in cuts if start < cut < stop)})
        for span_start, span_stop in itertools.pairwise(edges):
            yield span_start, span_stop, price_for(span_start.astimezone(self.tz).date(), self.periods)

    def _hour_usage(
        self, start: dt.datetime, stop: dt.datetime, meter_id: str | None
    ) -> dict[tuple[str, dt.datetime], Usage]:
        """(meter, hour) -> the usage of each stored hour row in [start, stop)."""
        fields = ", ".join(ident(name) for name in (*REGISTERS, "gas"))
        meter = f" AND meter = {quote(meter_id)}" if meter_id else ""
        (series,) = self.client.influxql(
            [
                f"SELECT {fields} FROM {self.client.in_stats(HOUR_MEASUREMENT)}"
                f" WHERE time >= {ns(start)} AND time < {ns(stop)}{meter} GROUP BY meter"
            ]
        )
        return {
            (found.tags["meter"], dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc)): {
                name: exact(row.get(name) or 0.0) for name in (*REGISTERS, "gas")
            }
            for found in series
            for row in found.rows()
            if row.get("electricity1") is not None or row.get("gas") is not None
        }

    def _dynamic(
        self, start: dt.datetime, stop: dt.datetime, period: PricePeriod | None, meter_id: str | None
    ) -> dict[tuple[str, dt.datetime], HourCost]:
        assert period is not None and period.dynamic is not None
        prices = PriceIndex(self.prices.read(period.dynamic.area, start, stop))
        costs: dict[tuple[str, dt.datetime], HourCost] = {}
        for meter, quarters in self.quarter_usage(start, stop, meter_id).items():
            for hour, cost in quarter_hour_costs(quarters, period.dynamic, prices).items():
                costs[(meter, hour)] = cost
        return costs

    def quarter_usage(
        self, start: dt.datetime, stop: dt.datetime, meter_id: str | None = None
    ) -> dict[str, list[tuple[dt.datetime, Usage]]]:
        """Per meter id, each quarter hour with readings in [start, stop) and its usage per register:
        its last position minus the one before (the last before start, at most LOOKBACK back, or a
        meter's first reading). A position that went down (a replaced meter) counts 0 and the next
        quarter continues from it, as in the hour statistics."""
        fields = " or ".join(f'r._field == "{name}"' for name in self.positions)
        meter = f" and r.meter == {json.dumps(meter_id)}" if meter_id else ""
        predicate = f'r._measurement == "{lineprotocol.READING}" and ({fields}){meter}'
        rows = self.client.flux(
            f"""
import "date"
source = (start, stop) => from(bucket: bucket) |> range(start: start, stop: stop) |> filter(fn: (r) => {predicate})
source(start: date.sub(d: {LOOKBACK}, from: qStart), stop: qStart) |> last()
  |> set(key: "edge", value: "before") |> yield(name: "before")
source(start: qStart, stop: qStop) |> first() |> set(key: "edge", value: "first") |> yield(name: "first")
source(start: qStart, stop: qStop)
  |> aggregateWindow(every: 15m, fn: last, timeSrc: "_start", createEmpty: false)
  |> set(key: "edge", value: "quarter") |> yield(name: "quarters")
""",
            {"qStart": start, "qStop": stop},
        )
        baselines: dict[tuple[str, str], Decimal] = {}
        firsts: dict[tuple[str, str], Decimal] = {}
        quarters: dict[str, dict[dt.datetime, Usage]] = {}
        ordered: list[tuple[str, str, dt.datetime, Decimal]] = []
        for row in rows:
            key = (row["meter"], row["_field"])
            if row["edge"] == "before":
                baselines[key] = exact(row["_value"])
            elif row["edge"] == "first":
                firsts[key] = exact(row["_value"])
            else:
                ordered.append((row["meter"], row["_field"], row["_time"], exact(row["_value"])))
        ordered.sort(key=lambda item: (item[0], item[1], item[2]))
        previous: dict[tuple[str, str], Decimal] = {}
        for meter, field, moment, position in ordered:
            key = (meter, field)
            before = previous.get(key, baselines.get(key, firsts.get(key, position)))
            previous[key] = position
            usage = quarters.setdefault(meter, {}).setdefault(moment, {name: Decimal(0) for name in REGISTERS})
            usage[self.positions[field]] = max(position - before, Decimal(0))
        return {meter: sorted(by_time.items()) for meter, by_time in quarters.items()}
