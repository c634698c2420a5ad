"""Pages of the statistics bucket for the API: hour and day statistics (counted, one request),
quarter-hour peaks (in time order or by their average; deep pages located per span), and day rows
posted by clients (POST statistics/day)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from dsmr_ts.costs import COSTS
from dsmr_ts.datetimes import EPOCH
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.client import LATEST, InfluxClient, ident, ns
from dsmr_ts.influx.lineprotocol import (
    COUNT_FIELD,
    DAY_MEASUREMENT,
    GAS_COUNT_FIELD,
    HOUR_MEASUREMENT,
    MINUTE_COUNT_FIELD,
    POSITION_DROP_FIELD,
    QUARTER_MEASUREMENT,
    UNPRICED_FIELD,
)
from dsmr_ts.influx.paging import SPAN, page_rows, row_in
from dsmr_ts.influx.statistics_flux import USAGE_FIELDS

# What adds up when a named meter's ids both have a row for one hour or day (a meter replacement).
ADDITIVE = {*USAGE_FIELDS, COUNT_FIELD, MINUTE_COUNT_FIELD, GAS_COUNT_FIELD, *COSTS, "fixed_cost"}
QUARTER_DIRECT_OFFSET = 2000  # quarter-hour rows InfluxQL may skip itself; deeper pages are located


class StatisticsPages:
    def __init__(self, client: InfluxClient):
        self.client = client
        self.settings = client.settings

    def page(
        self,
        measurement: str,
        meter: str,
        start: dt.datetime | None,
        stop: dt.datetime | None,
        offset: int,
        limit: int,
        descending: bool,
        fields: Iterable[str] | None = None,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(count, rows) of `hour` or `day` statistics with time in [start, stop), one request.
        Rows carry `_time` (aware UTC) and the fields asked for (all when None)."""
        assert measurement in (HOUR_MEASUREMENT, DAY_MEASUREMENT)
        start, stop = start or EPOCH, stop or LATEST
        if stop <= start:
            return 0, []
        # A statistics row is one with electricity usage (computed or imported; DSMR-reader's rows
        # always have it), so that the count and the page agree.
        where = self.client.meter_between(meter, start, stop) + " AND (electricity1 >= 0 OR electricity1 < 0)"
        source = self.client.in_stats(measurement)
        columns = ", ".join(ident(f) for f in fields) if fields else "*"
        if len(self.client.meter_ids(meter)) > 1:
            return self._merged_page(meter, source, where, columns, offset, limit, descending)
        counted, rows = self.client.influxql(
            [
                f"SELECT count(electricity1) FROM {source} {where}",
                f"SELECT {columns} FROM {source} {where}"
                f" ORDER BY time {'DESC' if descending else 'ASC'} LIMIT {max(limit, 1)} OFFSET {min(offset, 2**62)}",
            ]
        )
        count = next((int(row["count"]) for found in counted for row in found.rows()), 0)
        return count, [_with_time(row) for found in rows for row in found.rows()]

    def _merged_page(
        self, meter: str, source: str, where: str, columns: str, offset: int, limit: int, descending: bool
    ) -> tuple[int, list[dict[str, Any]]]:
        """A named meter's rows (config `meters`): each of its ids' rows, one row per time. The day or
        hour of a meter replacement has a row of each: their usage, counts and costs add up (the old
        meter's up to its last reading, the new one's from its first position); positions and the
        rest are the newer meter's. Read whole and paged here: names are rare, their rows few."""
        (found,) = self.client.influxql([f"SELECT {columns} FROM {source} {where} GROUP BY meter"])
        order = {one: index for index, one in enumerate(self.client.meter_ids(meter))}
        merged: dict[int, dict[str, Any]] = {}
        for series in sorted(found, key=lambda part: order.get(part.tags.get("meter", ""), -1)):  # oldest id first
            for row in series.rows():
                into = merged.setdefault(int(row["time"]), {})
                for name, value in row.items():
                    if value is None:
                        continue
                    if name in ADDITIVE and into.get(name) is not None:
                        into[name] += value
                    else:
                        into[name] = value
        times = sorted(merged, reverse=descending)
        return len(times), [_with_time(merged[time]) for time in times[offset : offset + limit]]

    def quarters(
        self,
        meter: str,
        gte: dt.datetime | None,
        lte: dt.datetime | None,
        offset: int,
        limit: int,
        by_average: bool,
        descending: bool,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(count, rows) of the quarter-hour peaks whose read_at_start is in [gte, lte], in time order
        or by average_delivered (ties in time order). Rows: _time (quarter start), average_delivered,
        read_at_start, read_at_end (aware UTC). The count comes per span of SPAN (summed here), so
        that a deep page in time order starts reading at its span: InfluxQL's OFFSET reads every
        row it skips (a year of quarters is 35,000)."""
        start = _floor_quarter(gte) if gte else EPOCH
        stop = lte or LATEST
        if stop < start:
            return 0, []
        where = f"WHERE {self.client.meter_is(meter)} AND time >= {ns(start)} AND time <= {ns(stop)}"
        if gte:
            where += f" AND read_at_start >= {int(gte.timestamp())}"
        if lte:
            where += f" AND read_at_start <= {int(lte.timestamp())}"
        source = self.client.in_stats(QUARTER_MEASUREMENT)
        columns = "average_delivered, read_at_start, read_at_end"
        statements = [
            f"SELECT count(average_delivered) FROM {source} {where}"
            f" GROUP BY time({int(SPAN.total_seconds())}s) fill(none)"
        ]
        located = not by_average and offset >= QUARTER_DIRECT_OFFSET  # read after the span counts
        if by_average:
            # top()/bottom() keep the first N by value (and the earlier of equal ones), in time order.
            selector = "top" if descending else "bottom"
            statements.append(
                f"SELECT {selector}(average_delivered, {offset + max(limit, 1)}), read_at_start,"
                f" read_at_end FROM {source} {where}"
            )
        elif not located:
            statements.append(
                f"SELECT {columns} FROM {source} {where}"
                f" ORDER BY time {'DESC' if descending else 'ASC'} LIMIT {max(limit, 1)} OFFSET {offset}"
            )
        results = self.client.influxql(statements)
        spans = [(int(row["time"]), int(row["count"])) for series in results[0] for row in series.rows()]
        count = sum(in_span for _, in_span in spans)
        found = (
            self._located_quarters(source, where, columns, spans, count, offset, limit, descending)
            if located
            else results[1]
        )
        rows: list[dict[str, Any]] = []
        for series in found:
            for row in series.rows():
                value = row.get("average_delivered", row.get("top", row.get("bottom"))) or 0.0
                rows.append(
                    {
                        "_time": dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc),
                        "average_delivered": float(value),
                        "read_at_start": dt.datetime.fromtimestamp(int(row["read_at_start"]), dt.timezone.utc),
                        "read_at_end": dt.datetime.fromtimestamp(int(row["read_at_end"]), dt.timezone.utc),
                    }
                )
        if by_average:
            rows.sort(key=lambda r: (-r["average_delivered"] if descending else r["average_delivered"], r["_time"]))
            rows = rows[offset : offset + limit]
        elif located and descending:  # read oldest first
            rows.reverse()
        return count, rows

    def _located_quarters(
        self,
        source: str,
        where: str,
        columns: str,
        spans: list[tuple[int, int]],
        count: int,
        offset: int,
        limit: int,
        descending: bool,
    ) -> list:
        """The series of a deep page in time order, read oldest first from the span of its first row."""
        if offset >= count:
            return []
        first, last = page_rows(count, offset, limit, descending)
        found = row_in(spans, first)
        if found is None:
            return []
        span_start, skip = found
        (series,) = self.client.influxql(
            [
                f"SELECT {columns} FROM {source} {where} AND time >= {span_start * 10**9}"
                f" ORDER BY time ASC LIMIT {last - first + 1} OFFSET {skip}"
            ]
        )
        return series

    def position_drops(self, meter: str, since: dt.datetime) -> list[tuple[str, dt.datetime]]:
        """(equipment id, hour) of the latest hour since `since` in which a meter's position went
        down (a meter replaced under the same id, or a bad reading): usage 0 there, for monitoring."""
        (series,) = self.client.influxql(
            [
                f"SELECT last({ident(POSITION_DROP_FIELD)}) FROM {self.client.in_stats(HOUR_MEASUREMENT)}"
                f" WHERE {self.client.meter_is(meter)} AND time >= {ns(since)} GROUP BY meter"
            ]
        )
        return [
            (found.tags.get("meter", ""), dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc))
            for found in series
            for row in found.rows()
        ]

    def unpriced_hours(self, meter: str, since: dt.datetime) -> tuple[int, dt.datetime | None]:
        """(quarter hours with usage but without a market price since `since`, the first hour with
        one): their costs are unknown until the prices come (dynamic contracts)."""
        (series,) = self.client.influxql(
            [
                f"SELECT {ident(UNPRICED_FIELD)} FROM {self.client.in_stats(HOUR_MEASUREMENT)}"
                f" WHERE {self.client.meter_is(meter)} AND time >= {ns(since)} AND {ident(UNPRICED_FIELD)} > 0"
            ]
        )
        rows = [row for found in series for row in found.rows()]
        if not rows:
            return 0, None
        first = min(int(row["time"]) for row in rows)
        return int(sum(row[UNPRICED_FIELD] for row in rows)), dt.datetime.fromtimestamp(first, dt.timezone.utc)

    def add_day(self, meter: str, day_start: dt.datetime, fields: dict[str, float]) -> bool:
        """POST statistics/day: a day row as given (usage, costs, temperatures). False when the
        meter already has a row for that day (nothing written)."""
        (series,) = self.client.influxql(
            [
                f"SELECT count(electricity1) FROM {self.client.in_stats(DAY_MEASUREMENT)}"
                f" WHERE {self.client.meter_is(meter)} AND time = {ns(day_start)}"
            ]
        )
        if any(int(row["count"]) for found in series for row in found.rows()):
            return False
        newest = self.client.meter_ids(meter)[-1]  # a named meter's day goes to its current equipment
        self.client.write(
            lineprotocol.line(
                DAY_MEASUREMENT, newest, {k: float(v) for k, v in fields.items()}, int(day_start.timestamp())
            ),
            self.settings.stats_bucket,
        )
        return True


def _floor_quarter(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)


def _with_time(row: dict[str, Any]) -> dict[str, Any]:
    row["_time"] = dt.datetime.fromtimestamp(int(row.pop("time")), dt.timezone.utc)
    return row
