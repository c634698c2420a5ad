"""Hour and day statistics: the Flux lives here once and serves the InfluxDB tasks,
`dsmr-ts regenerate`, and the repair of late data.

Hour statistics (measurement `hour` in the stats bucket, time = hour start, tag meter):
- usage electricity1/2, electricity1_returned/2_returned, gas: the last meter position before the
  hour's end minus the last position before its start, so no usage falls between two windows.
  The very first hour of a meter starts from its first reading.
- positions at the hour's end (electricity_delivered_1/2, electricity_returned_1/2,
  extra_device_delivered), and reading_count (also the readings API's count index).
- a meter replacement (a position going down) counts 0 usage for that window; the next window
  continues from the new meter's position.
- gas comes from measurement `gas`, stored at ingest under the time the gas reading is booked
  (DSMR 4 and 2.2 hourly values one hour earlier), so it is aggregated like electricity.
- an hour without readings gets no row. Windows are pushed down to the storage engine
  (UTC hours; aggregateWindow right after range/filter).

Day statistics (measurement `day`, time = local midnight): the sum of that local day's hour rows
(23 or 25 hours on DST days), the positions of its last hour, and its reading count.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import zoneinfo
from dataclasses import dataclass
from typing import Callable

from influxdb_client import InfluxDBClient
from influxdb_client.domain.task_create_request import TaskCreateRequest
from influxdb_client.domain.task_update_request import TaskUpdateRequest

from dsmr_ts.config import Config, InfluxConfig
from dsmr_ts.influx import schema

log = logging.getLogger(__name__)

HOUR_MEASUREMENT = "hour"
DAY_MEASUREMENT = "day"
COUNT_FIELD = "reading_count"
# Every reading has this field (v1 and v2 require it), so counting it counts readings.
COUNTED_FIELD = "electricity_delivered_1"

# Meter position field -> usage field in the statistics (spec as data).
ELECTRICITY_USAGE = {
    "electricity_delivered_1": "electricity1",
    "electricity_delivered_2": "electricity2",
    "electricity_returned_1": "electricity1_returned",
    "electricity_returned_2": "electricity2_returned",
}
GAS_USAGE = {schema.GAS_FIELD: "gas"}
USAGE = {**ELECTRICITY_USAGE, **GAS_USAGE}
POSITION_FIELDS = tuple(USAGE)
USAGE_FIELDS = tuple(USAGE.values())

HOUR_TASK = "dsmr-ts hour statistics"
DAY_TASK = "dsmr-ts day statistics"


def _any_field(fields: tuple[str, ...] | list[str]) -> str:
    return "(" + " or ".join(f'r._field == "{name}"' for name in fields) + ")"


def _rename(mapping: dict[str, str]) -> str:
    expression = "r._field"
    for old, new in mapping.items():
        expression = f'if r._field == "{old}" then "{new}" else {expression}'
    return expression


_ELECTRICITY = f'r._measurement == "{schema.READING}" and {_any_field(list(ELECTRICITY_USAGE))}'
_GAS = f'r._measurement == "{schema.GAS}" and r._field == "{schema.GAS_FIELD}"'
_COUNTED = f'r._measurement == "{schema.READING}" and r._field == "{COUNTED_FIELD}"'


def hour_flux(start: str, stop: str, bucket: str, stats_bucket: str, meter_filter: str = "true") -> str:
    """Flux that writes the hour statistics of [start, stop) (whole UTC hours).

    start/stop are Flux expressions (extern variables for regenerate, now()-based in the task);
    meter_filter narrows to one meter (an expression over r), for the repair of late data.
    """
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

// Positions at each hour's end: the last one in the hour (pushed down).
electricity = {source(_ELECTRICITY)} |> {window.format(fn="last")}
gas = {source(_GAS)} |> {window.format(fn="last")}
counts = {source(_COUNTED)}
  |> {window.format(fn="count")}
  |> set(key: "_field", value: "{COUNT_FIELD}")

// Baselines: the last position before the range, else a meter's very first position.
before = from(bucket: {b})
  |> range(start: 0, stop: hourStart)
  |> filter(fn: (r) => (({_ELECTRICITY}) or ({_GAS})) and {meter_filter})
  |> last()
  |> map(fn: (r) => ({{r with _time: date.sub(d: 1h, from: hourStart)}}))
firstEver = union(tables: [{source(_ELECTRICITY)} |> first(), {source(_GAS)} |> first()])
  |> map(fn: (r) => ({{r with _time: date.sub(d: 2h, from: hourStart)}}))

usage = union(tables: [firstEver, before, electricity, gas])
  |> group(columns: ["meter", "_field"])
  |> sort(columns: ["_time"])
  |> difference()
  |> filter(fn: (r) => r._time >= hourStart)
  |> map(fn: (r) => ({{r with _value: if r._value < 0.0 then 0.0 else r._value, _field: {_rename(USAGE)}}}))

union(tables: [usage, electricity, gas, counts])
  |> set(key: "_measurement", value: "{HOUR_MEASUREMENT}")
  |> keep(columns: ["_time", "_measurement", "_field", "_value", "meter"])
  |> to(bucket: {s})
"""


def day_flux(start: str, stop: str, stats_bucket: str, timezone: str, meter_filter: str = "true") -> str:
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
sums = hours |> filter(fn: (r) => {_any_field([*USAGE_FIELDS, COUNT_FIELD])}) |> {window.format(fn="sum")}
ends = hours |> filter(fn: (r) => {_any_field(POSITION_FIELDS)}) |> {window.format(fn="last")}

union(tables: [sums, ends])
  |> set(key: "_measurement", value: "{DAY_MEASUREMENT}")
  |> keep(columns: ["_time", "_measurement", "_field", "_value", "meter"])
  |> to(bucket: {s})
"""


# --- the InfluxDB tasks ---------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    name: str
    flux: str


def task_specs(config: Config) -> list[TaskSpec]:
    """Both tasks run every hour: the hour task recomputes the last two hours (a reading that
    arrives a little late is still counted), the day task the local day of the hour just ended
    (so each day is final shortly after local midnight, and today's row grows hour by hour)."""
    settings = config.influxdb
    hour = _with_task_option(f"""{hour_flux(
        start='date.sub(d: 2h, from: date.truncate(t: now(), unit: 1h))',
        stop="date.truncate(t: now(), unit: 1h)",
        bucket=settings.bucket,
        stats_bucket=settings.stats_bucket,
    )}""", f'{{name: "{HOUR_TASK}", every: 1h, offset: 1m}}')
    local_day = (
        "date.truncate(t: date.sub(d: 1s, from: date.truncate(t: now(), unit: 1h)), unit: 1d, "
        f"location: timezone.location(name: {json.dumps(config.timezone)}))"
    )
    day = _with_task_option(f"""{day_flux(
        start=local_day,
        stop=f"date.add(d: 1d, to: dayStart, location: timezone.location(name: {json.dumps(config.timezone)}))",
        stats_bucket=settings.stats_bucket,
        timezone=config.timezone,
    )}""", f'{{name: "{DAY_TASK}", every: 1h, offset: 3m}}')
    return [TaskSpec(HOUR_TASK, hour), TaskSpec(DAY_TASK, day)]


def _with_task_option(flux: str, task_option: str) -> str:
    """Flux wants `option task` after the imports and before everything else."""
    lines = flux.strip().splitlines()
    imports = [line for line in lines if line.startswith("import ")]
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


# --- running the same Flux from Python (regenerate, late data, the count index) -----------------


def local_midnight(moment: dt.datetime, tz: zoneinfo.ZoneInfo, days: int = 0) -> dt.datetime:
    """Local midnight (as UTC) of the local day containing moment, moved by `days` local days."""
    day = moment.astimezone(tz).date() + dt.timedelta(days=days)
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(dt.timezone.utc)


def recompute(
    query: Callable[[str, dict], object],
    settings: InfluxConfig,
    timezone: str,
    start: dt.datetime,
    stop: dt.datetime,
    meter: str | None = None,
) -> None:
    """Hour statistics of [start, stop) (whole UTC hours), then every local day they touch."""
    meter_filter = "r.meter == meter" if meter else "true"
    params: dict[str, object] = {"meter": meter} if meter else {}
    query(
        hour_flux("start", "stop", settings.bucket, settings.stats_bucket, meter_filter),
        {**params, "start": start, "stop": stop},
    )
    tz = zoneinfo.ZoneInfo(timezone)
    query(
        day_flux("start", "stop", settings.stats_bucket, timezone, meter_filter),
        {**params, "start": local_midnight(start, tz), "stop": local_midnight(stop - dt.timedelta(seconds=1), tz, 1)},
    )
