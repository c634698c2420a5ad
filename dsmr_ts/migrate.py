"""Bring history in from a running DSMR-reader (or another dsmr-ts), and export it as CSV.

Import pages through the source's v2 readings oldest first (ordering=timestamp, by time, so a
re-run continues where it stopped: the cursor is kept in InfluxDB), writes them in bulk, copies
day statistics for the days before the source's oldest reading (DSMR-reader deletes old readings
but keeps their day statistics), and then regenerates the statistics of the imported range.
Duplicates are harmless: the same meter+timestamp overwrites.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
import zoneinfo
from typing import Any, Iterator, TextIO

from dsmr_ts.datetimes import FieldError, day_start, parse_datetime
from dsmr_ts.fields import Kind
from dsmr_ts.formats import datetime_string, decimal_string, field_json
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.lineprotocol import COUNT_FIELD, DAY_MEASUREMENT, HOUR_MEASUREMENT
from dsmr_ts.influx.statistics_flux import USAGE_FIELDS
from dsmr_ts.influx.store import Store
from dsmr_ts.progress import ProgressBar
from dsmr_ts.telegram import Reading, gas_is_hourly

log = logging.getLogger(__name__)

PAGE = 1000
BATCH = 5000


class SourceError(Exception):
    """The source cannot be read; str() says why (never the key)."""


class Source:
    """A DSMR-reader compatible API: GET with the key header, JSON back."""

    def __init__(self, url: str, key: str, meter: str | None = None, timeout: float = 60.0):
        self.base = url.rstrip("/")
        self.key = key
        self.meter = meter
        self.timeout = timeout

    def get(self, path_or_url: str, **params: Any) -> Any:
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        if _origin(url) != _origin(self.base):  # a `next` link elsewhere: the key goes nowhere else
            raise SourceError(
                f"{self.base} sent a link to {_origin(url)}; the key is sent only to {_origin(self.base)},"
                " so the import stops here"
            )
        if params:
            if self.meter:
                params["meter"] = self.meter  # dsmr-ts sources; DSMR-reader ignores unknown parameters
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, headers={"X-AUTHKEY": self.key, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise SourceError(
                f"{self.base} answered {exc.code} for {urllib.parse.urlsplit(url).path}"
                + (" (is the API enabled, and the key right?)" if exc.code in (403, 405) else "")
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SourceError(f"cannot read {self.base}: {getattr(exc, 'reason', exc)}") from None


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _decimal(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def _datetime(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.timezone.utc)


def reading_from_api(row: dict[str, Any], meter: str, store: Store) -> Reading:
    """A reading as the v2 API shows it -> Reading (the inverse of resources.formats.reading_json)."""
    values: dict[str, Any] = {}
    for spec in store.schema.api_fields:
        raw = row.get(spec.name)
        if raw in (None, ""):
            continue
        if spec.kind is Kind.DATETIME:
            values[spec.name] = _datetime(raw)
        elif spec.kind is Kind.INTEGER:
            values[spec.name] = int(raw)
        else:
            values[spec.name] = float(raw)
    for pair in store.schema.mbus_pairs:  # half a pair (a position without its time) is dropped
        if sum(name in values for name in pair) == 1:
            for name in pair:
                values.pop(name, None)
    return Reading(timestamp=_datetime(row["timestamp"]), meter=meter, values=values)


def import_readings(
    store: Store,
    source: Source,
    meter: str,
    timezone: str,
    since: dt.datetime | None = None,
    progress: TextIO | None = None,
) -> int:
    """Import readings (and older day statistics); returns how many readings were written."""
    began = dt.datetime.now(dt.timezone.utc)
    cursor_name = source.base + (f"#{source.meter}" if source.meter else "")
    start = since or store.meters.import_cursor(cursor_name)
    params: dict[str, Any] = {"ordering": "timestamp", "limit": PAGE}
    if start:
        params["timestamp__gte"] = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    page = source.get("/api/v2/datalogger/dsmrreading", **params)
    total = int(page["count"])
    hourly_gas = _hourly_gas(source)
    log.info("importing %d readings from %s%s", total, source.base, f" since {start:%Y-%m-%d %H:%M}" if start else "")
    bar = ProgressBar(total, "readings", stream=progress)
    written, readings, first, last = 0, [], None, None
    while True:
        for row in page["results"]:
            reading = reading_from_api(row, meter, store)
            first = first or reading.timestamp
            last = reading.timestamp
            readings.append(reading)
        written += len(page["results"])
        if len(readings) >= BATCH or not page["next"]:
            if readings and last is not None:
                store.writer.bulk(readings, hourly_gas)
                readings = []
                store.meters.save_import_cursor(cursor_name, last)  # resumable from here
        bar.advance(len(page["results"]))
        if not page["next"]:
            break
        page = source.get(page["next"])
    if first is not None and since is None and start is None:
        _import_older_day_statistics(store, source, meter, first, timezone)
    if first is not None and last is not None:
        log.info("regenerating statistics for %s .. %s", first.date(), last.date())
        regenerate_range(store, first, last, meter, began)
    return written


def _hourly_gas(source: Source) -> bool:
    """Does the source's meter report gas hourly (DSMR 2.2-4: booked an hour earlier)? Asked of its
    meter statistics; a source without them (an older DSMR-reader) is taken for DSMR 5."""
    try:
        statistics = source.get("/api/v2/datalogger/meter-statistics")
    except SourceError:
        return False
    return "dsmr_version" in statistics and gas_is_hourly(statistics.get("dsmr_version"))


def regenerate_range(store: Store, first: dt.datetime, last: dt.datetime, meter: str, began: dt.datetime) -> None:
    """After an import: the statistics of the hours it filled in, and their repair marks done."""
    from dsmr_ts.datetimes import floor_hour

    start, stop = floor_hour(first), floor_hour(last) + dt.timedelta(hours=1)
    store.compute.recompute(start, stop, meter)
    store.index.mark_repaired_before(began, start, stop, meter)


def _import_older_day_statistics(store: Store, source: Source, meter: str, first: dt.datetime, timezone: str) -> None:
    """Day statistics of the days before the first reading (DSMR-reader keeps them after it
    deleted the readings). Written as day rows; they have no meter positions."""
    tz = zoneinfo.ZoneInfo(timezone)
    last_day = (first.astimezone(tz) - dt.timedelta(days=1)).date()
    lines: list[str] = []
    page = source.get("/api/v2/statistics/day", ordering="day", limit=PAGE, day__lte=last_day.isoformat())
    while True:
        for row in page["results"]:
            day = dt.date.fromisoformat(row["day"])
            midnight = day_start(day, tz)
            fields = {name: float(row[name]) for name in USAGE_FIELDS if row.get(name) is not None}
            if fields:
                lines.append(lineprotocol.line(DAY_MEASUREMENT, meter, fields, int(midnight.timestamp())))
        if not page["next"]:
            break
        page = source.get(page["next"])
    if lines:
        store.writer.statistics_rows(lines)
        log.info("imported day statistics of %d days before the first reading", len(lines))


# --- export ------------------------------------------------------------------------------------


def export_readings(store: Store, meter: str, start: dt.datetime, stop: dt.datetime, out: TextIO) -> int:
    """CSV of every reading in [start, stop), a day per query (bounded memory); returns the rows.
    Columns: timestamp and every field of the table (water and heat too), written as the API
    writes them (decimals to the field's places, datetimes in UTC with Z); absent fields empty."""
    specs = store.schema.fields
    writer = csv.writer(out)
    writer.writerow(["timestamp", *(spec.name for spec in specs)])
    rows = 0
    for chunk_start, chunk_stop in _days(start, stop):
        for row in store.readings.between(meter, chunk_start, chunk_stop):
            cells = [field_json(spec, row.get(spec.name)) for spec in specs]
            writer.writerow([datetime_string(row["_time"]), *("" if cell is None else cell for cell in cells)])
            rows += 1
    return rows


def export_statistics(
    store: Store, measurement: str, meter: str, start: dt.datetime, stop: dt.datetime, tz: dt.tzinfo, out: TextIO
) -> int:
    """CSV of the day or hour statistics in [start, stop), as the API shows them (`day` a local date,
    `hour_start` UTC with Z, kWh and m3 with 3 decimals): `dsmr-ts import csv` takes it back."""
    writer = csv.writer(out)
    fields = list(USAGE_FIELDS)
    day = measurement == DAY_MEASUREMENT
    writer.writerow(["day" if day else "hour_start", *fields, "reading_count"])
    _, rows = store.statistics.page(measurement, meter, start, stop, 0, 10**9, False)
    for row in rows:
        moment = row["_time"].astimezone(tz).date().isoformat() if day else datetime_string(row["_time"])
        usage = [decimal_string(row.get(name), 3) or "" for name in fields]
        count = row.get(COUNT_FIELD)
        writer.writerow([moment, *usage, "" if count is None else int(count)])
    return len(rows)


def _days(start: dt.datetime, stop: dt.datetime) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    moment = start
    while moment < stop:
        following = min(moment + dt.timedelta(days=1), stop)
        yield moment, following
        moment = following


# --- import of a CSV export ----------------------------------------------------------------------


class CsvError(Exception):
    """The file cannot be imported; str() names the line and the problem."""


def import_statistics_csv(store: Store, path: str, meter: str, timezone: str) -> tuple[str, int]:
    """DSMR-reader's CSV export of day or hour statistics (columns named as in its API: `day` or
    `hour_start`, electricity1, electricity2, electricity1_returned, electricity2_returned, gas;
    other columns are ignored). Returns (day|hour, rows written)."""
    tz = zoneinfo.ZoneInfo(timezone)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t") if sample else csv.excel
        reader = csv.DictReader(fh, dialect=dialect)
        columns = set(reader.fieldnames or [])
        if "day" in columns:
            kind = DAY_MEASUREMENT
        elif "hour_start" in columns:
            kind = HOUR_MEASUREMENT
        else:
            raise CsvError(f"{path}: no `day` or `hour_start` column (found: {', '.join(sorted(columns)) or 'none'})")
        usage = [name for name in USAGE_FIELDS if name in columns]
        if not usage:
            raise CsvError(f"{path}: none of the columns {', '.join(USAGE_FIELDS)}")
        lines = []
        for number, row in enumerate(reader, start=2):
            try:
                if kind == DAY_MEASUREMENT:
                    day = dt.date.fromisoformat(row["day"].strip())
                    moment = day_start(day, tz)
                else:
                    moment = parse_datetime(row["hour_start"], tz)
                values = {name: float(row[name].replace(",", ".")) for name in usage if (row[name] or "").strip()}
            except (ValueError, FieldError, AttributeError):
                raise CsvError(f"{path}, line {number}: cannot read {dict(row)}") from None
            if values:
                lines.append(lineprotocol.line(kind, meter, values, int(moment.timestamp())))
    store.writer.statistics_rows(lines)
    return kind, len(lines)
