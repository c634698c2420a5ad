"""The count index: per-hour counts of readings, minutes and gas values (fields of the hour rows,
see statistics_flux.py) that make exact counts cheap at any size, and what proves them.

The index is trusted only where it is proven complete: below the watermark (`count_index
complete_until`, Unix s) and in hours without a pending repair mark. Setup starts the watermark;
regenerate advances it; the housekeeping job of `dsmr-ts reader` moves it to the scheduled time of
the hour task's latest successful run (whose rows were all written when it finished: a Flux script
cannot order its own writes, so the task cannot vouch for itself). A write into an ended hour marks
that hour in the same write (lineprotocol.repair_lines); the repair (housekeeping.py) recomputes
marked hours within a minute, in batches, and marks them repaired; its cursor says which marks it
has taken up.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from dsmr_ts.datetimes import EPOCH
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.client import InfluxClient, ident, ns
from dsmr_ts.influx.lineprotocol import (
    COUNTED_FIELD,
    INDEX_MEASUREMENT,
    REPAIR_CURSOR,
    VERSION_FIELD,
    WATERMARK_FIELD,
)

# What the hour rows hold: 1 reading_count; 2 also minute_count, gas_count (and quarter peaks);
# 3 also reading_time, gas_time and position_drop (the day's meter positions with their times).
# Setup regenerates a store built by an older version once.
INDEX_VERSION = 3
# The repair job reads the marks made since its last run began, and this much before: a write
# still in flight then is seen next time (readers of the marks look back as far).
REPAIR_SLACK = dt.timedelta(seconds=120)
PROOF_TTL = 60.0  # seconds readers keep the proof: a stale one only means more raw counting


class CountIndex:
    """The index's bookkeeping in one store: the watermark, the repair marks and cursor, the version."""

    def __init__(self, client: InfluxClient):
        self.client = client
        self.settings = client.settings

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

    def advance_watermark(self, to: dt.datetime) -> None:
        """Every hour before `to` is indexed (never moves back)."""
        current = self.watermark()
        if current is None or to > current:
            self.client.write(
                lineprotocol.line(INDEX_MEASUREMENT, None, {WATERMARK_FIELD: int(to.timestamp())}, 0),
                self.settings.stats_bucket,
            )

    def index_version(self) -> int:
        (series,) = self.client.influxql(
            [f"SELECT last({ident(VERSION_FIELD)}) FROM {self.client.in_stats(INDEX_MEASUREMENT)}"]
        )
        return next((int(row["last"]) for found in series for row in found.rows()), 1)

    def save_index_version(self) -> None:
        self.client.write(
            lineprotocol.line(INDEX_MEASUREMENT, None, {VERSION_FIELD: INDEX_VERSION}, 0), self.settings.stats_bucket
        )

    def first_reading_time(self) -> dt.datetime | None:
        (series,) = self.client.influxql(
            [f"SELECT {ident(COUNTED_FIELD)} FROM {ident(lineprotocol.READING)} ORDER BY time ASC LIMIT 1"]
        )
        return first_time(series)

    def last_reading_time(self) -> dt.datetime | None:
        (series,) = self.client.influxql(
            [f"SELECT {ident(COUNTED_FIELD)} FROM {ident(lineprotocol.READING)} ORDER BY time DESC LIMIT 1"]
        )
        return first_time(series)

    def pending_marks(self, meter: str, start_s: int, stop_s: int) -> dict[int, int]:
        """Hours of a meter in [start, stop) (Unix s) marked after their last repair: hour -> mark (ms)."""
        (series,) = self.client.influxql(
            [
                f"SELECT marked, repaired FROM {ident(lineprotocol.REPAIR)} WHERE {self.client.meter_is(meter)}"
                f" AND time >= {start_s * 10**9} AND time < {stop_s * 10**9}"
            ]
        )
        return pending_from(series)

    def mark_repaired_before(
        self, moment: dt.datetime, start: dt.datetime, stop: dt.datetime, meter: str | None = None
    ) -> None:
        """After a recompute of [start, stop) that began at `moment`: marks made before it are done."""
        where = f" AND {self.client.meter_is(meter)}" if meter else ""
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
        since = self.repair_cursor() or EPOCH
        (series,) = self.client.influxql(
            [
                f'SELECT "hour" FROM {ident(lineprotocol.REPAIR_REQUEST)}'
                f" WHERE time > {ns(since)} ORDER BY time ASC LIMIT 1"
            ]
        )
        return first_time(series)

    def repair_cursor(self) -> dt.datetime | None:
        return self.proof()[1]

    def save_repair_cursor(self, moment: dt.datetime) -> None:
        self.client.write(
            lineprotocol.line(REPAIR_CURSOR, None, {"until_ms": int(moment.timestamp() * 1000)}, 0),
            self.settings.stats_bucket,
        )


class Proof:
    """What the count index proves, as one store's readers remember it (CountIndex.proof())."""

    def __init__(self, index: CountIndex):
        self.index = index
        self._cached: tuple[tuple[dt.datetime | None, dt.datetime | None], float] | None = None
        self._lock = threading.Lock()

    def get(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        """(watermark, repair cursor), kept briefly: both only move forward, so old values cost
        speed (more raw counting, more marks to look at), never correctness."""
        with self._lock:
            cached = self._cached
        if cached and time.monotonic() - cached[1] < PROOF_TTL:
            return cached[0]
        value = self.index.proof()
        with self._lock:
            self._cached = (value, time.monotonic())
        return value

    def forget(self) -> None:
        with self._lock:
            self._cached = None


def pending_from(series: list[Any]) -> dict[int, int]:
    """hour -> mark (ms) for the rows whose mark is newer than their repair."""
    pending = {}
    for found in series:
        for row in found.rows():
            marked, repaired = row.get("marked"), row.get("repaired")
            if marked is not None and (repaired is None or marked > repaired):
                pending[int(row["time"])] = int(marked)
    return pending


def first_time(series: list[Any]) -> dt.datetime | None:
    """The time of the first row of an InfluxQL answer."""
    for found in series:
        for row in found.rows():
            return dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc)
    return None
