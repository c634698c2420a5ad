"""The points dsmr-ts stores, and the one place that writes InfluxDB line protocol (also the SQL
with which an import has its source database write reading lines).

Bucket `dsmr` (readings):
- `reading,meter=M <fields> <time>`: one point per reading; field types from the ReadingSchema
  (DECIMAL float, INTEGER and DATETIME integer, the latter Unix seconds), and `present`: a bit
  mask of the schema's fields this reading has. A write of the same meter+time merges fields with
  an earlier one, so the mask is what says which fields belong to the reading (a corrected reading
  without phases replaces one with phases without a query or a delete on the request path).
- `gas,meter=M extra_device_delivered=<m3> <booked>`: the gas position at the time it counts in
  (DSMR 4/2.2 hourly values one hour earlier), for the statistics.
- `meter_statistics,meter=M <counters> <time>`; `rejected_telegrams=1i` per rejected telegram.
- `latest_telegram,meter=M telegram="<JSON text>" 0`: the meter's newest raw telegram.
- `statistics_repair,meter=M marked=<ms>i <hour>` and `repair_request,meter=M hour=<s>i <now>`:
  a write into an hour that has already ended marks it, in the same write (see count_index.py).

Bucket `dsmr_stats` (statistics; the rows are written by the Flux in statistics_flux.py):
- `hour`, `day` (tag meter): usage per field of the schema's `usage`, the positions at the
  window's end, and the counts of the count index (reading_count, minute_count, gas_count);
- `quarter` (tag meter): quarter-hour peaks, average_delivered with read_at_start/read_at_end;
- `count_index` (complete_until, version) and `repair_cursor` (until_ms): the count index's
  bookkeeping (count_index.py); `import,source=S reached=<s>i`: how far an import got.

Field types are fixed here once (InfluxDB fixes a field's type per shard on first write).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from typing import Any, Callable, Iterable, Mapping

from dsmr_ts.costs import UNPRICED
from dsmr_ts.fields import SCHEMA, Kind, ReadingField, ReadingSchema
from dsmr_ts.telegram import Reading

READING = "reading"
GAS = "gas"
GAS_FIELD = "extra_device_delivered"
PRESENT_FIELD = "present"
METER_STATISTICS = "meter_statistics"
REJECTED_FIELD = "rejected_telegrams"
LATEST_TELEGRAM = "latest_telegram"  # per meter, one point (time 0) overwritten by every telegram
REPAIR = "statistics_repair"  # per (meter, hour): marked / repaired (ms of the mark)
REPAIR_REQUEST = "repair_request"  # per mark, at the time it was made: the log the repair job reads
IMPORT = "import"  # stats bucket: how far an import from a source got
NS = 1_000_000_000

# The statistics bucket.
HOUR_MEASUREMENT = "hour"
DAY_MEASUREMENT = "day"
QUARTER_MEASUREMENT = "quarter"
COUNT_FIELD = "reading_count"  # readings in the hour (the readings API's count index)
MINUTE_COUNT_FIELD = "minute_count"  # minutes with readings (consumption/electricity's rows)
GAS_COUNT_FIELD = "gas_count"  # gas values booked in the hour (consumption/gas's rows)
# When an hour's (a day's) last reading and last gas value were (Unix s, float like every statistic),
# and position_drop = 1 in an hour whose meter position went down.
READING_TIME_FIELD = "reading_time"
GAS_TIME_FIELD = "gas_time"
POSITION_DROP_FIELD = "position_drop"
# Every reading has this field (v1 and v2 require it), so counting it counts readings.
COUNTED_FIELD = "electricity_delivered_1"
INDEX_MEASUREMENT = "count_index"
WATERMARK_FIELD = "complete_until"
VERSION_FIELD = "version"
REPAIR_CURSOR = "repair_cursor"
# Day-ahead market prices (tag area) and what the costs step adds to hour rows (summed into day rows).
PRICE_MEASUREMENT = "price"
UNPRICED_FIELD = UNPRICED
COST_FIELDS = ("electricity1_cost", "electricity2_cost", "gas_cost", UNPRICED_FIELD)
FIXED_DAILY_FIELD = "fixed_daily_cost"  # day rows: the period's fixed cost (the costs step)


@functools.lru_cache(maxsize=4096)  # a handful of meters, escaped once each
def escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _string_field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _field(name: str, value: Any) -> str:
    if isinstance(value, str):
        return f"{name}={_string_field(value)}"
    if isinstance(value, bool):
        raise TypeError(f"{name}: booleans are not stored")
    if isinstance(value, int):
        return f"{name}={value}i"
    return f"{name}={float(value)!r}"


def line(
    measurement: str, meter: str | None, fields: Mapping[str, object], seconds: int | None = None, ns: int | None = None
) -> str:
    """One point, tagged with its meter (None: untagged, for the few bookkeeping points); time in
    whole seconds (or ns for the few points that need finer times)."""
    stamp = ns if ns is not None else (seconds or 0) * NS
    tags = f",meter={escape_tag(meter)}" if meter is not None else ""
    return f"{measurement}{tags} {','.join(_field(k, v) for k, v in fields.items())} {stamp}"


def _unix(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def reading_line(reading: Reading, schema: ReadingSchema = SCHEMA) -> str:
    """One reading: its fields typed as the schema says, and its `present` mask. The bulk path
    writes millions of these: the readings of one meter mostly have the same fields, so each set
    of fields gets its line template once, and a reading only fills it in."""
    values = reading.values
    if None in values.values():
        values = {name: value for name, value in values.items() if value is not None}
    template, conversions = _reading_template(tuple(values), schema)
    filled = [convert(value) for convert, value in zip(conversions, values.values()) if convert is not None]
    filled.append(int(reading.timestamp.timestamp()))
    return f"{READING},meter={escape_tag(reading.meter)} " + template % tuple(filled)


# Per kind of field: its placeholder in a reading's line, the type suffix line protocol wants after
# the value, and what turns a value into what fills the placeholder in.
_PLACEHOLDERS: dict[Kind, tuple[str, str, Callable[[Any], object]]] = {
    Kind.DECIMAL: ("%r", "", float),  # float repr: the shortest text that reads back the same
    Kind.INTEGER: ("%d", "i", int),
    Kind.DATETIME: ("%d", "i", _unix),  # Unix seconds
}


@functools.lru_cache(maxsize=1024)
def _reading_template(names: tuple[str, ...], schema: ReadingSchema) -> tuple[str, tuple[Callable | None, ...]]:
    """The fields and time of the line of a reading with these fields, in this order, as a `%`
    template; and per name the conversion of its value (None: not a field of the schema, left out)."""
    parts: list[str] = []
    conversions: list[Callable[[Any], object] | None] = []
    present = 0
    for name in names:
        spec = schema.by_name.get(name)
        if spec is None:
            conversions.append(None)
            continue
        placeholder, suffix, convert = _PLACEHOLDERS[spec.kind]
        parts.append(f"{name}={placeholder}{suffix}")
        conversions.append(convert)
        present |= schema.bits[name]
    parts.append(f"{PRESENT_FIELD}={present}i")
    return ",".join(parts) + " %d000000000", tuple(conversions)


def reading_fields_sql(
    columns: Iterable[ReadingField],
    concat: Callable[[list[str]], str],
    epoch: Callable[[str], str],
    schema: ReadingSchema = SCHEMA,
) -> str:
    """SQL that writes what reading_line writes after the meter tag (fields, `present`, time) from a
    row of a table whose columns are named as the fields and that has a `timestamp`: imports let the
    database format the numbers. concat and epoch are the database's text concatenation and Unix
    seconds of a datetime column. A NULL column leaves its field out, and out of the mask."""
    fields, present = [], []
    for spec in columns:
        value = epoch(spec.name) if spec.kind is Kind.DATETIME else spec.name
        field = concat([f"'{spec.name}='", value, f"'{_PLACEHOLDERS[spec.kind][1]},'"])
        fields.append(f"COALESCE({field}, '')")
        present.append(f"CASE WHEN {spec.name} IS NULL THEN 0 ELSE {schema.bits[spec.name]} END")
    return concat(
        [*fields, f"'{PRESENT_FIELD}='", f"({' + '.join(present) or 0})", "'i '", epoch("timestamp"), "'000000000'"]
    )


def gas_booked_at(reading: Reading, hourly: bool) -> dt.datetime | None:
    """When the reading's gas position counts: meters that report gas hourly (DSMR 4, DSMR 2.2) stamp
    the value at the end of the hour it covers; like DSMR-reader it is booked one hour earlier."""
    gas = reading.gas
    if gas is None:
        return None
    return gas[0] - dt.timedelta(hours=1 if hourly else 0)


def gas_line(meter: str, booked: dt.datetime, m3: float) -> str:
    """A gas position at the time it is booked (gas_booked_at)."""
    return line(GAS, meter, {GAS_FIELD: float(m3)}, _unix(booked))


def statistics_line(
    meter: str, timestamp: dt.datetime, statistics: Mapping[str, str | int], schema: ReadingSchema = SCHEMA
) -> str | None:
    kinds = {s.name: s.kind for s in schema.statistics}
    fields = {name: (str(value) if kinds.get(name) is Kind.TEXT else int(value)) for name, value in statistics.items()}
    return line(METER_STATISTICS, meter, fields, _unix(timestamp)) if fields else None


def latest_telegram_line(meter: str, text: str) -> str:
    """A meter's newest raw telegram, overwriting the one before (one point at time 0, so it takes
    no room per telegram). JSON-encoded: line protocol takes no newlines in a field value."""
    return line(LATEST_TELEGRAM, meter, {"telegram": json.dumps(text)}, 0)


def rejected_line(meter: str, when: dt.datetime) -> str:
    """One rejected telegram. Microsecond timestamps keep simultaneous rejections apart, and a
    count is the sum over points, so concurrent workers never lose an increment."""
    return line(METER_STATISTICS, meter, {REJECTED_FIELD: 1}, ns=int(when.timestamp() * 1_000_000) * 1000)


def repair_lines(hours: Iterable[tuple[str, int]], now: dt.datetime) -> list[str]:
    """Marks for (meter, hour start in Unix seconds) pairs that a write touched after they ended:
    the hour's state point, and an entry in the log the repair job reads (one ns apart each, so
    two marks of one meter in one write stay two points)."""
    marked_ms = int(now.timestamp() * 1000)
    base_ns = marked_ms * 1_000_000
    lines = []
    for index, (meter, hour) in enumerate(sorted(hours)):
        lines.append(line(REPAIR, meter, {"marked": marked_ms}, hour))
        lines.append(line(REPAIR_REQUEST, meter, {"hour": hour}, ns=base_ns + index))
    return lines


def repaired_line(meter: str, hour: int, marked_ms: int) -> str:
    """The repair of (meter, hour) covered every mark up to marked_ms."""
    return line(REPAIR, meter, {"repaired": marked_ms}, hour)


def price_line(area: str, start: dt.datetime, seconds: int, price: float, written_ms: int) -> str:
    """A market price (EUR/kWh) for `seconds` from start; written_ms orders corrections."""
    fields = f"price={price!r},seconds={seconds}i,written={written_ms}i"
    # Tagged with the resolution too: an hourly price and the quarter that corrects its first
    # quarter start at the same time, and both must stay (the newer one wins where they overlap).
    tags = f"area={escape_tag(area)},resolution={'PT15M' if seconds == 900 else 'PT60M'}"
    return f"{PRICE_MEASUREMENT},{tags} {fields} {_unix(start) * NS}"


def import_cursor_line(source: str, reached: dt.datetime) -> str:
    return f"{IMPORT},source={escape_tag(source)} reached={_unix(reached)}i 0"
