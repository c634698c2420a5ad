"""The InfluxDB tasks that keep the statistics: their Flux (the statistics Flux of
statistics_flux.py with a schedule and the range each run covers), installing or updating them,
and reading how far the hour task got.

- `dsmr-ts hour statistics` (every hour): from the count index's watermark (at most CATCH_UP back)
  but at least the last two hours;
- `dsmr-ts day statistics` (every hour): the local day of the hour just ended;
- `dsmr-ts quarter-hour peaks` (every 15 minutes): the last four quarters.
Setup replaces a task whose Flux changed, so statistics fixes reach existing installs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.parse
from dataclasses import dataclass

from influxdb_client import InfluxDBClient
from influxdb_client.domain.task_create_request import TaskCreateRequest
from influxdb_client.domain.task_update_request import TaskUpdateRequest

from dsmr_ts.config import Config
from dsmr_ts.datetimes import floor_hour
from dsmr_ts.fields import SCHEMA, ReadingSchema
from dsmr_ts.influx.client import InfluxClient, StoreUnavailable
from dsmr_ts.influx.lineprotocol import INDEX_MEASUREMENT, WATERMARK_FIELD
from dsmr_ts.influx.statistics_flux import day_flux, flux_script, hour_flux, quarter_flux

log = logging.getLogger(__name__)

HOUR_TASK = "dsmr-ts hour statistics"
DAY_TASK = "dsmr-ts day statistics"
QUARTER_TASK = "dsmr-ts quarter-hour peaks"
CATCH_UP_DELTA = dt.timedelta(days=31)  # how far back one run of the hour task catches up after missed runs
CATCH_UP = f"{CATCH_UP_DELTA.days}d"


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
    return flux_script(flux, option=f"option task = {task_option}")


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


def hour_task_latest_success(client: InfluxClient, after: dt.datetime) -> dt.datetime | None:
    """The latest scheduled time after `after` of a successful hour task run (from influxd's
    run history; the task API itself does not show it)."""
    status, body = client.request(
        "GET", "/api/v2/tasks?" + urllib.parse.urlencode({"name": HOUR_TASK, "org": client.settings.org})
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
    status, body = client.request("GET", f"/api/v2/tasks/{tasks[0]['id']}/runs?{query}")
    if status != 200:
        raise StoreUnavailable(f"InfluxDB answered HTTP {status} for the hour task's runs")
    done = [
        dt.datetime.fromisoformat(run["scheduledFor"].replace("Z", "+00:00"))
        for run in json.loads(body).get("runs", [])
        if run.get("status") == "success"
    ]
    return floor_hour(max(done)) if done else None
