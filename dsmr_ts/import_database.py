"""`dsmr-ts import dsmr-reader --database URL`: read DSMR-reader's own database directly.

Its API pages 1,000 readings a request (a 30 M-reading history takes hours through it); its
database streams. Supported: PostgreSQL (`postgresql://user:password@host:port/db`, DSMR-reader's
default), MySQL/MariaDB (`mysql://...`) and SQLite (`sqlite:///path/to/db.sqlite3`).

Tables read (DSMR-reader v4/v5): `dsmr_datalogger_dsmrreading` (one row per reading, columns named
as the v2 API fields), `dsmr_stats_daystatistics` (the days before the oldest reading: DSMR-reader
deletes old readings but keeps their day statistics) and `dsmr_datalogger_meterstatistics` (the
DSMR version: DSMR 2.2-4 meters stamp the hourly gas value at the end of the hour, so it is booked
an hour earlier, as DSMR-reader and dsmr-ts's own ingest do).

Fast by design: the readings arrive oldest first as text (PostgreSQL's COPY; a cursor for the
others) and become line protocol without objects in between; several batches are written at
once; the cursor (the newest reading of the last batch written, kept in InfluxDB like the API
importer's) moves only past batches that are stored, so a re-run continues where it stopped.
Duplicates are harmless: the same meter+timestamp overwrites. Then the statistics of the
imported range are regenerated.
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.parse
import zoneinfo
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

from dsmr_ts.fields import Kind
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.statistics import DAY_MEASUREMENT, day_start
from dsmr_ts.influx.store import Store
from dsmr_ts.migrate import regenerate_range
from dsmr_ts.progress import ProgressBar
from dsmr_ts.telegram import gas_is_hourly
from dsmr_ts.totals import DAY_FIELDS

log = logging.getLogger(__name__)

READINGS_TABLE = "dsmr_datalogger_dsmrreading"
DAYS_TABLE = "dsmr_stats_daystatistics"
METER_STATISTICS_TABLE = "dsmr_datalogger_meterstatistics"
BATCH = 20_000  # readings per write
IN_FLIGHT = 4  # writes at once


class DatabaseError(Exception):
    """The database cannot be read; str() says why in one line (never the password)."""


def describe(url: str) -> str:
    """The URL without its password, for logs and the import cursor's name."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{parts.username}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    prefix: str  # "name="
    suffix: str  # "" for floats, "i" for integers and times
    bit: int


class Database:
    """One of the three databases, asked the same few questions."""

    def __init__(self, url: str):
        self.url = url
        self.scheme = urllib.parse.urlsplit(url).scheme.split("+")[0]
        try:
            if self.scheme in ("postgresql", "postgres"):
                import psycopg

                self.connection = psycopg.connect(url, autocommit=True)
            elif self.scheme in ("mysql", "mariadb"):
                import pymysql

                parts = urllib.parse.urlsplit(url)
                self.connection = pymysql.connect(host=parts.hostname or "localhost", port=parts.port or 3306,
                                                  user=urllib.parse.unquote(parts.username or ""),
                                                  password=urllib.parse.unquote(parts.password or ""),
                                                  database=parts.path.lstrip("/"), charset="utf8mb4")
                with self.connection.cursor() as cursor:
                    cursor.execute("SET time_zone = '+00:00'")  # UNIX_TIMESTAMP reads stored UTC as UTC
            elif self.scheme == "sqlite":
                import sqlite3

                path = urllib.parse.urlsplit(url).path
                self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            else:
                raise DatabaseError(f"{describe(url)}: use postgresql://, mysql:// or sqlite:///")
        except DatabaseError:
            raise
        except Exception as exc:  # noqa: BLE001 - each driver has its own errors; one line for all
            raise DatabaseError(f"cannot open {describe(url)}: {_first_line(exc)}") from None

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        sql = sql.replace("%s", "?") if self.scheme == "sqlite" else sql
        try:
            cursor = self.connection.cursor()
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        except Exception as exc:  # noqa: BLE001
            raise DatabaseError(f"{describe(self.url)}: {_first_line(exc)}") from None

    def columns(self, table: str) -> list[str]:
        if self.scheme == "sqlite":
            return [row[1] for row in self.query(f"PRAGMA table_info({table})")]
        rows = self.query("SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))
        return [str(row[0]) for row in rows]

    def epoch(self, column: str) -> str:
        """SQL for a timestamp column as whole Unix seconds."""
        if self.scheme == "sqlite":  # (no strftime('%s'): %s is the parameter marker before translation)
            return f"CAST(ROUND((julianday({column}) - 2440587.5) * 86400) AS INTEGER)"
        if self.scheme in ("mysql", "mariadb"):
            return f"FLOOR(UNIX_TIMESTAMP({column}))"
        return f"CAST(EXTRACT(EPOCH FROM {column}) AS BIGINT)"

    def rows(self, sql: str, params: tuple) -> Iterator[list[str | None]]:
        """A big result streamed as text values (None for NULL), oldest first."""
        if self.scheme in ("postgresql", "postgres"):
            with self.connection.cursor() as cursor:
                # COPY streams text as PostgreSQL writes it: no per-value conversion in Python
                # (psycopg binds COPY's parameters on the client).
                with cursor.copy(f"COPY ({sql}) TO STDOUT", params) as copy:
                    pending = b""
                    for chunk in copy:
                        lines = (pending + bytes(chunk)).split(b"\n")
                        pending = lines.pop()
                        for line in lines:
                            yield [None if v == "\\N" else v for v in line.decode().split("\t")]
            return
        sql = sql.replace("%s", "?") if self.scheme == "sqlite" else sql
        cursor = self.connection.cursor()
        cursor.execute(sql, params)
        while True:
            fetched = cursor.fetchmany(10_000)
            if not fetched:
                return
            for row in fetched:
                yield [None if v is None else str(v) for v in row]

    def close(self) -> None:
        self.connection.close()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def import_database(store: Store, url: str, meter: str, timezone: str, since: dt.datetime | None = None,
                    progress: TextIO | None = None) -> int:
    """Import DSMR-reader's readings (and older day statistics) from its database; returns how many
    readings were written."""
    began = dt.datetime.now(dt.timezone.utc)
    cursor_name = "database:" + describe(url)
    database = Database(url)
    try:
        available = set(database.columns(READINGS_TABLE))
        if "timestamp" not in available:
            raise DatabaseError(f"{describe(url)} has no table {READINGS_TABLE} (is it DSMR-reader's database?)")
        columns = _columns(store, available)
        hourly_gas = _hourly_gas(database)
        start = since or store.meters.import_cursor(cursor_name)
        where, params = ("WHERE timestamp >= %s", (start,)) if start else ("", ())
        (total,) = database.query(f"SELECT COUNT(*) FROM {READINGS_TABLE} {where}", params)[0]
        log.info("importing %d readings from %s%s", total, describe(url), f" since {start:%Y-%m-%d %H:%M}" if start else "")
        selected = ", ".join(database.epoch(c.name) if c.kind is Kind.DATETIME else c.name for c in columns)
        sql = (f"SELECT {database.epoch('timestamp')}, {selected} FROM {READINGS_TABLE} {where}"
               f" ORDER BY timestamp")
        bar = ProgressBar(int(total), "readings", stream=progress)
        written, first, last = _write_readings(store, database.rows(sql, params), columns, meter, hourly_gas,
                                               lambda reached: store.meters.save_import_cursor(cursor_name, reached),
                                               bar.advance)
        if first is not None and since is None and start is None:
            _import_older_days(store, database, meter, first, timezone)
    finally:
        database.close()
    if first is not None:
        log.info("regenerating statistics for %s .. %s", first.date(), last.date())
        regenerate_range(store, first, last, meter, began)
    return written


def _columns(store: Store, available: set[str]) -> list[Column]:
    """The v2 reading's fields that this DSMR-reader's table has (older versions lack some)."""
    columns = []
    for spec in store.schema.api_fields:
        if spec.name in available:
            suffix = "" if spec.kind is Kind.DECIMAL else "i"
            columns.append(Column(spec.name, spec.kind, spec.name + "=", suffix, store.schema.bits[spec.name]))
    return columns


def _hourly_gas(database: Database) -> bool:
    try:
        rows = database.query(f"SELECT dsmr_version FROM {METER_STATISTICS_TABLE}")
    except DatabaseError:
        return False
    return gas_is_hourly(rows[0][0]) if rows else False


def _write_readings(store: Store, rows: Iterator[list[str | None]], columns: list[Column], meter: str,
                    hourly_gas: bool, save_cursor: Callable[[dt.datetime], None],
                    advance: Callable[[int], None]) -> tuple[int, dt.datetime | None, dt.datetime | None]:
    """Rows -> line protocol batches, IN_FLIGHT writes at once; the cursor follows the stored ones."""
    tag = lineprotocol.escape_tag(meter)
    head = f"{lineprotocol.READING},meter={tag} "
    gas_head = f"{lineprotocol.GAS},meter={tag} {lineprotocol.GAS_FIELD}="
    gas_value = next((i for i, c in enumerate(columns) if c.name == lineprotocol.GAS_FIELD), None)
    gas_time = next((i for i, c in enumerate(columns) if c.name == "extra_device_timestamp"), None)
    shift = 3600 if hourly_gas else 0
    in_flight: deque[tuple[Future, int, int]] = deque()  # (write, readings, newest timestamp)
    written, first, newest = 0, None, 0
    last_gas = None

    def settle(keep: int) -> None:
        nonlocal written
        while len(in_flight) > keep:
            future, count, reached = in_flight.popleft()
            future.result()  # StoreUnavailable ends the import; the cursor stays before this batch
            written += count
            save_cursor(dt.datetime.fromtimestamp(reached, dt.timezone.utc))
            advance(count)

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        lines: list[str] = []
        hours: set[int] = set()
        count = 0
        for row in rows:
            stamp = int(row[0])
            values = row[1:]
            parts = []
            present = 0
            for column, value in zip(columns, values):
                if value is not None:
                    parts.append(column.prefix + value + column.suffix)
                    present |= column.bit
            lines.append(f"{head}{','.join(parts)},{lineprotocol.PRESENT_FIELD}={present}i {stamp}000000000")
            hours.add(stamp - stamp % 3600)
            if gas_value is not None and gas_time is not None and values[gas_value] and values[gas_time]:
                gas = (values[gas_time], values[gas_value])
                if gas != last_gas:  # every reading repeats the gas value until the next one
                    last_gas = gas
                    booked = int(gas[0]) - shift
                    lines.append(f"{gas_head}{gas[1]} {booked}000000000")
                    hours.add(booked - booked % 3600)
            first = first if first is not None else stamp
            newest = stamp
            count += 1
            if count == BATCH:
                in_flight.append((pool.submit(_write, store, lines, hours, meter), count, newest))
                lines, hours, count = [], set(), 0
                settle(IN_FLIGHT)
        if count:
            in_flight.append((pool.submit(_write, store, lines, hours, meter), count, newest))
        settle(0)
    as_time = (lambda s: dt.datetime.fromtimestamp(s, dt.timezone.utc))
    return written, (as_time(first) if first is not None else None), (as_time(newest) if first is not None else None)


def _write(store: Store, lines: list[str], hours: set[int], meter: str) -> None:
    """One batch, with the repair marks of the (ended) hours it fills, so counts stay right while
    the import runs (the regenerate afterwards takes them up)."""
    marks = lineprotocol.repair_lines({(meter, hour) for hour in hours}, dt.datetime.now(dt.timezone.utc))
    store.client.write("\n".join(lines + marks))


def _import_older_days(store: Store, database: Database, meter: str, first: dt.datetime, timezone: str) -> None:
    """Day statistics of the days before the first reading: usage, and DSMR-reader's own costs and
    temperatures (served as posted days: GET statistics/day shows them as they were)."""
    available = set(database.columns(DAYS_TABLE))
    if "day" not in available:
        return
    fields = [name for name in DAY_FIELDS if name in available]
    tz = zoneinfo.ZoneInfo(timezone)
    last_day = (first.astimezone(tz) - dt.timedelta(days=1)).date()
    rows = database.query(f"SELECT day, {', '.join(fields)} FROM {DAYS_TABLE} WHERE day <= %s ORDER BY day",
                          (last_day.isoformat(),))
    lines = []
    for day, *values in rows:
        day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day)[:10])
        midnight = day_start(day, tz)
        row = {name: float(value) for name, value in zip(fields, values) if value is not None}
        if "electricity1" in row:
            lines.append(lineprotocol.line(DAY_MEASUREMENT, meter, row, int(midnight.timestamp())))
    if lines:
        store.client.write("\n".join(lines), store.settings.stats_bucket)
        log.info("imported day statistics of %d days before the first reading", len(lines))
