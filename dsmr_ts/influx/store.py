"""The store: the one object the API and the reader use to reach InfluxDB.

Resources call its methods with plain Python values and get plain values back; Flux text
and the influxdb-client live here and in the modules next to it, nowhere else.
"""

from __future__ import annotations

import logging

import contextlib
import datetime as dt
import json
import time
from typing import Iterator

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import SYNCHRONOUS
from urllib3.exceptions import HTTPError

from dsmr_ts.config import InfluxConfig
from dsmr_ts.influx import schema
from dsmr_ts.influx import tasks
from dsmr_ts.influx.readings import ReadingQueries, floor_hour
from dsmr_ts.influx.tasks import COUNTED_FIELD
from dsmr_ts.telegram import DEFAULT_METER, Reading, Telegram

log = logging.getLogger(__name__)

DEFAULT_METER_TTL = 60.0  # seconds


class StoreUnavailable(Exception):
    """InfluxDB could not be reached or refused the request (the caller answers 503).

    `summary` is short and fit for a client; str() adds InfluxDB's own message for the log."""

    def __init__(self, summary: str, detail: str = ""):
        super().__init__(f"{summary}: {detail}" if detail else summary)
        self.summary = summary


class Store:
    def __init__(self, settings: InfluxConfig, timeout_ms: int = 30_000, timezone: str = "Europe/Amsterdam"):
        self.settings = settings
        self.timezone = timezone  # local days of the day statistics
        self.client = InfluxDBClient(
            url=settings.url, token=settings.token, org=settings.org, timeout=timeout_ms, enable_gzip=False
        )
        # Synchronous writes: a 201 to a client means the point is in InfluxDB's WAL.
        self.write_api = self.client.write_api(write_options=SYNCHRONOUS)
        self.query_api = self.client.query_api()
        self._default_meter: tuple[str, float] | None = None
        self.readings = ReadingQueries(self)

    def ping(self) -> bool:
        """True when influxd answers; never raises."""
        try:
            return bool(self.client.ping())
        except Exception:  # noqa: BLE001 - any failure means "not reachable" to a health check
            return False

    def health(self) -> tuple[str, str]:
        """("ok" | "unreachable" | "unauthorized", what an operator should know). An influxd that
        answers but refuses the configured token is not healthy: every write would fail."""
        if not self.ping():
            return "unreachable", f"InfluxDB does not answer at {self.settings.url}"
        try:
            self.client.buckets_api().find_bucket_by_name(self.settings.bucket)
        except InfluxDBError as exc:
            status = getattr(exc, "status", None)
            if status in (401, 403):
                return "unauthorized", (f"InfluxDB refused influxdb.token (HTTP {status}); run `dsmr-ts setup`"
                                        " to replace it")
            return "unreachable", f"InfluxDB answered HTTP {status}"
        except (HTTPError, OSError):
            return "unreachable", f"InfluxDB does not answer at {self.settings.url}"
        return "ok", ""

    # --- writes ------------------------------------------------------------------------------

    def write_lines(self, lines: list[str]) -> None:
        """One synchronous write: every line is stored, or (on a parse error) none is."""
        with _store_errors():
            self.write_api.write(
                bucket=self.settings.bucket, org=self.settings.org, record=lines, write_precision=WritePrecision.NS
            )

    def write_telegram(self, telegram: Telegram) -> None:
        """The reading and the meter statistics it carried, in one write."""
        reading = telegram.reading
        lines = [
            schema.reading_line(reading),
            schema.gas_line(reading, hourly=telegram.hourly_gas),
            schema.statistics_line(reading.meter, reading.timestamp, telegram.statistics),
        ]
        self.write_lines([line for line in lines if line])
        self.repair_statistics(reading, telegram.hourly_gas)

    def replace_reading(self, reading: Reading) -> None:
        """Store a reading so that it is the only one at its meter+timestamp.

        A write merges fields with an existing point; when that point has fields the new reading
        lacks, it is deleted first so nothing of the old reading survives (rare: a corrected v2 POST).
        """
        existing = self.reading_field_names(reading.meter, reading.timestamp)
        if existing - set(schema.reading_fields(reading)):
            self._delete_reading(reading.meter, reading.timestamp)
        self.write_lines([line for line in (schema.reading_line(reading), schema.gas_line(reading, False)) if line])
        self.repair_statistics(reading, hourly_gas=False)

    # --- statistics ----------------------------------------------------------------------------

    def recompute_statistics(self, start: dt.datetime, stop: dt.datetime, meter: str | None = None) -> None:
        """Hour statistics of [start, stop) and the local days they touch (see tasks.py)."""
        tasks.recompute(self._query, self.settings, self.timezone, start, stop, meter)

    def repair_statistics(self, reading: Reading, hourly_gas: bool, now: dt.datetime | None = None) -> None:
        """After a write: when it landed in a complete hour (late data), recompute that hour, the
        hours up to the meter's next reading (their baseline may have changed) and their days.
        Writes into the current hour cost nothing here; the hourly task covers them."""
        current = floor_hour(now or dt.datetime.now(dt.timezone.utc))
        moments = [reading.timestamp]
        if reading.extra_device_timestamp is not None:
            moments.append(reading.extra_device_timestamp - dt.timedelta(hours=1 if hourly_gas else 0))
        start = floor_hour(min(moments))
        if start >= current:
            return
        after = floor_hour(max(moments)) + dt.timedelta(hours=1)
        following = after < current and self._query(
            f"from(bucket: bucket) |> range(start: after, stop: current)"
            f' |> filter(fn: (r) => r._measurement == "{schema.READING}" and r.meter == meter'
            f' and r._field == "{COUNTED_FIELD}") |> first()',
            {"after": after, "current": current, "meter": reading.meter},
        )
        stop = floor_hour(following[0]["_time"]) if following else floor_hour(max(moments))
        self.recompute_statistics(start, min(stop + dt.timedelta(hours=1), current), reading.meter)

    def statistics_page(
        self,
        measurement: str,
        meter: str,
        start: dt.datetime | None,
        stop: dt.datetime | None,
        offset: int,
        limit: int,
        descending: bool,
    ) -> tuple[int, list[dict[str, object]]]:
        """(count, rows) of `hour` or `day` statistics with time in [start, stop). Small data
        (8760 hours a year), so sorting and limiting in Flux is cheap."""
        assert measurement in (tasks.HOUR_MEASUREMENT, tasks.DAY_MEASUREMENT)
        params = {
            "meter": meter,
            "start": start or dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc),
            "stop": stop or dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc),
            "offset": offset,
            "n": limit,
        }
        if params["stop"] <= params["start"]:
            return 0, []
        rows = f"""from(bucket: stats)
  |> range(start: start, stop: stop)
  |> filter(fn: (r) => r._measurement == "{measurement}" and r.meter == meter)"""
        flux = f"""
count = {rows}
  |> filter(fn: (r) => r._field == "{tasks.COUNT_FIELD}")
  |> group()
  |> count()
  |> set(key: "part", value: "count")
page = {rows}
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
  |> sort(columns: ["_time"], desc: {"true" if descending else "false"})
  |> limit(n: n, offset: offset)
  |> set(key: "part", value: "page")
union(tables: [count, page])
"""
        result = self._query(flux, params)
        count = next((int(r["_value"]) for r in result if r["part"] == "count"), 0)
        page = sorted((r for r in result if r["part"] == "page"), key=lambda r: r["_time"], reverse=descending)
        return count, page

    def count_rejected(self, meter: str = "unknown", when: dt.datetime | None = None) -> None:
        self.write_lines([schema.rejected_line(meter, when or dt.datetime.now(dt.timezone.utc))])

    def _delete_reading(self, meter: str, timestamp: dt.datetime) -> None:
        with _store_errors():
            self.client.delete_api().delete(
                start=timestamp,
                stop=timestamp,  # the range is inclusive at both ends
                predicate=f'_measurement="{schema.READING}" AND meter="{_predicate_value(meter)}"',
                bucket=self.settings.bucket,
                org=self.settings.org,
            )

    # --- reads -------------------------------------------------------------------------------

    def reading_field_names(self, meter: str, timestamp: dt.datetime) -> set[str]:
        query = f"""
from(bucket: bucket)
  |> range(start: t, stop: date.add(d: 1s, to: t))
  |> filter(fn: (r) => r._measurement == "{schema.READING}" and r.meter == meter)
  |> keep(columns: ["_field"])
"""
        rows = self._query("import \"date\"\n" + query, {"t": timestamp, "meter": meter})
        return {row["_field"] for row in rows}

    def reading_time_range(self) -> tuple[dt.datetime, dt.datetime] | None:
        """Time of the first and the last reading of any meter (pushed-down first/last)."""
        flux = f"""
readings = from(bucket: bucket) |> range(start: 0, stop: 2200-01-01T00:00:00Z)
  |> filter(fn: (r) => r._measurement == "{schema.READING}" and r._field == "{COUNTED_FIELD}")
union(tables: [readings |> first(), readings |> last()])
"""
        times = [row["_time"] for row in self._query(flux, {})]
        return (min(times), max(times)) if times else None

    def meters(self) -> list[str]:
        """Every meter that has readings (from the tag index: no data is read)."""
        query = f"""
import "influxdata/influxdb/schema"
schema.tagValues(bucket: bucket, tag: "meter", predicate: (r) => r._measurement == "{schema.READING}", start: 0)
"""
        return sorted(str(row["_value"]) for row in self._query(query, {}))

    def default_meter(self) -> str:
        """The meter a request means when it names none: the only one, or the one that reported
        last; 'default' while there are no readings. Cached briefly (asked on every request)."""
        now = time.monotonic()
        if self._default_meter and now - self._default_meter[1] < DEFAULT_METER_TTL:
            return self._default_meter[0]
        meters = self.meters()
        if len(meters) <= 1:
            meter = meters[0] if meters else DEFAULT_METER
        else:
            query = f"""
from(bucket: bucket)
  |> range(start: 0)
  |> filter(fn: (r) => r._measurement == "{schema.READING}" and r._field == "{COUNTED_FIELD}")
  |> last()
  |> group()
  |> sort(columns: ["_time"], desc: true)
  |> limit(n: 1)
"""
            rows = self._query(query, {})
            meter = str(rows[0]["meter"]) if rows else DEFAULT_METER
        if meters:
            self._default_meter = (meter, now)
        return meter

    def latest_reading(
        self, meter: str, before: dt.datetime | None = None, after: dt.datetime | None = None, first: bool = False
    ) -> dict[str, object] | None:
        """The newest (or with first=True the oldest) reading of a meter in [after, before), as
        {_time, field: value}; None when there is none. Pushed-down last()/first() per field."""
        flux = f"""
from(bucket: bucket)
  |> range(start: start, stop: stop)
  |> filter(fn: (r) => r._measurement == "{schema.READING}" and r.meter == meter)
  |> {"first" if first else "last"}()
"""
        params = {"meter": meter, "start": after or dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc),
                  "stop": before or dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc)}
        rows = self._query(flux, params)
        if not rows:
            return None
        edge = (min if first else max)(row["_time"] for row in rows)
        # first()/last() work per field; keep the fields of that one reading.
        return {"_time": edge, **{row["_field"]: row["_value"] for row in rows if row["_time"] == edge}}

    def latest_gas(self, meter: str, count: int = 2, before: dt.datetime | None = None) -> list[tuple[dt.datetime, float]]:
        """The newest gas positions (time booked, m3) before `before`, newest first."""
        found: list[tuple[dt.datetime, float]] = []
        stop = before or dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc)
        for _ in range(count):
            rows = self._query(
                f'from(bucket: bucket) |> range(start: 0, stop: stop) |> filter(fn: (r) => '
                f'r._measurement == "{schema.GAS}" and r._field == "{schema.GAS_FIELD}" and r.meter == meter) |> last()',
                {"meter": meter, "stop": stop},
            )
            if not rows:
                break
            found.append((rows[0]["_time"], float(rows[0]["_value"])))
            stop = rows[0]["_time"]
        return found

    def latest_statistics_time(self) -> dt.datetime | None:
        """When the newest hour statistic starts (any meter)."""
        rows = self._query(
            f'from(bucket: stats) |> range(start: 0) |> filter(fn: (r) => r._measurement == "{tasks.HOUR_MEASUREMENT}"'
            f' and r._field == "{tasks.COUNT_FIELD}") |> last() |> group() |> max(column: "_time")', {})
        return rows[0]["_time"] if rows else None

    def write_meter_statistics(self, meter: str, when: dt.datetime, statistics: dict[str, str | int]) -> None:
        line = schema.statistics_line(meter, when, statistics)
        if line:
            self.write_lines([line])

    def readings_between(self, meter: str, start: dt.datetime, stop: dt.datetime) -> Iterator[dict[str, object]]:
        """Every reading of a meter in [start, stop), oldest first, streamed (for export)."""
        flux = f"""
from(bucket: bucket)
  |> range(start: start, stop: stop)
  |> filter(fn: (r) => r._measurement == "{schema.READING}" and r.meter == meter)
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
"""
        return self._stream(flux, {"meter": meter, "start": start, "stop": stop})

    def import_cursor(self, source: str) -> dt.datetime | None:
        """How far an import from `source` got (its newest reading written)."""
        rows = self._query('from(bucket: stats) |> range(start: 0) |> filter(fn: (r) => r._measurement == "import"'
                           ' and r.source == source) |> last()', {"source": source})
        return dt.datetime.fromtimestamp(int(rows[0]["_value"]), dt.timezone.utc) if rows else None

    def save_import_cursor(self, source: str, reached: dt.datetime) -> None:
        self.write_stats_lines([f"import,source={schema.escape_tag(source)} reached={int(reached.timestamp())}i 0"])

    def write_stats_lines(self, lines: list[str]) -> None:
        with _store_errors():
            self.write_api.write(bucket=self.settings.stats_bucket, org=self.settings.org, record=lines,
                                 write_precision=WritePrecision.NS)

    def rejected_count(self) -> int:
        query = f"""
from(bucket: bucket)
  |> range(start: 0)
  |> filter(fn: (r) => r._measurement == "{schema.METER_STATISTICS}" and r._field == "{schema.REJECTED_FIELD}")
  |> group()
  |> sum()
"""
        rows = self._query(query, {})
        return int(rows[0]["_value"]) if rows else 0

    def latest_meter_statistics(self, meter: str) -> dict[str, object]:
        """The newest value of every meter statistic of one meter ({} when none), and `_time`:
        when the newest of them was written."""
        query = f"""
from(bucket: bucket)
  |> range(start: 0)
  |> filter(fn: (r) => r._measurement == "{schema.METER_STATISTICS}" and r.meter == meter
       and r._field != "{schema.REJECTED_FIELD}")
  |> last()
"""
        rows = self._query(query, {"meter": meter})
        found: dict[str, object] = {row["_field"]: row["_value"] for row in rows}
        if rows:
            found["_time"] = max(row["_time"] for row in rows)
        return found

    def _query(self, flux: str, params: dict[str, object]) -> list[dict[str, object]]:
        """Run Flux with `bucket`, `stats` and the params as extern variables; rows as plain dicts."""
        with _store_errors():
            tables = self.query_api.query(flux, org=self.settings.org, params=self._params(params))
        return [record.values for table in tables for record in table.records]

    def _stream(self, flux: str, params: dict[str, object]) -> Iterator[dict[str, object]]:
        """Like _query, but rows arrive one by one (constant memory for big pages).

        The request is sent before this returns, so an unreachable store raises here."""
        with _store_errors():
            records = self.query_api.query_stream(flux, org=self.settings.org, params=self._params(params))
            first = next(records, None)
        return self._rows(first, records)

    @staticmethod
    def _rows(first: object, records: Iterator) -> Iterator[dict[str, object]]:
        if first is None:
            return
        yield first.values
        for record in records:
            yield record.values

    def _params(self, params: dict[str, object]) -> dict[str, object]:
        return {"bucket": self.settings.bucket, "stats": self.settings.stats_bucket,
                **{name: _representable(value) for name, value in params.items()}}

    def close(self) -> None:
        self.client.close()


# InfluxDB times are int64 nanoseconds (1677..2262) and its integers int64. No reading is outside
# 1970..2200, so clamping a client's extreme date or offset there changes no answer, and keeps
# `day__gte=0854-04-07` or `offset=10**22` from becoming an InfluxDB error.
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc)
_INT_LIMIT = 2**62


def _representable(value: object) -> object:
    if isinstance(value, dt.datetime):
        return min(max(value, EARLIEST), LATEST)
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, -_INT_LIMIT), _INT_LIMIT)
    return value


def _predicate_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """Client and network failures become StoreUnavailable (secret-free: no token, no key)."""
    try:
        yield
    except (InfluxDBError, HTTPError, OSError) as exc:
        status = getattr(exc, "status", None) or getattr(getattr(exc, "response", None), "status", None)
        if not status:
            raise StoreUnavailable(f"InfluxDB unreachable ({exc.__class__.__name__})") from None
        raise StoreUnavailable(f"InfluxDB answered HTTP {status}", _influx_message(exc)) from None


def _influx_message(exc: BaseException) -> str:
    """InfluxDB's own error text (e.g. the Flux error) from an error response, if any."""
    body = getattr(exc, "body", None)
    try:
        return str(json.loads(body)["message"]) if body else ""
    except (ValueError, KeyError, TypeError):
        return ""
