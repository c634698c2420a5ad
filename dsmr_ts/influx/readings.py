"""Reading queries that stay fast at any size: exact counts and pages without scanning history.

The count index: for every complete UTC hour with readings, the hour statistics row in
`dsmr_stats` carries `reading_count` (see tasks.py, which writes it). It is kept exact by:
- the hourly InfluxDB task;
- refresh_counts(): before answering, hours completed since the newest index row are computed
  (one pushed-down pass over those hours only), in case the task has not run (yet);
- Store.repair_statistics(): a write into an already complete hour recomputes it at once.

A range [gte, lte] then splits into a partial head hour, whole indexed hours, and a tail (partial
last hour and the current hour). Only head and tail are counted from raw points; a page is
located through the index, so its query reads the page's rows plus at most two edge hours.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from dsmr_ts.influx import schema
from dsmr_ts.influx.tasks import COUNT_FIELD, COUNTED_FIELD, HOUR_MEASUREMENT

if TYPE_CHECKING:
    from dsmr_ts.influx.store import Store

HOUR = dt.timedelta(hours=1)
SECOND = dt.timedelta(seconds=1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

_READINGS = f'r._measurement == "{schema.READING}" and r.meter == meter'
_COUNTED = f'{_READINGS} and r._field == "{COUNTED_FIELD}"'
_INDEX = f'r._measurement == "{HOUR_MEASUREMENT}" and r._field == "{COUNT_FIELD}" and r.meter == meter'


def floor_hour(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: dt.datetime) -> dt.datetime:
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


@dataclass
class Span:
    """[start, stop) of a time range, and how many readings it holds."""

    start: dt.datetime
    stop: dt.datetime
    count: int
    indexed: bool  # True: whole hours counted by the index; False: raw points


class ReadingQueries:
    """Used through Store; `query` runs Flux with extern params and returns rows as dicts."""

    def __init__(self, store: "Store"):
        self.store = store
        self._fresh_until: dict[str, dt.datetime] = {}
        self._lock = threading.Lock()

    # --- the count index ---------------------------------------------------------------------

    def refresh_counts(self, meter: str, now: dt.datetime | None = None) -> None:
        """Index every complete hour up to now's hour (skipped when this process already did)."""
        boundary = floor_hour(now or dt.datetime.now(dt.timezone.utc))
        if self._fresh_until.get(meter, EPOCH) >= boundary:
            return
        rows = self.store._query(
            f"from(bucket: stats) |> range(start: 0, stop: boundary) |> filter(fn: (r) => {_INDEX}) |> last()",
            {"meter": meter, "boundary": boundary},
        )
        if rows:
            # Recount the newest indexed hour too: cheap, and it heals a count cut short by a crash.
            start = rows[0]["_time"]
        else:
            first = self.store._query(
                f"from(bucket: bucket) |> range(start: 0, stop: boundary) |> filter(fn: (r) => {_COUNTED}) |> first()",
                {"meter": meter, "boundary": boundary},
            )
            start = floor_hour(first[0]["_time"]) if first else boundary
        if start < boundary:
            self._write_counts(meter, start, boundary)
        with self._lock:
            self._fresh_until[meter] = boundary

    def _write_counts(self, meter: str, start: dt.datetime, stop: dt.datetime) -> None:
        # The hour statistics carry reading_count: one writer for the index and the statistics.
        self.store.recompute_statistics(start, stop, meter)

    # --- counting ------------------------------------------------------------------------------

    def spans(
        self, meter: str, gte: dt.datetime | None, lte: dt.datetime | None, now: dt.datetime | None = None
    ) -> list[Span]:
        """Head (raw), whole hours (index), tail (raw) covering [gte, lte]; empty spans left out."""
        now = now or dt.datetime.now(dt.timezone.utc)
        self.refresh_counts(meter, now)
        start = gte or EPOCH
        stop = (lte + SECOND) if lte else max(now, floor_hour(now) + HOUR) + dt.timedelta(days=2)
        if stop <= start:
            return []
        first_whole = ceil_hour(start)
        end_whole = min(floor_hour(stop), floor_hour(now))
        if first_whole >= end_whole:
            spans = [Span(start, stop, 0, False)]
        else:
            spans = [
                Span(start, first_whole, 0, False),
                Span(first_whole, end_whole, 0, True),
                Span(end_whole, stop, 0, False),
            ]
        spans = [span for span in spans if span.stop > span.start]
        for span, count in zip(spans, self._span_counts(meter, spans)):
            span.count = count
        return [span for span in spans if span.count > 0]

    def _span_counts(self, meter: str, spans: list[Span]) -> list[int]:
        """Count every span in one Flux script: raw spans with a pushed-down count, indexed spans
        by summing their hour rows."""
        if not spans:
            return []
        parts, params = [], {"meter": meter}
        for i, span in enumerate(spans):
            source, predicate, aggregate = ("stats", _INDEX, "sum") if span.indexed else ("bucket", _COUNTED, "count")
            parts.append(
                f"p{i} = from(bucket: {source}) |> range(start: start{i}, stop: stop{i})"
                f" |> filter(fn: (r) => {predicate}) |> {aggregate}()"
                f' |> keep(columns: ["_value"]) |> set(key: "part", value: "{i}")'
            )
            params[f"start{i}"], params[f"stop{i}"] = span.start, span.stop
        names = [f"p{i}" for i in range(len(spans))]
        result = f"union(tables: [{', '.join(names)}])" if len(names) > 1 else names[0]  # union needs two
        flux = "\n".join(parts) + "\n" + result
        counts = [0] * len(spans)
        for row in self.store._query(flux, params):
            counts[int(row["part"])] = int(row["_value"])
        return counts

    def count(self, meter: str, gte: dt.datetime | None, lte: dt.datetime | None) -> int:
        return sum(span.count for span in self.spans(meter, gte, lte))

    def _raw_count(self, meter: str, start: dt.datetime, stop: dt.datetime) -> int:
        if stop <= start:
            return 0
        rows = self.store._query(
            f"from(bucket: bucket) |> range(start: start, stop: stop) |> filter(fn: (r) => {_COUNTED}) |> count()",
            {"meter": meter, "start": start, "stop": stop},
        )
        return int(rows[0]["_value"]) if rows else 0

    def brute_force_count(self, meter: str, gte: dt.datetime | None, lte: dt.datetime | None) -> int:
        """Count every raw point in range (for tests and checks, never on a request)."""
        stop = (lte + SECOND) if lte else dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc)
        return self._raw_count(meter, gte or EPOCH, stop)

    # --- paging --------------------------------------------------------------------------------

    def _locate(self, meter: str, spans: list[Span], index: int) -> tuple[dt.datetime, dt.datetime, int]:
        """Row number `index` (0-based, ascending) -> (start, stop) of a small range holding it,
        and how many rows of that range come before it."""
        for span in spans:
            if index < span.count:
                if not span.indexed:
                    return span.start, span.stop, index
                rows = self.store._query(
                    f"""
from(bucket: stats)
  |> range(start: start, stop: stop)
  |> filter(fn: (r) => {_INDEX})
  |> keep(columns: ["_time", "_value"])
  |> group()
  |> sort(columns: ["_time"])
  |> duplicate(column: "_value", as: "hour_count")
  |> cumulativeSum()
  |> filter(fn: (r) => r._value > target)
  |> first()
""",
                    {"meter": meter, "start": span.start, "stop": span.stop, "target": index},
                )
                row = rows[0]
                before = int(row["_value"]) - int(row["hour_count"])
                return row["_time"], row["_time"] + HOUR, index - before
            index -= span.count
        raise IndexError(index)

    def page(
        self,
        meter: str,
        gte: dt.datetime | None,
        lte: dt.datetime | None,
        offset: int,
        limit: int,
        descending: bool,
    ) -> tuple[int, Iterator[dict]]:
        """(exact count, rows of the page as dicts with _time and the fields, in the order asked)."""
        spans = self.spans(meter, gte, lte)
        total = sum(span.count for span in spans)
        if offset >= total:
            return total, iter(())
        # Translate to ascending row numbers [first, last].
        if descending:
            first, last = max(0, total - offset - limit), total - 1 - offset
        else:
            first, last = offset, min(total, offset + limit) - 1
        first_start, first_stop, first_skip = self._locate(meter, spans, first)
        last_start, last_stop, last_skip = self._locate(meter, spans, last)
        # The page's first and last timestamps, each found inside its own small range (one hour, or
        # an edge span) on one field, without a pivot; group() + sort() make the order explicit.
        # (Not with findRecord in the page query: with sort |> limit(offset:) it returns null here.)
        locate = f"""from(bucket: bucket)
  |> range(start: {{start}}, stop: {{stop}})
  |> filter(fn: (r) => {_COUNTED})
  |> keep(columns: ["_time"])
  |> group()
  |> sort(columns: ["_time"])
  |> limit(n: 1, offset: {{skip}})
  |> set(key: "edge", value: "{{edge}}")"""
        bounds_flux = (
            f"first = {locate.format(start='firstStart', stop='firstStop', skip='firstSkip', edge='first')}\n"
            f"last = {locate.format(start='lastStart', stop='lastStop', skip='lastSkip', edge='last')}\n"
            "union(tables: [first, last])"
        )
        bounds = {
            row["edge"]: row["_time"]
            for row in self.store._query(
                bounds_flux,
                {
                    "meter": meter,
                    "firstStart": max(first_start, gte) if gte else first_start,
                    "firstStop": first_stop,
                    "firstSkip": first_skip,
                    "lastStart": max(last_start, gte) if gte else last_start,
                    "lastStop": min(last_stop, lte + SECOND) if lte else last_stop,
                    "lastSkip": last_skip,
                },
            )
        }
        if len(bounds) < 2:  # the data changed between counting and reading: nothing to page
            return total, iter(())
        flux = f"""
from(bucket: bucket)
  |> range(start: start, stop: stop)
  |> filter(fn: (r) => {_READINGS})
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
  |> sort(columns: ["_time"], desc: {"true" if descending else "false"})
"""
        params = {"meter": meter, "start": bounds["first"], "stop": bounds["last"] + SECOND}
        return total, self.store._stream(flux, params)
