"""Rows that stay fast at any size: exact counts and pages in one request to influxd, for the
readings, the readings' minutes (consumption/electricity) and the gas values (consumption/gas).

A range [gte, lte] splits into a head (before its first whole hour), whole hours that the count
index proves (below the watermark, see count_index.py), and a tail (from there to the end). The
head and tail are counted from raw points (at most an hour, and the hour or two the task has not
reached yet); the proven hours by summing their count field in the hour rows (reading_count,
minute_count, gas_count). Hours with a pending repair mark are not proven: their raw counts replace
their index rows (another request, only then).

A page near either end of the range (offset below DIRECT_OFFSET from that end) is read in the same
request as the counts (InfluxQL stops at LIMIT), within a day of that end. A deep page is located
through the index: sums per span of 30 days (with the counts), then the hours of one span, then a
small OFFSET inside one hour. Spans, not days: InfluxQL pays per window (benchmarks/README.md).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from dsmr_ts.datetimes import HOUR, floor_hour
from dsmr_ts.fields import SCHEMA, Kind, ReadingSchema
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.client import EARLIEST, LATEST, InfluxClient, Series, ident, ns
from dsmr_ts.influx.count_index import REPAIR_SLACK, CountIndex, Proof, pending_from
from dsmr_ts.influx.lineprotocol import (
    COUNT_FIELD,
    COUNTED_FIELD,
    GAS_COUNT_FIELD,
    HOUR_MEASUREMENT,
    MINUTE_COUNT_FIELD,
)
from dsmr_ts.influx.paging import SPAN, page_rows, row_in
from dsmr_ts.influx.statistics_flux import LOOKBACK_DELTA

MINUTE = dt.timedelta(minutes=1)
SECOND = dt.timedelta(seconds=1)
DIRECT_OFFSET = 3600  # rows InfluxQL may skip itself (it reads every row it skips)
# A page near an end of the range, or the latest reading, is first looked for within a day of it.
EDGE = dt.timedelta(days=1)
REMEMBERED = 60.0  # seconds a meter's first and last row are remembered
Row = dict[str, Any]


def ceil_hour(moment: dt.datetime) -> dt.datetime:
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


@dataclass(frozen=True)
class RowKind:
    """What a page holds: points of one field of a measurement, or minutes of them."""

    measurement: str
    counted: str  # the field whose points (or minutes with points) are the rows
    index_field: str  # its count per hour in the hour statistics
    select: str = "*"  # the columns of a page
    # Minute rows (GROUP BY time(1m), time = the minute's start), and the column of the counted field
    # there. InfluxQL applies LIMIT and OFFSET to each aggregate on its own, so a column of a field
    # some readings lack would be offset past its minutes: minute pages are read from OFFSET 0, and
    # only rows with the counted column (which every minute has) are kept, then skipped in Python.
    per_minute: bool = False
    counted_column: str = ""
    direct_offset: int = DIRECT_OFFSET  # deeper pages are located through the index

    def count(self, where: str, start: dt.datetime, stop: dt.datetime, group: str = "") -> str:
        """Rows of a meter in [start, stop) (`where` selects them), optionally grouped (group:
        ' GROUP BY ...')."""
        if self.per_minute:
            # The outer query gets the time bounds too: without them it opens every shard of
            # history, even for a range that holds nothing.
            return (
                f"SELECT count(c) FROM (SELECT count({ident(self.counted)}) AS c FROM {ident(self.measurement)}"
                f" {where} GROUP BY time(1m) fill(none)) WHERE time >= {ns(start)} AND time < {ns(stop)}{group}"
            )
        return f"SELECT count({ident(self.counted)}) FROM {ident(self.measurement)} {where}{group}"

    def page(self, where: str, descending: bool, limit: int, offset: int) -> str:
        group = " GROUP BY time(1m) fill(none)" if self.per_minute else ""
        limit, offset = (limit + offset, 0) if self.per_minute else (limit, offset)
        return (
            f"SELECT {self.select} FROM {ident(self.measurement)} {where}{group}"
            f" ORDER BY time {'DESC' if descending else 'ASC'} LIMIT {max(limit, 1)} OFFSET {offset}"
        )

    def rows(self, series: list[Series], limit: int | None, offset: int) -> Iterator[dict[str, Any]]:
        """The rows of a page read with page(limit, offset) (None: all of them)."""
        found = (row for part in series for row in part.rows())
        if not self.per_minute:
            return found
        complete = [row for row in found if row.get(self.counted_column) is not None]
        return iter(complete[offset : None if limit is None else offset + limit])

    def align(self, moment: dt.datetime) -> dt.datetime:
        """A bound of a range of rows: whole minutes for minute rows."""
        return _floor_minute(moment) if self.per_minute else moment


READINGS = RowKind(lineprotocol.READING, COUNTED_FIELD, COUNT_FIELD)
GAS_VALUES = RowKind(lineprotocol.GAS, lineprotocol.GAS_FIELD, GAS_COUNT_FIELD, select=ident(lineprotocol.GAS_FIELD))


def minute_kind(schema: ReadingSchema) -> RowKind:
    """Minutes with readings: each one's last meter positions and mean power, voltage and current."""
    columns = ", ".join(f"{how}({ident(spec.name)}) AS {ident(name)}" for spec, name, how in schema.minute_columns)
    # A direct page reads offset + limit minutes; deeper ones are located to the hour (< 60 to skip).
    return RowKind(
        lineprotocol.READING,
        COUNTED_FIELD,
        MINUTE_COUNT_FIELD,
        select=columns,
        per_minute=True,
        counted_column=next(name for spec, name, _ in schema.minute_columns if spec.name == COUNTED_FIELD),
        direct_offset=120,
    )


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


class IndexedRows:
    """Counts and pages of one kind of row (see the module doc)."""

    def __init__(
        self,
        client: InfluxClient,
        index: CountIndex,
        kind: RowKind,
        proof: Proof,
        convert: Callable[[dict[str, Any]], Row],
    ):
        self.client = client
        self.index = index
        self.kind = kind
        self.proof = proof
        self.convert = convert
        self._stats_hour = client.in_stats(HOUR_MEASUREMENT)
        self.direct_offset = kind.direct_offset
        self._first: dict[str, tuple[dt.datetime, float]] = {}
        # The end of a meter's newest row, remembered a minute when it lay before the edge a newest-first
        # page reads from now (a meter that stopped reporting, or minutes that ended a while ago).
        self._last: dict[str, tuple[dt.datetime, float]] = {}

    # --- what the index proves ----------------------------------------------------------------

    def _plan(self, gte: dt.datetime | None, lte: dt.datetime | None) -> _Plan:
        start = max(gte, EARLIEST) if gte else EARLIEST
        stop = min(lte + SECOND, LATEST) if lte else LATEST
        watermark, cursor = self.proof.get()
        indexed_start = ceil_hour(start)
        indexed_stop = min(floor_hour(stop), watermark or EARLIEST)
        if indexed_stop <= indexed_start:
            indexed_start = indexed_stop = start
        return _Plan(
            start, stop, indexed_start, indexed_stop, marks_since=(cursor - REPAIR_SLACK) if cursor else EARLIEST
        )

    def _count_statements(self, meter: str, plan: _Plan, by_span: bool = False) -> list[str]:
        """The counts of a plan: the index sums (with by_span per span, for locating a deep page:
        one pass over the hour rows instead of two), the tail, the marks, and a head if there is one
        (a range from the start of history or from a whole hour has none)."""
        if not plan.has_index:
            return [self._count(meter, plan.start, plan.stop)]
        statements = [
            self._index_sums(meter, plan, by_span),
            self._count(meter, plan.indexed_stop, plan.stop),
            # Marks the repair job may not have taken up yet: those made since its cursor (read by
            # when they were made, so the query reads minutes, not all history).
            f'SELECT "hour" FROM {ident(lineprotocol.REPAIR_REQUEST)} WHERE {self.client.meter_is(meter)}'
            f" AND time > {ns(plan.marks_since)}",
        ]
        if plan.start < plan.indexed_start:
            statements.append(self._count(meter, plan.start, plan.indexed_start))
        return statements

    def _take_counts(self, meter: str, plan: _Plan, results: list[list[Series]]) -> None:
        if not plan.has_index:
            plan.head = _number(results[0])
            return
        plan.indexed, plan.tail = _sum(results[0]), _number(results[1])
        plan.head = _number(results[3]) if len(results) > 3 else 0
        start, stop = int(plan.indexed_start.timestamp()), int(plan.indexed_stop.timestamp())
        marked = {int(row["hour"]) for found in results[2] for row in found.rows()}
        candidates = sorted(hour for hour in marked if start <= hour < stop)
        pending = self._still_pending(meter, candidates) if candidates else []
        if pending:
            plan.corrections = self._corrections(meter, pending)
            plan.indexed += sum(plan.corrections.values())

    def _still_pending(self, meter: str, hours: list[int]) -> list[int]:
        """Of the hours marked lately, those whose repair has not been written yet."""
        (series,) = self.client.influxql(
            [
                f"SELECT marked, repaired FROM {ident(lineprotocol.REPAIR)} WHERE {self.client.meter_is(meter)}"
                f" AND time >= {hours[0] * 10**9} AND time <= {hours[-1] * 10**9}"
            ]
        )
        pending = pending_from(series)
        return [hour for hour in hours if hour in pending]

    def _corrections(self, meter: str, hours: list[int]) -> dict[int, int]:
        """Raw count minus index count of each pending hour (hours waiting for the repair job)."""
        start = dt.datetime.fromtimestamp(hours[0], dt.timezone.utc)
        stop = dt.datetime.fromtimestamp(hours[-1], dt.timezone.utc) + HOUR
        where = self.client.meter_between(meter, start, stop)
        raw, index = self.client.influxql(
            [
                self._count(meter, start, stop, " GROUP BY time(1h) fill(0)"),
                f"SELECT {ident(self.kind.index_field)} FROM {self._stats_hour} {where}",
            ]
        )
        raw_counts = {int(row["time"]): int(row["count"] or 0) for found in raw for row in found.rows()}
        index_counts = _hour_sums(index, self.kind.index_field)
        return {hour: raw_counts.get(hour, 0) - index_counts.get(hour, 0) for hour in hours}

    def _count(self, meter: str, start: dt.datetime, stop: dt.datetime, group: str = "") -> str:
        return self.kind.count(self.client.meter_between(meter, start, stop), start, stop, group)

    def count(self, meter: str, gte: dt.datetime | None, lte: dt.datetime | None) -> int:
        plan = self._plan(gte, lte)
        self._take_counts(meter, plan, self.client.influxql(self._count_statements(meter, plan)))
        return plan.total

    def brute_force_count(self, meter: str, gte: dt.datetime | None, lte: dt.datetime | None) -> int:
        """Count every row in range from raw points (for tests and checks, never on a request)."""
        start, stop = gte or EARLIEST, (lte + SECOND) if lte else LATEST
        (series,) = self.client.influxql([self._count(meter, start, stop)])
        return _number(series)

    # --- pages --------------------------------------------------------------------------------

    def page(
        self, meter: str, gte: dt.datetime | None, lte: dt.datetime | None, offset: int, limit: int, descending: bool
    ) -> tuple[int, Iterator[Row]]:
        """(exact count, the page's rows as {_time, field: value}, in the order asked)."""
        count, rows = self.raw_page(meter, gte, lte, offset, limit, descending)
        return count, map(self.convert, rows)

    def raw_page(
        self, meter: str, gte: dt.datetime | None, lte: dt.datetime | None, offset: int, limit: int, descending: bool
    ) -> tuple[int, list[dict[str, Any]]]:
        """page(), its rows as InfluxQL gave them ({time (Unix s), column: value})."""
        plan = self._plan(gte, lte)
        direct = offset < self.direct_offset
        statements = self._count_statements(meter, plan, by_span=not direct)  # a deep page: where to look
        counted = len(statements)
        edge = self._edge(meter, plan, descending, offset + limit) if direct else None
        if direct:
            # The page comes with the counts, read near the end it starts from: a range over all of
            # history costs a cursor per field per shard even for LIMIT 1, and minutes are
            # aggregated over the whole range they are asked for.
            start, stop = edge or (plan.start, plan.stop)
            statements.append(self._select(meter, start, stop, descending, limit, offset))
            if edge and not descending and gte is None:  # the meter's first point, as remembered
                statements.append(
                    f"SELECT {ident(self.kind.counted)} FROM {ident(self.kind.measurement)}"
                    f" {self.client.meter_between(meter, plan.start, edge[0])} LIMIT 1"
                )
        results = self.client.influxql(statements)
        self._take_counts(meter, plan, results[:counted])
        total = plan.total
        if not direct:
            return total, self._located(meter, plan, results[0] if plan.has_index else None, offset, limit, descending)
        rows = self._raw_rows(results[counted], limit, offset)
        earlier = len(results) > counted + 1 and any(found.values for found in results[counted + 1])
        if edge and (len(rows) < min(limit, total - offset) or earlier):
            # The end did not hold the page (sparse rows, an import of older ones since the first
            # point was remembered): located through the index, or the whole (then small) range.
            self._first.pop(meter, None)
            if plan.has_index:
                located = self._located(meter, plan, None, offset, limit, descending)
                if descending and offset == 0 and lte is None and located:
                    self._remember_last(meter, dt.datetime.fromtimestamp(int(located[0]["time"]), dt.timezone.utc))
                return total, located
            (series,) = self.client.influxql([self._select(meter, plan.start, plan.stop, descending, limit, offset)])
            rows = self._raw_rows(series, limit, offset)
        return total, rows

    def _located(
        self, meter: str, plan: _Plan, span_sums: list[Series] | None, offset: int, limit: int, descending: bool
    ) -> list[dict[str, Any]]:
        """A page found through the index: from the hour of its first row to the end of the hour of
        its last, skipping less than an hour's rows."""
        total = plan.total
        if offset >= total:
            return []
        first, last = page_rows(total, offset, limit, descending)
        if span_sums is None and plan.has_index:
            (span_sums,) = self.client.influxql([self._index_sums(meter, plan, by_span=True)])
        spans = _span_counts(span_sums or [], plan.corrections or {})
        hours: dict[dt.datetime, dict[int, int]] = {}  # the hour counts of a span, read once per page
        try:
            start, skip = self._locate(meter, plan, spans, first, hours)
            stop = self._locate_stop(meter, plan, spans, last, hours)
        except LookupError:  # a write raced the count: the next request sees the new count
            return []
        (rows,) = self.client.influxql([self._select(meter, start, stop, False, last - first + 1, skip)])
        found = self._raw_rows(rows, last - first + 1, skip)
        return found[::-1] if descending else found

    def _edge(self, meter: str, plan: _Plan, descending: bool, rows: int) -> tuple[dt.datetime, dt.datetime] | None:
        """The stretch at the end of the range a page starts from (a day of readings, or as many
        minutes as the page needs), or None when the range is no wider."""
        width = dt.timedelta(minutes=rows + 1) if self.kind.per_minute else EDGE
        if plan.stop - plan.start <= width:
            return None
        align = self.kind.align
        if descending:  # an open end: before now (or the newest row, when remembered), and whatever a fast
            # meter clock wrote after it; a window that holds too few rows is noticed and located instead
            end = plan.stop if plan.stop < LATEST else self._remembered_last(meter)
            return max(plan.start, align(end - width)), plan.stop
        first = plan.start if plan.start > EARLIEST else self._first_point(meter)
        return (align(first), min(plan.stop, align(first) + width)) if first else None

    def _remembered_last(self, meter: str) -> dt.datetime:
        return _remembered(self._last, meter) or dt.datetime.now(dt.timezone.utc)

    def _remember_last(self, meter: str, newest: dt.datetime) -> None:
        """A meter's newest row lies well before now: remember a minute past it (past its row, also
        for minutes) as the open end to look back from."""
        self._last[meter] = (newest + MINUTE, time.monotonic())

    def _first_point(self, meter: str) -> dt.datetime | None:
        """When a meter's first point is, remembered a minute (each use checks nothing is earlier)."""
        cached = _remembered(self._first, meter)
        if cached:
            return cached
        (series,) = self.client.influxql(
            [
                f"SELECT {ident(self.kind.counted)} FROM {ident(self.kind.measurement)}"
                f" WHERE {self.client.meter_is(meter)} ORDER BY time ASC LIMIT 1"
            ]
        )
        first = next(
            (dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc) for found in series for row in found.rows()),
            None,
        )
        if first:
            self._first[meter] = (first, time.monotonic())
        return first

    def _select(
        self, meter: str, start: dt.datetime, stop: dt.datetime, descending: bool, limit: int, offset: int
    ) -> str:
        return self.kind.page(self.client.meter_between(meter, start, stop), descending, limit, offset)

    def _index_sums(self, meter: str, plan: _Plan, by_span: bool) -> str:
        """The index's rows of the proven hours summed (by_span: per span)."""
        group = f" GROUP BY time({int(SPAN.total_seconds())}s) fill(none)" if by_span else ""
        return (
            f"SELECT sum({ident(self.kind.index_field)}) FROM {self._stats_hour} "
            f"{self.client.meter_between(meter, plan.indexed_start, plan.indexed_stop)}{group}"
        )

    def _locate(
        self, meter: str, plan: _Plan, spans: list[tuple[int, int]], row: int, hours: dict[dt.datetime, dict[int, int]]
    ) -> tuple[dt.datetime, int]:
        """Row number `row` (0-based, ascending) -> (a time, how many rows from there to skip)."""
        if row < plan.head or not plan.has_index:
            return plan.start, row
        row -= plan.head
        if row >= plan.indexed:
            return plan.indexed_stop, row - plan.indexed
        in_span = row_in(spans, row)
        if in_span:
            span_start = dt.datetime.fromtimestamp(in_span[0], dt.timezone.utc)
            if span_start not in hours:
                hours[span_start] = self._hour_counts(meter, plan, span_start, plan.corrections or {})
            in_hour = row_in(sorted(hours[span_start].items()), in_span[1])
            if in_hour:
                return dt.datetime.fromtimestamp(in_hour[0], dt.timezone.utc), in_hour[1]
        raise LookupError("the index changed while a page was located")  # a write raced the count

    def _locate_stop(
        self, meter: str, plan: _Plan, spans: list[tuple[int, int]], row: int, hours: dict[dt.datetime, dict[int, int]]
    ) -> dt.datetime:
        """Where a page whose last row is `row` may stop reading: the end of that row's hour."""
        if not plan.has_index or row >= plan.head + plan.indexed:
            return plan.stop
        if row < plan.head:
            return plan.indexed_start
        return self._locate(meter, plan, spans, row, hours)[0] + HOUR

    def _hour_counts(self, meter: str, plan: _Plan, span: dt.datetime, corrections: dict[int, int]) -> dict[int, int]:
        """hour (Unix s) -> rows, for the indexed hours of one span (pending hours corrected)."""
        start, stop = max(span, plan.indexed_start), min(span + SPAN, plan.indexed_stop)
        field = self.kind.index_field
        (hours,) = self.client.influxql(
            [f"SELECT {ident(field)} FROM {self._stats_hour} {self.client.meter_between(meter, start, stop)}"]
        )
        counts = _hour_sums(hours, field)
        for hour, correction in corrections.items():
            if int(start.timestamp()) <= hour < int(stop.timestamp()):
                counts[hour] = counts.get(hour, 0) + correction
        return counts

    def newest_after(self, meter: str, after: dt.datetime | None, limit: int) -> list[Row]:
        """The newest `limit` rows of a meter later than `after` (None: the newest ones), oldest
        first (what MQTT publishes each second)."""
        (series,) = self.client.influxql(
            [self._select(meter, (after + SECOND) if after else EARLIEST, LATEST, True, limit, 0)]
        )
        return list(self._rows(series, limit))[::-1]

    def _rows(self, series: list[Series], limit: int | None = None, offset: int = 0) -> Iterator[Row]:
        """The rows of a page read with _select(limit, offset), converted."""
        return map(self.convert, self.kind.rows(series, limit, offset))

    def _raw_rows(self, series: list[Series], limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        return list(self.kind.rows(series, limit, offset))


class ReadingQueries(IndexedRows):
    """The readings: pages and counts, single readings, export."""

    def __init__(self, client: InfluxClient, index: CountIndex, proof: Proof, schema: ReadingSchema = SCHEMA):
        super().__init__(client, index, READINGS, proof, self.reading_row)
        self.schema = schema
        self._columns = [(spec.name, schema.bits[spec.name], spec.kind is Kind.DATETIME) for spec in schema.fields]
        self._api_columns = [column for column in self._columns if schema.by_name[column[0]].in_api]

    def watermark(self) -> dt.datetime | None:
        return self.proof.get()[0]

    def reading_row(self, row: dict[str, Any]) -> Row:
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

    def columns(self, rows: list[dict[str, Any]]) -> tuple[list[int], dict[str, list[Any]]]:
        """Rows of raw_page() a column at a time, for formatting a page at once: (times in Unix s,
        field -> values, None where a reading lacks the field). Datetime fields stay Unix s."""
        masks = [-1 if (present := row.get(lineprotocol.PRESENT_FIELD)) is None else int(present) for row in rows]
        shared = masks[0] if len(set(masks)) == 1 else None  # the usual page: readings with the same fields
        columns: dict[str, list[Any]] = {}
        for name, bit, _ in self._api_columns:
            if shared is not None:
                columns[name] = [row.get(name) for row in rows] if shared & bit else [None] * len(rows)
            else:
                columns[name] = [
                    value if mask & bit else None for value, mask in zip([row.get(name) for row in rows], masks)
                ]
        return [int(row["time"]) for row in rows], columns

    # --- single readings --------------------------------------------------------------------------

    def latest(
        self, meter: str, before: dt.datetime | None = None, after: dt.datetime | None = None, first: bool = False
    ) -> Row | None:
        """The newest (or with first=True the oldest) reading of a meter in [after, before).

        It looks in the day beside the bound that decides (before, or now: the newest reading when
        remembered; after for the oldest) first and in the rest only when that day has none:
        InfluxQL opens a cursor per shard and field of the range, so a reading over months of shards
        costs ~30 ms, one of a day ~1 ms."""
        start, stop = after or EARLIEST, before or LATEST
        if first:
            split = start + EDGE if after else start
        else:
            split = (before or self._remembered_last(meter)) - EDGE
        if not start < split < stop:
            return self._one(meter, start, stop, first)
        near, far = ((start, split), (split, stop)) if first else ((split, stop), (start, split))
        found = self._one(meter, *near, first)
        if found is None:
            found = self._one(meter, *far, first)
            if found and not first and before is None:  # a meter that stopped reporting a while ago
                self._remember_last(meter, found["_time"])
        return found

    def _one(self, meter: str, start: dt.datetime, stop: dt.datetime, first: bool) -> Row | None:
        (series,) = self.client.influxql([self._select(meter, start, stop, not first, 1, 0)])
        return next(self._rows(series), None)

    def minute_power(self, meter: str, start: dt.datetime, stop: dt.datetime) -> list[tuple[int, float, float]]:
        """Mean power delivered and returned (kW) per minute with readings in [start, stop): (minute
        start in Unix s, delivered, returned). Two columns only: the page's day of power."""
        where = self.client.meter_between(meter, start, stop)
        (series,) = self.client.influxql(
            [
                "SELECT mean(electricity_currently_delivered) AS d, mean(electricity_currently_returned) AS r"
                f" FROM {ident(lineprotocol.READING)} {where} GROUP BY time(1m) fill(none)"
            ]
        )
        return [(int(row["time"]), row["d"] or 0.0, row["r"] or 0.0) for found in series for row in found.rows()]

    def between(self, meter: str, start: dt.datetime, stop: dt.datetime) -> Iterator[Row]:
        """Every reading of a meter in [start, stop), oldest first (export; callers chunk by day)."""
        where = self.client.meter_between(meter, start, stop)
        (series,) = self.client.influxql([f"SELECT * FROM {ident(lineprotocol.READING)} {where} ORDER BY time ASC"])
        return self._rows(series)

    def latest_gas(
        self, meter: str, count: int = 2, before: dt.datetime | None = None
    ) -> list[tuple[dt.datetime, float]]:
        """The newest gas positions (time booked, m3) before `before`, newest first."""
        (series,) = self.client.influxql(
            [
                f"SELECT {ident(lineprotocol.GAS_FIELD)} FROM {ident(lineprotocol.GAS)} "
                f"{self.client.meter_between(meter, EARLIEST, before or LATEST)} ORDER BY time DESC LIMIT {count}"
            ]
        )
        return [
            (dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc), float(row[lineprotocol.GAS_FIELD]))
            for found in series
            for row in found.rows()
        ]

    def time_range(self) -> tuple[dt.datetime, dt.datetime] | None:
        """Time of the first and the last reading of any meter."""
        first, last = self.index.first_reading_time(), self.index.last_reading_time()
        return (first, last) if first and last else None


class MinuteQueries(IndexedRows):
    """consumption/electricity: one row per minute with readings, its time the minute's end (as
    DSMR-reader's read_at), so its filters become whole-minute bounds on the readings."""

    def __init__(self, client: InfluxClient, index: CountIndex, proof: Proof, schema: ReadingSchema = SCHEMA):
        super().__init__(client, index, minute_kind(schema), proof, self.minute_row)

    @staticmethod
    def minute_row(row: dict[str, Any]) -> Row:
        out: Row = {key: value for key, value in row.items() if key != "time"}
        out["_time"] = dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc) + MINUTE
        return out

    def page_by_end(
        self, meter: str, gte: dt.datetime | None, lte: dt.datetime | None, offset: int, limit: int, descending: bool
    ) -> tuple[int, Iterator[Row]]:
        """Minutes whose end (read_at) is in [gte, lte]: the readings of the minutes starting in
        [ceil(gte) - 1 min, floor(lte) - 1 min]."""
        start = _ceil_minute(gte) - MINUTE if gte else None
        stop = _floor_minute(lte) - SECOND if lte else None
        if start and stop and stop < start:
            return 0, iter(())
        return self.page(meter, start, stop, offset, limit, descending)


class GasQueries(IndexedRows):
    """consumption/gas: one row per gas value, at the time it is booked (as the statistics)."""

    def __init__(self, client: InfluxClient, index: CountIndex, proof: Proof):
        super().__init__(client, index, GAS_VALUES, proof, self.gas_row)

    @staticmethod
    def gas_row(row: dict[str, Any]) -> Row:
        return {
            "_time": dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc),
            "delivered": float(row[lineprotocol.GAS_FIELD]),
        }

    def before(self, meter: str, moment: dt.datetime) -> float | None:
        """The gas value booked last before `moment` (a page's first row differs from it)."""
        (series,) = self.client.influxql(
            [
                f"SELECT {ident(lineprotocol.GAS_FIELD)} FROM {ident(lineprotocol.GAS)} "
                f"{self.client.meter_between(meter, moment - LOOKBACK_DELTA, moment)} ORDER BY time DESC LIMIT 1"
            ]
        )
        return next((float(row[lineprotocol.GAS_FIELD]) for found in series for row in found.rows()), None)


def _hour_sums(series: list[Series], field: str) -> dict[int, int]:
    """hour (Unix s) -> its count in the index rows; added up where a named meter's ids both have
    a row for the hour (a meter replacement)."""
    sums: dict[int, int] = {}
    for found in series:
        for row in found.rows():
            hour = int(row["time"])
            sums[hour] = sums.get(hour, 0) + int(row[field] or 0)
    return sums


def _span_counts(span_sums: list[Series], corrections: dict[int, int]) -> list[tuple[int, int]]:
    """(span start in Unix s, rows), oldest first: the index's span sums, pending hours corrected."""
    spans = {int(span["time"]): int(span["sum"] or 0) for found in span_sums for span in found.rows()}
    width = int(SPAN.total_seconds())
    for hour, correction in corrections.items():  # pending hours may have no index row yet
        span = hour - hour % width
        spans[span] = spans.get(span, 0) + correction
    return sorted(spans.items())


def _remembered(cache: dict[str, tuple[dt.datetime, float]], meter: str) -> dt.datetime | None:
    """A moment remembered for a meter less than REMEMBERED seconds ago, else None."""
    cached = cache.get(meter)
    return cached[0] if cached and time.monotonic() - cached[1] < REMEMBERED else None


def _floor_minute(moment: dt.datetime) -> dt.datetime:
    return moment.replace(second=0, microsecond=0)


def _ceil_minute(moment: dt.datetime) -> dt.datetime:
    floor = _floor_minute(moment)
    return floor if floor == moment else floor + MINUTE


def _sum(series: list[Series]) -> int:
    """The total of a sum, or of its per-span sums."""
    return sum(int(row["sum"] or 0) for found in series for row in found.rows())


def _number(series: list[Series]) -> int:
    for found in series:
        for row in found.rows():
            for key, value in row.items():
                if key != "time":
                    return int(value or 0)
    return 0
