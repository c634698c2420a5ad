"""The Flux that computes the statistics, written once: the InfluxDB tasks (tasks.py), regenerate
and the repair of late data (recompute.py) all run this text.

Hour statistics (measurement `hour` in the stats bucket, time = hour start, tag meter):
- usage electricity1/2, electricity1_returned/2_returned, gas: the last meter position before the
  hour's end minus the last position before its start, so no usage falls between two windows. The
  baseline is looked for at most LOOKBACK back (a meter silent for longer starts afresh, like a
  meter's very first hour, which counts from its first reading): no query reads all of history.
- positions at the hour's end, and reading_count, minute_count, gas_count (the count index).
- a meter replacement (a position going down) counts 0 usage for that window; the next window
  continues from the new meter's position.
- gas comes from measurement `gas`, stored at ingest under the time the gas reading is booked, so it
  is aggregated like electricity. An hour without readings gets no row. Windows are pushed down to
  the storage engine (UTC hours; aggregateWindow right after range/filter).

Day statistics (measurement `day`, time = local midnight): the sum of that local day's hour rows
(23 or 25 hours on DST days; their costs too, see hour_costs.py), the positions of its last hour,
and its reading count.

Quarter-hour peaks (measurement `quarter`): see quarter_flux.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable

from dsmr_ts.fields import SCHEMA, ReadingSchema
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.lineprotocol import (
    COST_FIELDS,
    COUNT_FIELD,
    COUNTED_FIELD,
    DAY_MEASUREMENT,
    GAS_COUNT_FIELD,
    GAS_TIME_FIELD,
    HOUR_MEASUREMENT,
    MINUTE_COUNT_FIELD,
    POSITION_DROP_FIELD,
    QUARTER_MEASUREMENT,
    READING_TIME_FIELD,
)

LOOKBACK_DELTA = dt.timedelta(days=31)  # how far back an hour looks for the meter position before it
LOOKBACK = f"{LOOKBACK_DELTA.days}d"  # the same, as a Flux duration


def usage_fields(schema: ReadingSchema = SCHEMA) -> tuple[dict[str, str], dict[str, str]]:
    """(electricity position -> usage field, gas position -> usage field), from the field table."""
    gas = {name: usage for name, usage in schema.usage.items() if name == lineprotocol.GAS_FIELD}
    electricity = {name: usage for name, usage in schema.usage.items() if name not in gas}
    return electricity, gas


USAGE_FIELDS = tuple(SCHEMA.usage.values())


def _any_field(fields: Iterable[str]) -> str:
    return "(" + " or ".join(f'r._field == "{name}"' for name in fields) + ")"


def _rename(mapping: dict[str, str]) -> str:
    expression = "r._field"
    for old, new in mapping.items():
        expression = f'if r._field == "{old}" then "{new}" else {expression}'
    return expression


def flux_script(*parts: str, option: str = "") -> str:
    """Flux text made of parts: Flux wants the imports first (once each), then options (a task's
    schedule), then everything else."""
    lines = "\n".join(part.strip() for part in parts).splitlines()
    imports = list(dict.fromkeys(line for line in lines if line.startswith("import ")))
    rest = [line for line in lines if not line.startswith("import ")]
    return "\n".join([*imports, "", *([option] if option else []), *rest]) + "\n"


def _write_to(stats_bucket: str, name: str, write: bool = True) -> str:
    """to() that does not send the written rows back as the query's answer: a recompute would
    only parse them to throw them away. write=False: the rows are the answer, nothing is written
    (`dsmr-ts regenerate --analyze`)."""
    if not write:
        return f'yield(name: "{name}")'
    return f'to(bucket: {stats_bucket}) |> filter(fn: (r) => false) |> yield(name: "{name}")'


def hour_flux(
    start: str,
    stop: str,
    bucket: str,
    stats_bucket: str,
    meter_filter: str = "true",
    schema: ReadingSchema = SCHEMA,
    write: bool = True,
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
// When the hour's last reading and last gas value were (Unix s; window |> last keeps their own
// times, and is pushed down; regrouped at once, as Flux pays per table).
{_last_time("readingTimes", source(counted), READING_TIME_FIELD)}
{_last_time("gasTimes", source(gas), GAS_TIME_FIELD)}

// Baselines: the last position before the range (at most {LOOKBACK} back), else a meter's first one.
before = from(bucket: {b})
  |> range(start: lookback, stop: hourStart)
  |> filter(fn: (r) => (({electricity}) or ({gas})) and {meter_filter})
  |> last()
  |> map(fn: (r) => ({{r with _time: date.sub(d: 1h, from: hourStart)}}))
firstEver = union(tables: [{source(electricity)} |> first(), {source(gas)} |> first()])
  |> map(fn: (r) => ({{r with _time: date.sub(d: 2h, from: hourStart)}}))

steps = union(tables: [firstEver, before, electricity, gas])
  |> group(columns: ["meter", "_field"])
  |> sort(columns: ["_time"])
  |> difference()
  |> filter(fn: (r) => r._time >= hourStart)
usage = steps
  |> map(fn: (r) => ({{r with _value: if r._value < 0.0 then 0.0 else r._value,
                       _field: {_rename({**electricity_usage, **gas_usage})}}}))
// A position that went down (a replaced meter under the same id, or a bad reading): no usage, but
// the hour says so, for monitoring.
drops = steps
  |> filter(fn: (r) => r._value < 0.0)
  |> map(fn: (r) => ({{r with _field: "{POSITION_DROP_FIELD}", _value: 1.0}}))

hourRows = union(tables: [usage, drops, electricity, gas, counts, minutes, gasCounts, readingTimes, gasTimes])
  |> set(key: "_measurement", value: "{HOUR_MEASUREMENT}")
  |> keep(columns: ["_time", "_measurement", "_field", "_value", "meter"])
hourRows |> {_write_to(s, "hours", write)}
"""


def _last_time(name: str, source: str, field: str) -> str:
    """Flux defining `name`: per hour, the time (Unix s, a float like every statistic) of the last
    point of `source`."""
    return (
        f"{name} = {source} |> window(every: 1h) |> last()"
        f' |> group(columns: ["meter", "_field"])'
        f' |> map(fn: (r) => ({{r with _time: r._start, _field: "{field}",'
        f" _value: float(v: int(v: r._time) / 1000000000)}}))"
    )


def day_flux(
    start: str,
    stop: str,
    stats_bucket: str,
    timezone: str,
    meter_filter: str = "true",
    schema: ReadingSchema = SCHEMA,
    write: bool = True,
    hours: str = "",
) -> str:
    """Flux that writes the day statistics of the local days in [start, stop) (local midnights),
    from the stored hour rows (or from `hours`, a Flux stream of hour rows computed in the same
    script, for --analyze)."""
    s = json.dumps(stats_bucket)
    summed = _any_field([*schema.usage.values(), COUNT_FIELD, *COST_FIELDS])
    window = (
        'aggregateWindow(every: 1d, fn: {fn}, timeSrc: "_start", createEmpty: false, '
        f"location: timezone.location(name: {json.dumps(timezone)}))"
    )
    return f"""
import "date"
import "timezone"

dayStart = {start}
dayStop = {stop}

hours = {hours or f"from(bucket: {s}) |> range(start: dayStart, stop: dayStop)"}
  |> filter(fn: (r) => r._measurement == "{HOUR_MEASUREMENT}" and {meter_filter})
sums = hours |> filter(fn: (r) => {summed}) |> {window.format(fn="sum")}
ends = hours
  |> filter(fn: (r) => {_any_field([*schema.usage, READING_TIME_FIELD, GAS_TIME_FIELD])})
  |> {window.format(fn="last")}

union(tables: [sums, ends])
  |> set(key: "_measurement", value: "{DAY_MEASUREMENT}")
  |> keep(columns: ["_time", "_measurement", "_field", "_value", "meter"])
  |> {_write_to(s, "days", write)}
"""


def quarter_flux(
    start: str,
    stop: str,
    bucket: str,
    stats_bucket: str,
    meter_filter: str = "true",
    schema: ReadingSchema = SCHEMA,
    write: bool = True,
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
        # leaves a table per quarter, and Flux pays per table: regroup at once.
        return (
            f"from(bucket: {b}) |> range(start: quarterStart, stop: quarterStop)"
            f" |> filter(fn: (r) => {predicate}) |> window(every: 15m) |> {selector}()"
            f' |> group(columns: ["meter", "_field"]) |> set(key: "edge", value: "{name}")'
        )

    def field(name: str, value: str) -> str:
        # One to() per field: a float and an integer field cannot share a stream.
        return (
            f'peaks |> map(fn: (r) => ({{_time: r._start, _measurement: "{QUARTER_MEASUREMENT}", meter: r.meter,'
            f' _field: "{name}", _value: {value}}})) |> {_write_to(s, name, write)}'
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
