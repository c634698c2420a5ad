"""`dsmr-ts import dsmr-reader --database URL`: read DSMR-reader's own database directly.

Its API pages 1,000 readings a request (a 30 M-reading history takes hours through it); its
database streams. Supported: PostgreSQL (`postgresql://user:password@host:port/db`, DSMR-reader's
default), MySQL/MariaDB (`mysql://...`) and SQLite (`sqlite:///path/to/db.sqlite3`).

Tables read (DSMR-reader v4/v5): `dsmr_datalogger_dsmrreading` (one row per reading, columns named
as the v2 API fields), `dsmr_stats_daystatistics` (the days before the oldest reading: DSMR-reader
deletes old readings but keeps their day statistics) and `dsmr_datalogger_meterstatistics` (the
DSMR version: DSMR 2.2-4 meters stamp the hourly gas value at the end of the hour, so it is booked
an hour earlier, as DSMR-reader and dsmr-ts's own ingest do).

Fast by design: the database writes each reading's fields and time as line protocol in its own C
(a NULL column leaves its field out), the lines arrive oldest first as text (PostgreSQL's COPY; a
cursor for the others) and Python only puts the measurement and meter in front, a batch at a time
(its per-row parsing and formatting had cost more CPU than PostgreSQL's); several batches are
written at once; the gas positions come from one grouped query up front. The cursor (the newest
reading of the last batch written, kept in InfluxDB like the API importer's) moves only past
batches that are stored, so a re-run continues where it stopped. Duplicates are harmless: the
same meter+timestamp overwrites. Then the statistics of the imported range are regenerated.
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.parse
import zoneinfo
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TextIO

from dsmr_ts.costs import DAY_FIELDS
from dsmr_ts.datetimes import day_start
from dsmr_ts.fields import ReadingField, ReadingSchema
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.lineprotocol import DAY_MEASUREMENT
from dsmr_ts.influx.store import Store
from dsmr_ts.migrate import regenerate_range
from dsmr_ts.progress import ProgressBar
from dsmr_ts.telegram import gas_is_hourly

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


class Database:
    """One of the three databases, asked the same few questions."""

    def __init__(self, url: str):
        self.url = url
        self.scheme = urllib.parse.urlsplit(url).scheme.split("+")[0]
        self.connection: Any  # a DB-API connection of one of three drivers
        try:
            if self.scheme in ("postgresql", "postgres"):
                import psycopg

                self.connection = psycopg.connect(url, autocommit=True)
            elif self.scheme in ("mysql", "mariadb"):
                import pymysql

                parts = urllib.parse.urlsplit(url)
                self.connection = pymysql.connect(
                    host=parts.hostname or "localhost",
                    port=parts.port or 3306,
                    user=urllib.parse.unquote(parts.username or ""),
                    password=urllib.parse.unquote(parts.password or ""),
                    database=parts.path.lstrip("/"),
                    charset="utf8mb4",
                )
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
        except Exception as exc:
            raise DatabaseError(f"cannot open {describe(url)}: {_first_line(exc)}") from None

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        sql = sql.replace("%s", "?") if self.scheme == "sqlite" else sql
        try:
            cursor = self.connection.cursor()
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        except Exception as exc:
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

    def concat(self, parts: list[str]) -> str:
        """SQL text concatenation (NULL if a part is NULL); MySQL has no ||."""
        if self.scheme in ("mysql", "mariadb"):
            return f"CONCAT({', '.join(parts)})"
        return "(" + " || ".join(parts) + ")"

    def text_lines(self, sql: str, params: tuple) -> Iterator[bytes]:
        """A one-column result of text rows, streamed as blocks of whole lines (each ending in a
        newline), oldest first."""
        if self.scheme in ("postgresql", "postgres"):
            with self.connection.cursor() as cursor:
                # COPY streams the rows as PostgreSQL writes them, without a Python object per value
                # (psycopg binds COPY's parameters on the client). It sends a message per row: joined
                # here into blocks. (Its text format escapes backslashes: the rows hold none.)
                with cursor.copy(f"COPY ({sql}) TO STDOUT", params) as copy:
                    pending, chunks = b"", []
                    for chunk in copy:
                        chunks.append(bytes(chunk))
                        if len(chunks) == 10_000:
                            text = pending + b"".join(chunks)
                            cut = text.rfind(b"\n") + 1
                            if cut:
                                yield text[:cut]
                            pending, chunks = text[cut:], []
                    if pending or chunks:
                        yield pending + b"".join(chunks)
            return
        sql = sql.replace("%s", "?") if self.scheme == "sqlite" else sql
        cursor = self.connection.cursor()
        cursor.execute(sql, params)
        while True:
            fetched = cursor.fetchmany(10_000)
            if not fetched:
                return
            yield ("\n".join(row[0] for row in fetched) + "\n").encode()

    def close(self) -> None:
        self.connection.close()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def import_database(
    store: Store, url: str, meter: str, timezone: str, since: dt.datetime | None = None, progress: TextIO | None = None
) -> int:
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
        log.info(
            "importing %d readings from %s%s", total, describe(url), f" since {start:%Y-%m-%d %H:%M}" if start else ""
        )
        _write_gas(store, database, columns, where, params, meter, hourly_gas)
        bar = ProgressBar(int(total), "readings", stream=progress)
        lines = database.text_lines(_readings_sql(database, columns, where, store.schema), params)
        written, first, last = _write_readings(
            store, lines, meter, lambda reached: store.meters.save_import_cursor(cursor_name, reached), bar.advance
        )
        if first is not None and since is None and start is None:
            _import_older_days(store, database, meter, first, timezone)
    finally:
        database.close()
    if first is not None and last is not None:
        log.info("regenerating statistics for %s .. %s", first.date(), last.date())
        regenerate_range(store, first, last, meter, began)
    return written


def _columns(store: Store, available: set[str]) -> list[ReadingField]:
    """The v2 reading's fields that this DSMR-reader's table has (older versions lack some)."""
    return [spec for spec in store.schema.api_fields if spec.name in available]


def _hourly_gas(database: Database) -> bool:
    try:
        rows = database.query(f"SELECT dsmr_version FROM {METER_STATISTICS_TABLE}")
    except DatabaseError:
        return False
    return gas_is_hourly(rows[0][0]) if rows else False


def _readings_sql(database: Database, columns: list[ReadingField], where: str, schema: ReadingSchema) -> str:
    """Each reading as the fields and time of its line, written by the database (its C formats the
    numbers; Python only puts the measurement and meter in front)."""
    line = lineprotocol.reading_fields_sql(columns, database.concat, database.epoch, schema)
    return f"SELECT {line} FROM {READINGS_TABLE} {where} ORDER BY timestamp"


def _write_gas(
    store: Store,
    database: Database,
    columns: list[ReadingField],
    where: str,
    params: tuple,
    meter: str,
    hourly_gas: bool,
) -> None:
    """The gas positions, each once (a reading repeats the last one until the next arrives), at the
    time they count in."""
    if not {lineprotocol.GAS_FIELD, "extra_device_timestamp"} <= {column.name for column in columns}:
        return
    where = f"{where} AND" if where else "WHERE"
    rows = database.query(
        f"SELECT {database.epoch('extra_device_timestamp')}, {lineprotocol.GAS_FIELD}"
        f" FROM {READINGS_TABLE} {where} extra_device_timestamp IS NOT NULL"
        f" AND {lineprotocol.GAS_FIELD} IS NOT NULL"
        f" GROUP BY extra_device_timestamp, {lineprotocol.GAS_FIELD} ORDER BY MIN(timestamp)",
        params,
    )
    shift = 3600 if hourly_gas else 0
    for batch_start in range(0, len(rows), BATCH):
        lines, hours = [], set()
        for stamp, value in rows[batch_start : batch_start + BATCH]:
            booked = int(stamp) - shift
            lines.append(lineprotocol.line(lineprotocol.GAS, meter, {lineprotocol.GAS_FIELD: float(value)}, booked))
            hours.add(booked - booked % 3600)
        _write(store, "\n".join(lines).encode(), hours, meter)


def _write_readings(
    store: Store,
    blocks: Iterator[bytes],
    meter: str,
    save_cursor: Callable[[dt.datetime], None],
    advance: Callable[[int], None],
) -> tuple[int, dt.datetime | None, dt.datetime | None]:
    """Blocks of reading lines (fields and time) -> writes of BATCH readings, IN_FLIGHT at once;
    the cursor follows the stored ones."""
    head = f"{lineprotocol.READING},meter={lineprotocol.escape_tag(meter)} ".encode()
    in_flight: deque[tuple[Future, int, int]] = deque()  # (write, readings, newest timestamp)
    written, first, newest = 0, None, 0

    def settle(keep: int) -> None:
        nonlocal written
        while len(in_flight) > keep:
            future, count, reached = in_flight.popleft()
            future.result()  # StoreUnavailable ends the import; the cursor stays before this batch
            written += count
            save_cursor(dt.datetime.fromtimestamp(reached, dt.timezone.utc))
            advance(count)

    def submit(batch: list[bytes], count: int) -> None:
        nonlocal first, newest
        text = b"".join(batch).rstrip(b"\n")
        oldest, newest = _seconds_of_line(text, text.find(b"\n")), _seconds_of_line(text, len(text))
        first = oldest if first is None else first
        hours = range(oldest - oldest % 3600, newest + 1, 3600)  # (an empty hour's mark is harmless)
        body = head + text.replace(b"\n", b"\n" + head)
        in_flight.append((pool.submit(_write, store, body, hours, meter), count, newest))
        settle(IN_FLIGHT)

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        batch: list[bytes] = []
        count = 0
        for block in blocks:
            batch.append(block)
            count += block.count(b"\n")
            if count >= BATCH:
                submit(batch, count)
                batch, count = [], 0
        if count:
            submit(batch, count)
        settle(0)
    as_time = lambda s: dt.datetime.fromtimestamp(s, dt.timezone.utc)
    return written, (as_time(first) if first is not None else None), (as_time(newest) if first is not None else None)


def _seconds_of_line(text: bytes, end: int) -> int:
    """The time (Unix s) of the line ending at `end` (-1: the first line is all of text); a line
    ends in its time in ns."""
    end = len(text) if end < 0 else end
    return int(text[text.rfind(b" ", 0, end) + 1 : end - 9])


def _write(store: Store, body: bytes, hours: Iterable[int], meter: str) -> None:
    """One batch, with the repair marks of the (ended) hours it fills, so counts stay right while
    the import runs (the regenerate afterwards takes them up)."""
    store.writer.bulk_prepared(body, ((meter, hour) for hour in hours))


def _import_older_days(store: Store, database: Database, meter: str, first: dt.datetime, timezone: str) -> None:
    """Day statistics of the days before the first reading: usage, and DSMR-reader's own costs and
    temperatures (served as posted days: GET statistics/day shows them as they were)."""
    available = set(database.columns(DAYS_TABLE))
    if "day" not in available:
        return
    fields = [name for name in DAY_FIELDS if name in available]
    tz = zoneinfo.ZoneInfo(timezone)
    last_day = (first.astimezone(tz) - dt.timedelta(days=1)).date()
    rows = database.query(
        f"SELECT day, {', '.join(fields)} FROM {DAYS_TABLE} WHERE day <= %s ORDER BY day", (last_day.isoformat(),)
    )
    lines = []
    for day, *values in rows:
        day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day)[:10])
        midnight = day_start(day, tz)
        row = {name: float(value) for name, value in zip(fields, values) if value is not None}
        if "electricity1" in row:
            lines.append(lineprotocol.line(DAY_MEASUREMENT, meter, row, int(midnight.timestamp())))
    if lines:
        store.writer.statistics_rows(lines)
        log.info("imported day statistics of %d days before the first reading", len(lines))
