"""Reading queries that stay fast at any size: exact counts and pages in one request to influxd.

A range [gte, lte] splits into a head (before its first whole hour), whole hours that the count
index proves (below the watermark, see statistics.py), and a tail (from there to the end). The
head and tail are counted from raw points (at most an hour, and the hour or two the task has not
reached yet); the proven hours by summing their `reading_count` rows. Hours with a pending repair
mark are not proven: their raw counts replace their index rows (a second request, only then).

A page near either end of the range (offset below DIRECT_OFFSET from that end) is read in the same
request as the counts (InfluxQL stops at LIMIT). A deep page is located through the index: day
sums, then the hours of that day, then a small OFFSET inside one hour.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from dsmr_ts.fields import SCHEMA, Kind, ReadingSchema
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.client import EARLIEST, LATEST, InfluxClient, Series, ident, ns, quote
from dsmr_ts.influx.statistics import (COUNT_FIELD, COUNTED_FIELD, HOUR_MEASUREMENT, REPAIR_SLACK, Statistics,
                                      floor_hour, pending_from)

HOUR = dt.timedelta(hours=1)
SECOND = dt.timedelta(seconds=1)
DIRECT_OFFSET = 3600  # rows InfluxQL may skip itself (about 2 ms per thousand)
EDGE = dt.timedelta(days=1)  # a page near an end of the range is first looked for within a day of it
WATERMARK_TTL = 60.0  # seconds: a stale watermark only means more raw counting, never a wrong count
Row = dict[str, object]


def ceil_hour(moment: dt.datetime) -> dt.datetime:
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


@dataclass
class _Plan:
    """The parts of a range and what is known about them."""

    start: dt.datetime
    stop: dt.datetime
    indexed_start: dt.datetime  # [indexed_start, indexed_stop): whole hours proven by the index
    indexed_stop: dt.datetime
    head: int = 0  # raw count of [start, indexed_start), or of the whole range when nothing is indexed
    indexed: int = 0
    tail: int = 0  # raw count of [indexed_stop, stop)
    marks_since: dt.datetime = EARLIEST  # marks made since then may not be repaired yet
    corrections: dict[int, int] | None = None  # hour (Unix s) -> raw minus index, for pending hours

    @property
    def has_index(self) -> bool:
        return self.indexed_start < self.indexed_stop

    @property
    def total(self) -> int:
        return self.head + self.indexed + self.tail


class ReadingQueries:
    def __init__(self, client: InfluxClient, statistics: Statistics, schema: ReadingSchema = SCHEMA):
        self.client = client
        self.statistics = statistics
        self.schema = schema
        self._proof: tuple[tuple[dt.datetime | None, dt.datetime | None], float] | None = None
        self._lock = threading.Lock()
        self._stats_hour = client.in_stats(HOUR_MEASUREMENT)
        self.direct_offset = DIRECT_OFFSET
        self._first: dict[str, tuple[dt.datetime, float]] = {}
        self._columns = [(spec.name, schema.bits[spec.name], spec.kind is Kind.DATETIME) for spec in schema.fields]

    # --- what the index proves ----------------------------------------------------------------

    def proof(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        """(watermark, repair cursor), cached briefly: both only move forward, so old values cost
        speed (more raw counting, more marks to look at), never correctness."""
        with self._lock:
            cached = self._proof
        if cached and time.monotonic() - cached[1] < WATERMARK_TTL:
            return cached[0]
        value = self.statistics.proof()
        with self._lock:
            self._proof = (value, time.monotonic())
        return value

    def watermark(self) -> dt.datetime | None:
        return self.proof()[0]

    def _plan(self, gte: dt.datetime | None, lte: dt.datetime | None) -> _Plan:
        start = max(gte, EARLIEST) if gte else EARLIEST
        stop = min(lte + SECOND, LATEST) if lte else LATEST
        watermark, cursor = self.proof()
        indexed_start = ceil_hour(start)
        indexed_stop = min(floor_hour(stop), watermark or EARLIEST)
        if indexed_stop <= indexed_start:
            indexed_start = indexed_stop = start
        return _Plan(start, stop, indexed_start, indexed_stop, marks_since=(cursor - REPAIR_SLACK) if cursor else EARLIEST)

    def _raw_where(self, meter: str, start: dt.datetime, stop: dt.datetime) -> str:
        return f"WHERE meter = {quote(meter)} AND time >= {ns(start)} AND time < {ns(stop)}"

    def _count_statements(self, meter: str, plan: _Plan) -> list[str]:
        reading, counted = ident(lineprotocol.READING), ident(COUNTED_FIELD)
        if not plan.has_index:
            return [f"SELECT count({counted}) FROM {reading} {self._raw_where(meter, plan.start, plan.stop)}"]
        index_where = self._raw_where(meter, plan.indexed_start, plan.indexed_stop)
        return [
            f"SELECT count({counted}) FROM {reading} {self._raw_where(meter, plan.start, plan.indexed_start)}",
            f"SELECT sum({COUNT_FIELD}) FROM {self._stats_hour} {index_where}",
            f"SELECT count({counted}) FROM {reading} {self._raw_where(meter, plan.indexed_stop, plan.stop)}",
            # Marks the repair job may not have taken up yet: those made since its cursor (read by
            # when they were made, so the query reads minutes, not all history).
            f"SELECT \"hour\" FROM {ident(lineprotocol.REPAIR_REQUEST)} WHERE meter = {quote(meter)}"
            f" AND time > {ns(plan.marks_since)}",
        ]

    def _take_counts(self, meter: str, plan: _Plan, results: list[list[Series]]) -> None:
        if not plan.has_index:
            plan.head = _number(results[0])
            return
        plan.head, plan.indexed, plan.tail = _number(results[0]), _number(results[1]), _number(results[2])
        start, stop = int(plan.indexed_start.timestamp()), int(plan.indexed_stop.timestamp())
        candidates = {int(row["hour"]) for found in results[3] for row in found.rows()}
        candidates = sorted(hour for hour in candidates if start <= hour < stop)
        pending = self._still_pending(meter, candidates) if candidates else []
        if pending:
            plan.corrections = self._corrections(meter, pending)
            plan.indexed += sum(plan.corrections.values())

    def _still_pending(self, meter: str, hours: list[int]) -> list[int]:
        """Of the hours marked lately, those whose repair has not been written yet."""
        (series,) = self.client.influxql([
            f"SELECT marked, repaired FROM {ident(lineprotocol.REPAIR)} WHERE meter = {quote(meter)}"
            f" AND time >= {hours[0] * 10**9} AND time <= {hours[-1] * 10**9}"])
        pending = pending_from(series)
        return [hour for hour in hours if hour in pending]

    def _corrections(self, meter: str, hours: list[int]) -> dict[int, int]:
        """Raw count minus index count of each pending hour (hours waiting for the repair job)."""
        start = dt.datetime.fromtimestamp(hours[0], dt.timezone.utc)
        stop = dt.datetime.fromtimestamp(hours[-1], dt.timezone.utc) + HOUR
        where = self._raw_where(meter, start, stop)
        raw, index = self.client.influxql([
            f"SELECT count({ident(COUNTED_FIELD)}) FROM {ident(lineprotocol.READING)} {where} GROUP BY time(1h) fill(0)",
            f"SELECT {COUNT_FIELD} FROM {self._stats_hour} {where}",
        ])
        raw_counts = {int(row["time"]): int(row["count"] or 0) for found in raw for row in found.rows()}
        index_counts = {int(row["time"]): int(row[COUNT_FIELD] or 0) for found in index for row in found.rows()}
        return {hour: raw_counts.get(hour, 0) - index_counts.get(hour, 0) for hour in hours}

    def count(self, meter: str, gte: dt.datetime | None, lte: dt.datetime | None) -> int:
        plan = self._plan(gte, lte)
        self._take_counts(meter, plan, self.client.influxql(self._count_statements(meter, plan)))
        return plan.total

    def brute_force_count(self, meter: str, gte: dt.datetime | None, lte: dt.datetime | None) -> int:
        """Count every raw point in range (for tests and checks, never on a request)."""
        start, stop = gte or EARLIEST, (lte + SECOND) if lte else LATEST
        (series,) = self.client.influxql([
            f"SELECT count({ident(COUNTED_FIELD)}) FROM {ident(lineprotocol.READING)} {self._raw_where(meter, start, stop)}"])
        return _number(series)

    # --- pages --------------------------------------------------------------------------------

    def page(self, meter: str, gte: dt.datetime | None, lte: dt.datetime | None, offset: int, limit: int,
             descending: bool) -> tuple[int, Iterator[Row]]:
        """(exact count, the page's rows as {_time, field: value}, in the order asked)."""
        plan = self._plan(gte, lte)
        statements = self._count_statements(meter, plan)
        counted = len(statements)
        direct = offset < self.direct_offset
        edge = self._edge(meter, plan, descending) if direct else None
        if direct:
            # The page comes with the counts, read within a day of the end it starts from: a range
            # over all of history costs a cursor per field per shard, even for LIMIT 1.
            start, stop = edge or (plan.start, plan.stop)
            statements.append(self._select(meter, start, stop, descending, limit, offset))
            if edge and not descending and gte is None:  # the meter's first reading, as remembered
                statements.append(f"SELECT {ident(COUNTED_FIELD)} FROM {ident(lineprotocol.READING)}"
                                  f" {self._raw_where(meter, plan.start, edge[0])} LIMIT 1")
        elif plan.has_index:  # where to look comes with the counts
            statements.append(self._day_sums(meter, plan))
        results = self.client.influxql(statements)
        self._take_counts(meter, plan, results[:counted])
        total = plan.total
        if direct:
            rows = list(self._rows(results[counted]))
            earlier = len(results) > counted + 1 and any(found.values for found in results[counted + 1])
            if edge and (len(rows) < min(limit, total - offset) or earlier):
                # The day near the edge did not hold the page (sparse readings, an import of older
                # ones since the first reading was remembered): the whole range, once more.
                self._first.pop(meter, None)
                (series,) = self.client.influxql([self._select(meter, plan.start, plan.stop, descending, limit,
                                                               offset)])
                rows = list(self._rows(series))
            return total, iter(rows)
        if offset >= total:
            return total, iter(())
        first = max(0, total - offset - limit) if descending else offset  # ascending row numbers
        last = total - 1 - offset if descending else min(total, offset + limit) - 1
        try:
            start, skip = self._locate(meter, plan, results[counted] if len(results) > counted else [], first)
        except LookupError:  # a write raced the count: the next request sees the new count
            return total, iter(())
        (rows,) = self.client.influxql([self._select(meter, start, plan.stop, False, last - first + 1, skip)])
        found = list(self._rows(rows))
        return total, iter(found[::-1] if descending else found)

    def _edge(self, meter: str, plan: _Plan, descending: bool) -> tuple[dt.datetime, dt.datetime] | None:
        """The day at the end of the range a page starts from, or None when the range is no wider."""
        if plan.stop - plan.start <= EDGE:
            return None
        if descending:  # an open end: the day before now, and whatever a fast meter clock wrote after it
            end = plan.stop if plan.stop < LATEST else dt.datetime.now(dt.timezone.utc)
            return max(plan.start, end - EDGE), plan.stop
        begin = plan.start if plan.start > EARLIEST else self._first_reading(meter)
        return (begin, min(plan.stop, begin + EDGE)) if begin else None

    def _first_reading(self, meter: str) -> dt.datetime | None:
        """When a meter's first reading is, remembered a minute (each use checks nothing is earlier)."""
        cached = self._first.get(meter)
        if cached and time.monotonic() - cached[1] < WATERMARK_TTL:
            return cached[0]
        (series,) = self.client.influxql([f"SELECT {ident(COUNTED_FIELD)} FROM {ident(lineprotocol.READING)}"
                                          f" WHERE meter = {quote(meter)} ORDER BY time ASC LIMIT 1"])
        first = next((dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc)
                      for found in series for row in found.rows()), None)
        if first:
            self._first[meter] = (first, time.monotonic())
        return first

    def _select(self, meter: str, start: dt.datetime, stop: dt.datetime, descending: bool, limit: int,
                offset: int) -> str:
        return (f"SELECT * FROM {ident(lineprotocol.READING)} {self._raw_where(meter, start, stop)}"
                f" ORDER BY time {'DESC' if descending else 'ASC'} LIMIT {max(limit, 1)} OFFSET {offset}")

    def _day_sums(self, meter: str, plan: _Plan) -> str:
        return (f"SELECT sum({COUNT_FIELD}) FROM {self._stats_hour} "
                f"{self._raw_where(meter, plan.indexed_start, plan.indexed_stop)} GROUP BY time(1d) fill(none)")

    def _locate(self, meter: str, plan: _Plan, day_sums: list[Series], row: int) -> tuple[dt.datetime, int]:
        """Row number `row` (0-based, ascending) -> (a time, how many rows from there to skip)."""
        if row < plan.head or not plan.has_index:
            return plan.start, row
        row -= plan.head
        if row >= plan.indexed:
            return plan.indexed_stop, row - plan.indexed
        corrections = plan.corrections or {}
        for day in day_sums[0].rows() if day_sums else ():
            day_start = dt.datetime.fromtimestamp(int(day["time"]), dt.timezone.utc)
            day_s = int(day_start.timestamp())
            count = int(day["sum"] or 0) + sum(c for h, c in corrections.items() if day_s <= h < day_s + 86400)
            if row < count:
                return self._locate_hour(meter, plan, day_start, row, corrections)
            row -= count
        raise LookupError("the index changed while a page was located")  # a write raced the count

    def _locate_hour(self, meter: str, plan: _Plan, day: dt.datetime, row: int,
                     corrections: dict[int, int]) -> tuple[dt.datetime, int]:
        start, stop = max(day, plan.indexed_start), min(day + dt.timedelta(days=1), plan.indexed_stop)
        (hours,) = self.client.influxql([f"SELECT {COUNT_FIELD} FROM {self._stats_hour} "
                                         f"{self._raw_where(meter, start, stop)}"])
        counts = {int(r["time"]): int(r[COUNT_FIELD] or 0) for found in hours for r in found.rows()}
        for hour, correction in corrections.items():
            if int(start.timestamp()) <= hour < int(stop.timestamp()):
                counts[hour] = counts.get(hour, 0) + correction
        for hour in sorted(counts):
            if row < counts[hour]:
                return dt.datetime.fromtimestamp(hour, dt.timezone.utc), row
            row -= counts[hour]
        raise LookupError("the index changed while a page was located")

    def _rows(self, series: list[Series]) -> Iterator[Row]:
        for found in series:
            for row in found.rows():
                yield self.reading_row(row)

    def reading_row(self, row: dict[str, object]) -> Row:
        """An InfluxQL row as {_time, field: value}: only the fields the reading's `present` mask
        names (a point written before the mask existed has all of its fields)."""
        present = row.get(lineprotocol.PRESENT_FIELD)
        mask = -1 if present is None else int(present)
        utc = dt.timezone.utc
        out: Row = {"_time": dt.datetime.fromtimestamp(int(row["time"]), utc)}
        for name, bit, is_datetime in self._columns:
            value = row.get(name)
            if value is not None and mask & bit:
                out[name] = dt.datetime.fromtimestamp(int(value), utc) if is_datetime else value
        return out

    # --- single readings --------------------------------------------------------------------------

    def latest(self, meter: str, before: dt.datetime | None = None, after: dt.datetime | None = None,
               first: bool = False) -> Row | None:
        """The newest (or with first=True the oldest) reading of a meter in [after, before)."""
        (series,) = self.client.influxql([self._select(meter, after or EARLIEST, before or LATEST, not first, 1, 0)])
        return next(self._rows(series), None)

    def between(self, meter: str, start: dt.datetime, stop: dt.datetime) -> Iterator[Row]:
        """Every reading of a meter in [start, stop), oldest first (export; callers chunk by day)."""
        (series,) = self.client.influxql([f"SELECT * FROM {ident(lineprotocol.READING)} "
                                          f"{self._raw_where(meter, start, stop)} ORDER BY time ASC"])
        return self._rows(series)

    def latest_gas(self, meter: str, count: int = 2, before: dt.datetime | None = None) -> list[tuple[dt.datetime, float]]:
        """The newest gas positions (time booked, m3) before `before`, newest first."""
        (series,) = self.client.influxql([
            f"SELECT {ident(lineprotocol.GAS_FIELD)} FROM {ident(lineprotocol.GAS)} "
            f"{self._raw_where(meter, EARLIEST, before or LATEST)} ORDER BY time DESC LIMIT {count}"])
        return [(dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc), float(row[lineprotocol.GAS_FIELD]))
                for found in series for row in found.rows()]

    def time_range(self) -> tuple[dt.datetime, dt.datetime] | None:
        """Time of the first and the last reading of any meter."""
        first, last = self.statistics.first_reading_time(), self.statistics.last_reading_time()
        return (first, last) if first and last else None


def _number(series: list[Series]) -> int:
    for found in series:
        for row in found.rows():
            for key, value in row.items():
                if key != "time":
                    return int(value or 0)
    return 0
