"""Hour and day statistics: the Flux lives here once and serves the InfluxDB tasks, `dsmr-ts
regenerate`, imports and the repair of late data; plus the count index's watermark, the repair
job, and the statistics pages the API serves.

Hour statistics (measurement `hour` in the stats bucket, time = hour start, tag meter):
- usage electricity1/2, electricity1_returned/2_returned, gas: the last meter position before the
  hour's end minus the last position before its start, so no usage falls between two windows. The
  baseline is looked for at most LOOKBACK back (a meter silent for longer starts afresh, like a
  meter's very first hour, which counts from its first reading): no query reads all of history.
- positions at the hour's end, and reading_count (also the readings API's count index).
- a meter replacement (a position going down) counts 0 usage for that window; the next window
  continues from the new meter's position.
- gas comes from measurement `gas`, stored at ingest under the time the gas reading is booked, so it
  is aggregated like electricity. An hour without readings gets no row. Windows are pushed down to
  the storage engine (UTC hours; aggregateWindow right after range/filter).

Day statistics (measurement `day`, time = local midnight): the sum of that local day's hour rows
(23 or 25 hours on DST days), the positions of its last hour, and its reading count.

The count index is trusted only where it is proven complete: below the watermark
(`count_index complete_until`, Unix s) and in hours without a pending repair mark. Setup starts the
watermark; regenerate advances it; the housekeeping job of `dsmr-ts reader` moves it to the
scheduled time of the hour task's latest successful run (whose rows were all written when it
finished: a Flux script cannot order its own writes, so the task cannot vouch for itself). A write
into an ended hour marks that hour in the same write (lineprotocol.repair_lines); the repair job
recomputes marked hours within a minute, in batches, and marks them repaired.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.parse
import zoneinfo
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from influxdb_client import InfluxDBClient
from influxdb_client.domain.task_create_request import TaskCreateRequest
from influxdb_client.domain.task_update_request import TaskUpdateRequest

from dsmr_ts.config import Config, InfluxConfig
from dsmr_ts.fields import SCHEMA, ReadingSchema
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.client import LATEST, InfluxClient, StoreUnavailable, ident, meter_between, ns, quote

log = logging.getLogger(__name__)

HOUR_MEASUREMENT = "hour"
DAY_MEASUREMENT = "day"
COUNT_FIELD = "reading_count"
MINUTE_COUNT_FIELD = "minute_count"  # minutes with readings (consumption/electricity's rows)
GAS_COUNT_FIELD = "gas_count"  # gas values booked in the hour (consumption/gas's rows)
QUARTER_MEASUREMENT = "quarter"
# Every reading has this field (v1 and v2 require it), so counting it counts readings.
COUNTED_FIELD = "electricity_delivered_1"
INDEX_MEASUREMENT = "count_index"
WATERMARK_FIELD = "complete_until"
VERSION_FIELD = "version"
# What the hour rows hold: 1 reading_count; 2 also minute_count, gas_count (and quarter peaks).
# Setup regenerates a store built by an older version once.
INDEX_VERSION = 2
REPAIR_CURSOR = "repair_cursor"
LOOKBACK_DELTA = dt.timedelta(days=31)  # how far back an hour looks for the meter position before it
LOOKBACK = f"{LOOKBACK_DELTA.days}d"  # the same, as a Flux duration
CATCH_UP_DELTA = dt.timedelta(days=31)  # how far back one run of the hour task catches up after missed runs
CATCH_UP = f"{CATCH_UP_DELTA.days}d"
# The repair job reads the marks made since its last run began, and this much before: a write
# still in flight then is seen next time (readers of the marks look back as far).
REPAIR_SLACK = dt.timedelta(seconds=120)
HOUR = dt.timedelta(hours=1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# Deep pages are located by counts per span (InfluxQL windows start at the epoch), then read with a
# small OFFSET inside their span: InfluxQL's OFFSET reads every row it skips.
SPAN = dt.timedelta(days=30)
QUARTER_DIRECT_OFFSET = 2000  # quarter-hour rows InfluxQL may skip itself


def page_rows(count: int, offset: int, limit: int, descending: bool) -> tuple[int, int]:
    """The first and last row numbers, counted oldest first, of a page of `count` rows (offset < count)."""
    if descending:
        return max(0, count - offset - limit), count - 1 - offset
    return offset, min(count, offset + limit) - 1


def row_in(groups: Iterable[tuple[int, int]], row: int) -> tuple[int, int] | None:
    """Row number `row` across consecutive (key, rows) groups, oldest first -> (its group's key, its
    number inside that group); None past the last group."""
    for key, rows in groups:
        if row < rows:
            return key, row
        row -= rows
    return None


HOUR_TASK = "dsmr-ts hour statistics"
DAY_TASK = "dsmr-ts day statistics"
QUARTER_TASK = "dsmr-ts quarter-hour peaks"


def floor_hour(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def usage_fields(schema: ReadingSchema = SCHEMA) -> tuple[dict[str, str], dict[str, str]]:
    """(electricity position -> usage field, gas position -> usage field), from the field table."""
    gas = {name: usage for name, usage in schema.usage.items() if name == lineprotocol.GAS_FIELD}
    electricity = {name: usage for name, usage in schema.usage.items() if name not in gas}
    return electricity, gas


USAGE_FIELDS = tuple(SCHEMA.usage.values())
POSITION_FIELDS = tuple(SCHEMA.usage)


def _any_field(fields: Iterable[str]) -> str:
    return "(" + " or ".join(f'r._field == "{name}"' for name in fields) + ")"


def _rename(mapping: dict[str, str]) -> str:
    expression = "r._field"
    for old, new in mapping.items():
        expression = f'if r._field == "{old}" then "{new}" else {expression}'
    return expression


def _write_to(stats_bucket: str, name: str) -> str:
    """to() that does not send the written rows back as the query's answer: a recompute would
    only parse them to throw them away (30,000 rows for a year of hours)."""
    return f'to(bucket: {stats_bucket}) |> filter(fn: (r) => false) |> yield(name: "{name}")'


def hour_flux(
    start: str, stop: str, bucket: str, stats_bucket: str, meter_filter: str = "true", schema: ReadingSchema = SCHEMA
) -> str:
    """Flux that writes the hour statistics of [start, stop) (whole UTC hours).

    start/stop are Flux expressions (extern variables for regenerate, now()-based in the task);
    meter_filter narrows to one meter (an expression over r), for the repair of late data.
    """
    electricity_usage, gas_usage = usage_fields(schema)
    electricity = f'r._measurement == "{lineprotocol.READING}" and {_any_field(electricity_usage)}'
    gas = f'r._measurement == "{lineprotocol.GAS}" and r._field == "{lineprotocol.GAS_FIELD}"'
    counted = f'r._measurement == "{lineprotocol.READING}" and r._field == "{COUNTED_FIELD}"'
    b, s = json.dumps(bucket), json.dumps(stats_bucket)
    window = 'aggregateWindow(every: 1h, fn: {fn}, timeSrc: "_start", createEmpty: false)'

    def source(predicate: str) -> str:
        # Written out in full each time: a filter calling a Flux function is not pushed down.
        return (
            f"from(bucket: {b}) |> range(start: hourStart, stop: hourStop)"
            f" |> filter(fn: (r) => {predicate} and {meter_filter})"
        )

    return f"""
import "date"

hourStart = {start}
hourStop = {stop}
lookback = date.sub(d: {LOOKBACK}, from: hourStart)

// Positions at each hour's end: the last one in the hour (pushed down).
electricity = {source(electricity)} |> {window.format(fn="last")}
gas = {source(gas)} |> {window.format(fn="last")}
counts = {source(counted)}
  |> {window.format(fn="count")}
  |> set(key: "_field", value: "{COUNT_FIELD}")
// Minutes with readings (labelled by their start, so a minute stays in its own hour) and gas values.
minutes = {source(counted)}
  |> aggregateWindow(every: 1m, fn: count, timeSrc: "_start", createEmpty: false)
  |> {window.format(fn="count")}
  |> set(key: "_field", value: "{MINUTE_COUNT_FIELD}")
gasCounts = {source(gas)}
  |> {window.format(fn="count")}
  |> set(key: "_field", value: "{GAS_COUNT_FIELD}")

// Baselines: the last position before the range (at most {LOOKBACK} back), else a meter's first one.
before = from(bucket: {b})
  |> range(start: lookback, stop: hourStart)
  |> filter(fn: (r) => (({electricity}) or ({gas})) and {meter_filter})
  |> last()
  |> map(fn: (r) => ({{r with _time: date.sub(d: 1h, from: hourStart)}}))
firstEver = union(tables: [{source(electricity)} |> first(), {source(gas)} |> first()])
  |> map(fn: (r) => ({{r with _time: date.sub(d: 2h, from: hourStart)}}))

usage = union(tables: [firstEver, before, electricity, gas])
  |> group(columns: ["meter", "_field"])
  |> sort(columns: ["_time"])
  |> difference()
  |> filter(fn: (r) => r._time >= hourStart)
  |> map(fn: (r) => ({{r with _value: if r._value < 0.0 then 0.0 else r._value,
                       _field: {_rename({**electricity_usage, **gas_usage})}}}))

union(tables: [usage, electricity, gas, counts, minutes, gasCounts])
  |> set(key: "_measurement", value: "{HOUR_MEASUREMENT}")
  |> keep(columns: ["_time", "_measurement", "_field", "_value", "meter"])
  |> {_write_to(s, "hours")}
"""


def day_flux(
    start: str, stop: str, stats_bucket: str, timezone: str, meter_filter: str = "true", schema: ReadingSchema = SCHEMA
) -> str:
    """Flux that writes the day statistics of the local days in [start, stop) (local midnights)."""
    s = json.dumps(stats_bucket)
    window = (
        'aggregateWindow(every: 1d, fn: {fn}, timeSrc: "_start", createEmpty: false, '
        f"location: timezone.location(name: {json.dumps(timezone)}))"
    )
    return f"""
import "date"
import "timezone"

dayStart = {start}
dayStop = {stop}

hours = from(bucket: {s})
  |> range(start: dayStart, stop: dayStop)
  |> filter(fn: (r) => r._measurement == "{HOUR_MEASUREMENT}" and {meter_filter})
sums = hours |> filter(fn: (r) => {_any_field([*schema.usage.values(), COUNT_FIELD])}) |> {window.format(fn="sum")}
ends = hours |> filter(fn: (r) => {_any_field(schema.usage)}) |> {window.format(fn="last")}

union(tables: [sums, ends])
  |> set(key: "_measurement", value: "{DAY_MEASUREMENT}")
  |> keep(columns: ["_time", "_measurement", "_field", "_value", "meter"])
  |> {_write_to(s, "days")}
"""


def quarter_flux(
    start: str, stop: str, bucket: str, stats_bucket: str, meter_filter: str = "true", schema: ReadingSchema = SCHEMA
) -> str:
    """Flux that writes the quarter-hour peaks of [start, stop) (whole quarter hours), as
    DSMR-reader computes them: per quarter with at least 2 readings, the delivered meter positions
    (tariff 1 + 2) of its first and last reading; average_delivered (kW) = their difference x 3600
    / the seconds between them. Stored as measurement `quarter` (time = quarter start) with fields
    average_delivered, read_at_start and read_at_end (Unix s)."""
    delivered = [name for name, usage in schema.usage.items() if usage in ("electricity1", "electricity2")]
    b, s = json.dumps(bucket), json.dumps(stats_bucket)
    predicate = f'r._measurement == "{lineprotocol.READING}" and {_any_field(delivered)} and {meter_filter}'
    total = " + ".join(f"(if exists r.{name} then r.{name} else 0.0)" for name in delivered)

    def edge(selector: str, name: str) -> str:
        # window |> first/last is pushed down and keeps each selected reading's own _time. It
        # leaves a table per quarter, and Flux pays per table: regrouped at once, a year of
        # quarters takes a third of the time.
        return (
            f"from(bucket: {b}) |> range(start: quarterStart, stop: quarterStop)"
            f" |> filter(fn: (r) => {predicate}) |> window(every: 15m) |> {selector}()"
            f' |> group(columns: ["meter", "_field"]) |> set(key: "edge", value: "{name}")'
        )

    def field(name: str, value: str) -> str:
        # One to() per field: a float and an integer field cannot share a stream.
        return (
            f'peaks |> map(fn: (r) => ({{_time: r._start, _measurement: "{QUARTER_MEASUREMENT}", meter: r.meter,'
            f' _field: "{name}", _value: {value}}})) |> {_write_to(s, name)}'
        )

    return f"""
import "date"

quarterStop = {stop}
quarterStart = {start}

// The first (a) and last (b) reading of every quarter, one row each with the delivered total.
peaks = union(tables: [{edge("first", "a")}, {edge("last", "b")}])
  |> group(columns: ["meter", "edge"])
  |> pivot(rowKey: ["_time", "_start"], columnKey: ["_field"], valueColumn: "_value")
  |> map(fn: (r) => ({{meter: r.meter, edge: r.edge, _time: r._time, _start: r._start,
                       total: {total}, seconds: int(v: r._time) / 1000000000}}))
  |> group(columns: ["meter"])
  |> sort(columns: ["_time", "edge"])
  // Row b minus the row before it (its quarter's a): the quarter's energy and duration.
  |> difference(columns: ["total", "seconds"])
  |> filter(fn: (r) => r.edge == "b" and r.seconds > 0)
  |> map(fn: (r) => ({{r with total: if r.total < 0.0 then 0.0 else r.total,
                       end: int(v: r._time) / 1000000000}}))

{field("average_delivered", "r.total * 3600.0 / float(v: r.seconds)")}
{field("read_at_start", "r.end - r.seconds")}
{field("read_at_end", "r.end")}
"""


# --- the InfluxDB tasks ---------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    name: str
    flux: str


def _watermark_flux(stats_bucket: str) -> str:
    """Task prelude: the watermark, from which a task that missed runs catches up."""
    s = json.dumps(stats_bucket)
    return f"""
indexed = from(bucket: {s})
  |> range(start: 1970-01-01T00:00:00Z, stop: 1970-01-01T00:00:01Z)
  |> filter(fn: (r) => r._measurement == "{INDEX_MEASUREMENT}" and r._field == "{WATERMARK_FIELD}")
  |> last()
  |> findRecord(fn: (key) => true, idx: 0)
watermark = if exists indexed._value then time(v: indexed._value * 1000000000) else 1970-01-01T00:00:00Z
thisHour = date.truncate(t: now(), unit: 1h)
"""


def task_specs(config: Config, schema: ReadingSchema = SCHEMA) -> list[TaskSpec]:
    """Both tasks run every hour. The hour task recomputes from the watermark (at most CATCH_UP back,
    so a task that did not run for a while catches up) but at least the last two hours (a reading
    that arrives a little late is still counted); the day task the local day of the hour just
    ended (so each day is final shortly after local midnight, and today's row grows hour by hour)."""
    settings = config.influxdb
    hour = _with_task_option(
        _watermark_flux(settings.stats_bucket)
        + hour_flux(
            start=f"if exists indexed._value and watermark < date.sub(d: 2h, from: thisHour)"
            f" then (if watermark < date.sub(d: {CATCH_UP}, from: thisHour)"
            f" then date.sub(d: {CATCH_UP}, from: thisHour) else watermark) else date.sub(d: 2h, from: thisHour)",
            stop="thisHour",
            bucket=settings.bucket,
            stats_bucket=settings.stats_bucket,
            schema=schema,
        ),
        f'{{name: "{HOUR_TASK}", every: 1h, offset: 1m}}',
    )
    location = f"timezone.location(name: {json.dumps(config.timezone)})"
    local_day = (
        f"date.truncate(t: date.sub(d: 1s, from: date.truncate(t: now(), unit: 1h)), unit: 1d, location: {location})"
    )
    day = _with_task_option(
        day_flux(
            start=local_day,
            stop=f"date.add(d: 1d, to: dayStart, location: {location})",
            stats_bucket=settings.stats_bucket,
            timezone=config.timezone,
            schema=schema,
        ),
        f'{{name: "{DAY_TASK}", every: 1h, offset: 3m}}',
    )
    # Every quarter hour, the last four quarters: a reading up to an hour late still counts (later
    # ones mark their hour, and the repair recomputes its quarters with it).
    quarter = _with_task_option(
        quarter_flux(
            start="date.sub(d: 1h, from: quarterStop)",
            stop="date.truncate(t: now(), unit: 1m)",
            bucket=settings.bucket,
            stats_bucket=settings.stats_bucket,
            schema=schema,
        ),
        f'{{name: "{QUARTER_TASK}", every: 15m, offset: 1m}}',
    )
    return [TaskSpec(HOUR_TASK, hour), TaskSpec(DAY_TASK, day), TaskSpec(QUARTER_TASK, quarter)]


def _with_task_option(flux: str, task_option: str) -> str:
    """Flux wants the imports first (once each), then `option task`, then everything else."""
    lines = flux.strip().splitlines()
    imports = list(dict.fromkeys(line for line in lines if line.startswith("import ")))
    rest = [line for line in lines if not line.startswith("import ")]
    return "\n".join([*imports, "", f"option task = {task_option}", *rest]) + "\n"


def ensure_tasks(client: InfluxDBClient, config: Config, org_id: str) -> list[str]:
    """Create the tasks, or update their Flux when it changed. Returns the names created or updated.

    Updates send only the Flux (the task's own `option task` carries the schedule)."""
    api = client.tasks_api()
    changed = []
    for spec in task_specs(config):
        existing = [t for t in api.find_tasks(name=spec.name) if t.name == spec.name]
        if not existing:
            api.create_task(task_create_request=TaskCreateRequest(flux=spec.flux, org_id=org_id, status="active"))
            changed.append(spec.name)
            log.info("created InfluxDB task %r", spec.name)
            continue
        task, *duplicates = existing
        for extra in duplicates:  # never leave two tasks doing the same work
            api.delete_task(extra.id)
        if task.flux.strip() != spec.flux.strip() or task.status != "active":
            api.update_task_request(task.id, TaskUpdateRequest(flux=spec.flux, status="active"))
            changed.append(spec.name)
            log.info("updated InfluxDB task %r", spec.name)
    return changed


# --- running the same Flux from Python ------------------------------------------------------------


def local_midnight(moment: dt.datetime, tz: dt.tzinfo, days: int = 0) -> dt.datetime:
    """Local midnight (as UTC) of the local day containing moment, moved by `days` local days."""
    return day_start(moment.astimezone(tz).date(), tz, days)


def day_start(day: dt.date, tz: dt.tzinfo, days: int = 0) -> dt.datetime:
    """Local midnight (as UTC) of a local date, moved by `days` days."""
    day += dt.timedelta(days=days)
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(dt.timezone.utc)


class Statistics:
    """The statistics of one store: recompute, the watermark, the repair job, and pages."""

    def __init__(
        self,
        client: InfluxClient,
        timezone: str = "Europe/Amsterdam",
        schema: ReadingSchema = SCHEMA,
        clock: Callable[[], dt.datetime] | None = None,
    ):
        self.client = client
        self.settings: InfluxConfig = client.settings
        self.timezone = timezone
        self.tz = zoneinfo.ZoneInfo(timezone)
        self.schema = schema
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))

    # --- recompute ----------------------------------------------------------------------------

    def recompute(self, start: dt.datetime, stop: dt.datetime, meter: str | None = None) -> None:
        """Hour statistics and quarter-hour peaks of [start, stop) (whole UTC hours), then every
        local day they touch."""
        meter_filter = "r.meter == meter" if meter else "true"
        params: dict[str, Any] = {"meter": meter} if meter else {}
        self.client.flux(
            hour_flux("start", "stop", self.settings.bucket, self.settings.stats_bucket, meter_filter, self.schema),
            {**params, "start": start, "stop": stop},
        )
        self.client.flux(
            quarter_flux("start", "stop", self.settings.bucket, self.settings.stats_bucket, meter_filter, self.schema),
            {**params, "start": start, "stop": stop},
        )
        self.client.flux(
            day_flux("start", "stop", self.settings.stats_bucket, self.timezone, meter_filter, self.schema),
            {
                **params,
                "start": local_midnight(start, self.tz),
                "stop": local_midnight(stop - dt.timedelta(seconds=1), self.tz, 1),
            },
        )

    def regenerate(
        self,
        start: dt.datetime,
        stop: dt.datetime,
        chunk_days: int = 7,
        progress: Callable[[int], None] | None = None,
        contiguous: bool | None = None,
    ) -> None:
        """Recompute [start, stop) a chunk of local days at a time, oldest first; when it started
        at or before the watermark (or before the first reading, on a store without one), the
        index is complete up to `stop` afterwards and the watermark says so."""
        began = self.clock()
        if contiguous is None:
            watermark = self.watermark()
            first = self.first_reading_time()
            contiguous = (watermark is not None and start <= watermark) or (
                watermark is None and (first is None or start <= first)
            )
        chunk_start = start
        while chunk_start < stop:
            chunk_stop = min(local_midnight(chunk_start, self.tz, chunk_days), stop)
            self.recompute(chunk_start, chunk_stop)
            if progress:
                progress(max(1, round((chunk_stop - chunk_start) / dt.timedelta(days=1))))
            chunk_start = chunk_stop
        self.mark_repaired_before(began, start, stop)
        if contiguous:
            self.advance_watermark(min(floor_hour(stop), floor_hour(began)))
            first = self.first_reading_time()
            if first is None or start <= first:
                # Everything was recomputed after every mark made before it began: the repair
                # job need not look at those again.
                self._save_repair_cursor(max(began, self._repair_cursor() or began))

    # --- the watermark ------------------------------------------------------------------------

    def watermark(self) -> dt.datetime | None:
        return self.proof()[0]

    def proof(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        """(the watermark, the repair job's cursor), in one request."""
        watermark, cursor = self.client.influxql(
            [
                f"SELECT last({WATERMARK_FIELD}) FROM {self.client.in_stats(INDEX_MEASUREMENT)}",
                f"SELECT last(until_ms) FROM {self.client.in_stats(REPAIR_CURSOR)}",
            ]
        )
        found_watermark = next(
            (
                dt.datetime.fromtimestamp(int(row["last"]), dt.timezone.utc)
                for series in watermark
                for row in series.rows()
            ),
            None,
        )
        found_cursor = next(
            (
                dt.datetime.fromtimestamp(int(row["last"]) / 1000, dt.timezone.utc)
                for series in cursor
                for row in series.rows()
            ),
            None,
        )
        return found_watermark, found_cursor

    def follow_hour_task(self) -> dt.datetime | None:
        """Housekeeping: move the watermark to the scheduled time of the hour task's latest
        successful run. That run recomputed every hour from the watermark it read (CATCH_UP at
        most) to its scheduled time, and its rows were all written when it finished; a run that
        could not reach back to the watermark leaves the gap to a regenerate here. Returns the
        watermark (None: there is none yet, setup starts it)."""
        watermark = self.watermark()
        if watermark is None:
            return None
        latest = self._hour_task_latest_success(watermark)
        if latest is None or latest <= watermark:
            return watermark
        if latest - CATCH_UP_DELTA > watermark:
            log.warning("statistics are %s behind (the hour task did not run): regenerating them", latest - watermark)
            self.regenerate(watermark, latest - CATCH_UP_DELTA + HOUR, contiguous=True)
        self.advance_watermark(latest)
        return latest

    def _hour_task_latest_success(self, after: dt.datetime) -> dt.datetime | None:
        """The latest scheduled time after `after` of a successful hour task run (from influxd's
        run history; the task API itself does not show it)."""
        status, body = self.client.request(
            "GET", "/api/v2/tasks?" + urllib.parse.urlencode({"name": HOUR_TASK, "org": self.settings.org})
        )
        tasks = [t for t in json.loads(body).get("tasks", []) if t.get("name") == HOUR_TASK] if status == 200 else []
        if status != 200 or not tasks:
            raise StoreUnavailable(
                f"InfluxDB answered HTTP {status} for the hour task"
                if status != 200
                else "the hour task is missing: run `dsmr-ts setup`",
                "the token needs read access to the org's tasks: run `dsmr-ts setup`",
            )
        query = urllib.parse.urlencode({"afterTime": after.strftime("%Y-%m-%dT%H:%M:%SZ"), "limit": 500})
        status, body = self.client.request("GET", f"/api/v2/tasks/{tasks[0]['id']}/runs?{query}")
        if status != 200:
            raise StoreUnavailable(f"InfluxDB answered HTTP {status} for the hour task's runs")
        done = [
            dt.datetime.fromisoformat(run["scheduledFor"].replace("Z", "+00:00"))
            for run in json.loads(body).get("runs", [])
            if run.get("status") == "success"
        ]
        return floor_hour(max(done)) if done else None

    def advance_watermark(self, to: dt.datetime) -> None:
        """Every hour before `to` is indexed (never moves back)."""
        current = self.watermark()
        if current is None or to > current:
            self.client.write(
                lineprotocol.line(INDEX_MEASUREMENT, None, {WATERMARK_FIELD: int(to.timestamp())}, 0),
                self.settings.stats_bucket,
            )

    def start_index(self) -> bool:
        """Setup: a store without a watermark gets one. With no readings yet the index is complete
        now; with readings (an older install, or one whose hour rows lack what this version counts)
        everything is regenerated first. True if it did so."""
        watermark = self.watermark()
        if watermark is not None and self.index_version() >= INDEX_VERSION:
            return False
        first = self.first_reading_time()
        now = self.clock()
        if first is None:
            self.advance_watermark(floor_hour(now))
            self._save_index_version()
            return False
        log.info(
            "building the statistics and the count index from %s (once; the API counts raw until then)", first.date()
        )
        self.regenerate(local_midnight(first, self.tz), floor_hour(now) + HOUR, contiguous=True)
        self._save_index_version()
        return True

    def index_version(self) -> int:
        (series,) = self.client.influxql(
            [f"SELECT last({ident(VERSION_FIELD)}) FROM {self.client.in_stats(INDEX_MEASUREMENT)}"]
        )
        return next((int(row["last"]) for found in series for row in found.rows()), 1)

    def _save_index_version(self) -> None:
        self.client.write(
            lineprotocol.line(INDEX_MEASUREMENT, None, {VERSION_FIELD: INDEX_VERSION}, 0), self.settings.stats_bucket
        )

    def first_reading_time(self) -> dt.datetime | None:
        (series,) = self.client.influxql(
            [f"SELECT {ident(COUNTED_FIELD)} FROM {ident(lineprotocol.READING)} ORDER BY time ASC LIMIT 1"]
        )
        return _first_time(series)

    def last_reading_time(self) -> dt.datetime | None:
        (series,) = self.client.influxql(
            [f"SELECT {ident(COUNTED_FIELD)} FROM {ident(lineprotocol.READING)} ORDER BY time DESC LIMIT 1"]
        )
        return _first_time(series)

    # --- the repair of late data ----------------------------------------------------------------

    def repair(self, slack: dt.timedelta = REPAIR_SLACK) -> int:
        """One run of the repair job: the hours marked since the last run (and a little before, for
        writes still in flight then), recomputed per meter in contiguous runs, then marked repaired.
        Returns how many hours it recomputed."""
        began = self.clock()
        cursor = self._repair_cursor()
        since = (cursor - slack) if cursor else EPOCH
        (requests,) = self.client.influxql(
            [f'SELECT "hour" FROM {ident(lineprotocol.REPAIR_REQUEST)} WHERE time > {ns(since)} GROUP BY meter']
        )
        hours_by_meter = {found.tags["meter"]: {int(row["hour"]) for row in found.rows()} for found in requests}
        repaired = 0
        for meter, hours in sorted(hours_by_meter.items()):
            pending = self.pending_marks(meter, min(hours), max(hours) + 3600)
            pending = {hour: marked for hour, marked in pending.items() if hour in hours}
            if pending:
                repaired += self._repair_hours(meter, pending)
        self._save_repair_cursor(began)
        return repaired

    def pending_marks(self, meter: str, start_s: int, stop_s: int) -> dict[int, int]:
        """Hours of a meter in [start, stop) (Unix s) marked after their last repair: hour -> mark (ms)."""
        (series,) = self.client.influxql(
            [
                f"SELECT marked, repaired FROM {ident(lineprotocol.REPAIR)} WHERE meter = {quote(meter)}"
                f" AND time >= {start_s * 10**9} AND time < {stop_s * 10**9}"
            ]
        )
        return pending_from(series)

    def _repair_hours(self, meter: str, pending: dict[int, int]) -> int:
        current = floor_hour(self.clock())
        hours = sorted(pending)
        runs: list[list[int]] = [[hours[0]]]
        for hour in hours[1:]:
            if hour - runs[-1][-1] <= 3600:
                runs[-1].append(hour)
            else:
                runs.append([hour])
        recomputed = 0
        for run in runs:
            start = dt.datetime.fromtimestamp(run[0], dt.timezone.utc)
            after = dt.datetime.fromtimestamp(run[-1] + 3600, dt.timezone.utc)
            # The next hour with readings takes its baseline from the repaired hours: include it.
            following = self._next_reading_hour(meter, after, current)
            stop = min((following or after) + HOUR, current) if following else min(after, current)
            if stop > start:
                self.recompute(start, stop, meter)
                recomputed += int((stop - start) / HOUR)
        self.client.write(
            "\n".join(lineprotocol.repaired_line(meter, hour, marked) for hour, marked in pending.items()),
            self.settings.bucket,
        )
        log.info(
            "statistics repaired: meter %s, %d hour(s) from %s after late readings",
            meter,
            recomputed,
            dt.datetime.fromtimestamp(hours[0], dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        )
        return recomputed

    def _next_reading_hour(self, meter: str, after: dt.datetime, before: dt.datetime) -> dt.datetime | None:
        if after >= before:
            return None
        (series,) = self.client.influxql(
            [
                f"SELECT {ident(COUNTED_FIELD)} FROM {ident(lineprotocol.READING)} WHERE meter = {quote(meter)}"
                f" AND time >= {ns(after)} AND time < {ns(before)} LIMIT 1"
            ]
        )
        found = _first_time(series)
        return floor_hour(found) if found else None

    def mark_repaired_before(
        self, moment: dt.datetime, start: dt.datetime, stop: dt.datetime, meter: str | None = None
    ) -> None:
        """After a recompute of [start, stop) that began at `moment`: marks made before it are done."""
        where = f" AND meter = {quote(meter)}" if meter else ""
        (series,) = self.client.influxql(
            [
                f"SELECT marked, repaired FROM {ident(lineprotocol.REPAIR)} WHERE time >= {ns(start)}"
                f" AND time < {ns(stop)}{where} GROUP BY meter"
            ]
        )
        limit_ms = int(moment.timestamp() * 1000)
        lines = [
            lineprotocol.repaired_line(found.tags["meter"], hour, marked)
            for found in series
            for hour, marked in pending_from([found]).items()
            if marked <= limit_ms
        ]
        if lines:
            self.client.write("\n".join(lines), self.settings.bucket)

    def repair_backlog(self) -> dt.datetime | None:
        """When the oldest mark the repair job has not taken up yet was made (None: no backlog)."""
        since = self._repair_cursor() or EPOCH
        (series,) = self.client.influxql(
            [
                f'SELECT "hour" FROM {ident(lineprotocol.REPAIR_REQUEST)}'
                f" WHERE time > {ns(since)} ORDER BY time ASC LIMIT 1"
            ]
        )
        return _first_time(series)

    def _repair_cursor(self) -> dt.datetime | None:
        return self.proof()[1]

    def _save_repair_cursor(self, moment: dt.datetime) -> None:
        self.client.write(
            lineprotocol.line(REPAIR_CURSOR, None, {"until_ms": int(moment.timestamp() * 1000)}, 0),
            self.settings.stats_bucket,
        )

    # --- pages for the API --------------------------------------------------------------------------

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
        where = meter_between(meter, start, stop) + " AND (electricity1 >= 0 OR electricity1 < 0)"
        source = self.client.in_stats(measurement)
        counted, rows = self.client.influxql(
            [
                f"SELECT count(electricity1) FROM {source} {where}",
                f"SELECT {', '.join(ident(f) for f in fields) if fields else '*'} FROM {source} {where}"
                f" ORDER BY time {'DESC' if descending else 'ASC'} LIMIT {max(limit, 1)} OFFSET {min(offset, 2**62)}",
            ]
        )
        count = next((int(row["count"]) for found in counted for row in found.rows()), 0)
        return count, [_with_time(row) for found in rows for row in found.rows()]

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
        where = f"WHERE meter = {quote(meter)} AND time >= {ns(start)} AND time <= {ns(stop)}"
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

    def add_day(self, meter: str, day_start: dt.datetime, fields: dict[str, float]) -> bool:
        """POST statistics/day: a day row as given (usage, costs, temperatures). False when the
        meter already has a row for that day (nothing written)."""
        (series,) = self.client.influxql(
            [
                f"SELECT count(electricity1) FROM {self.client.in_stats(DAY_MEASUREMENT)}"
                f" WHERE meter = {quote(meter)} AND time = {ns(day_start)}"
            ]
        )
        if any(int(row["count"]) for found in series for row in found.rows()):
            return False
        self.client.write(
            lineprotocol.line(
                DAY_MEASUREMENT, meter, {k: float(v) for k, v in fields.items()}, int(day_start.timestamp())
            ),
            self.settings.stats_bucket,
        )
        return True

    def latest_hour(self) -> dt.datetime | None:
        """When the newest hour statistic starts (any meter)."""
        (series,) = self.client.influxql(
            [f"SELECT {COUNT_FIELD} FROM {self.client.in_stats(HOUR_MEASUREMENT)} ORDER BY time DESC LIMIT 1"]
        )
        return _first_time(series)


def _floor_quarter(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)


def pending_from(series: list) -> dict[int, int]:
    """hour -> mark (ms) for the rows whose mark is newer than their repair."""
    pending = {}
    for found in series:
        for row in found.rows():
            marked, repaired = row.get("marked"), row.get("repaired")
            if marked is not None and (repaired is None or marked > repaired):
                pending[int(row["time"])] = int(marked)
    return pending


def _first_time(series: list) -> dt.datetime | None:
    for found in series:
        for row in found.rows():
            return dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc)
    return None


def _with_time(row: dict[str, Any]) -> dict[str, Any]:
    row["_time"] = dt.datetime.fromtimestamp(int(row.pop("time")), dt.timezone.utc)
    return row
