"""Writing points: group commit for the request path, bulk writes for imports and benchmarks.

Group commit: requests that arrive while a write is in flight queue up, and the next write takes
all of them in one request to influxd; every request returns only once influxd acknowledged the
write that held its lines (they are in the WAL), or raises StoreUnavailable when that write failed
(then none of the batch is stored: a line-protocol write is all or nothing). One client sees one
write per request; 32 clients see a few requests per write, so throughput grows with load while
each answer still means "stored".

Marks for the statistics repair (lineprotocol.repair_lines) travel with the readings in the same
write, one per (meter, hour) per batch, so a crash can never keep a reading and lose its repair.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.client import InfluxClient, StoreUnavailable

log = logging.getLogger(__name__)

MAX_BATCH_LINES = 5000  # influxd's sweet spot for one write
BULK_BATCH_LINES = 5000
BULK_THREADS = 4


@dataclass
class _Pending:
    lines: list[str]
    late_hours: frozenset[tuple[str, int]]
    woken: threading.Event = field(default_factory=threading.Event)  # done, or its turn to lead
    done: bool = False
    error: StoreUnavailable | None = None


class GroupCommitWriter:
    """Writes of one process to one bucket, grouped (see the module doc). No thread of its own:
    the request that finds no write in flight leads, writing everything queued by then; the others
    wait, and when the write is answered the leader hands the lead to the first of those that came
    meanwhile. A lone client never waits for a thread switch."""

    def __init__(self, client: InfluxClient, bucket: str | None = None, clock: Callable[[], dt.datetime] | None = None):
        self.client = client
        self.bucket = bucket
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self._queue: list[_Pending] = []
        self._lock = threading.Lock()
        self._writing = False

    def write(self, lines: list[str], late_hours: Iterable[tuple[str, int]] = ()) -> None:
        """Store the lines (and marks for the (meter, hour start) pairs that already ended);
        returns once they are in influxd's WAL. StoreUnavailable: nothing of them is stored."""
        pending = _Pending(lines, frozenset(late_hours))
        with self._lock:
            self._queue.append(pending)
            lead, self._writing = not self._writing, True
        if not lead:
            pending.woken.wait()
        if not pending.done:
            self._lead()
        if pending.error is not None:
            raise pending.error

    def _lead(self) -> None:
        with self._lock:
            batch: list[_Pending] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].lines) <= MAX_BATCH_LINES):
                batch.append(self._queue.pop(0))
                size += len(batch[-1].lines)
        self._commit(batch)
        with self._lock:
            if self._queue:
                self._queue[0].woken.set()  # its turn: it writes what queued meanwhile
            else:
                self._writing = False

    def _commit(self, batch: list[_Pending]) -> None:
        lines = [line for pending in batch for line in pending.lines]
        late = set().union(*(pending.late_hours for pending in batch))
        if late:
            lines += lineprotocol.repair_lines(late, self.clock())
        error = None
        try:
            self.client.write("\n".join(lines), self.bucket)
        except StoreUnavailable as exc:
            error = exc
        except Exception as exc:
            log.exception("group commit failed")
            error = StoreUnavailable("write failed", exc.__class__.__name__)
        for pending in batch:
            pending.error, pending.done = error, True
            pending.woken.set()


def write_in_bulk(
    client: InfluxClient,
    lines: Iterable[str],
    bucket: str | None = None,
    batch_lines: int = BULK_BATCH_LINES,
    threads: int = BULK_THREADS,
) -> int:
    """Many lines in batches, several writes at once; returns the lines written. Raises
    StoreUnavailable on the first failed batch (earlier batches stay written)."""
    return write_batches(client, _batched(lines, batch_lines), bucket, threads)


def write_batches(
    client: InfluxClient, batches: Iterable[list[str]], bucket: str | None = None, threads: int = BULK_THREADS
) -> int:
    """Each batch in one write (all or nothing), several batches at once, memory bounded;
    returns the lines written. Raises StoreUnavailable on the first failed batch."""
    written = 0
    with ThreadPoolExecutor(threads) as pool:
        in_flight = []
        for batch in batches:
            in_flight.append((len(batch), pool.submit(client.write, "\n".join(batch), bucket)))
            if len(in_flight) >= threads * 2:  # wait for the oldest
                count, future = in_flight.pop(0)
                future.result()
                written += count
        for count, future in in_flight:
            future.result()
            written += count
    return written


def _batched(items: Iterable[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def hour_of(moment: dt.datetime) -> int:
    """Unix seconds of the UTC hour a moment is in."""
    return int(moment.timestamp()) // 3600 * 3600


class ReadingWriter:
    """What the ingest path stores: telegrams (reading, gas booking, meter statistics), v2
    readings, rejections and meter statistics, through one group committer per process. A point
    in an hour that has already ended carries a repair mark for that hour."""

    def __init__(self, client: InfluxClient, schema=None, clock: Callable[[], dt.datetime] | None = None):
        from dsmr_ts.fields import SCHEMA

        self.client = client
        self.schema = schema or SCHEMA
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.commit = GroupCommitWriter(client, clock=self.clock)
        # The last gas value each meter's writes stored: (booked at, m3). A meter repeats it in every
        # telegram until the next one (5 minutes, or an hour for DSMR 4, booked in the hour before:
        # an ended hour, whose repair mark would otherwise come with every telegram).
        self._gas_stored: dict[str, tuple[int, float]] = {}

    def _committed(self, lines: list[str], late: set[tuple[str, int]], gas: dict[str, tuple[int, float]]) -> None:
        """Write through the group commit; once stored, its gas values are known to be stored."""
        self.commit.write(lines, late)
        if len(self._gas_stored) > 10_000:  # meter ids come from clients: stay bounded
            self._gas_stored = {}
        self._gas_stored.update(gas)

    def store_telegrams(self, telegrams: list) -> None:
        """Telegrams (dsmr_ts.telegram.Telegram), in one write through the group commit."""
        lines: list[str] = []
        late: set[tuple[str, int]] = set()
        gas: dict[str, tuple[int, float]] = {}
        now_hour = hour_of(self.clock())
        for telegram in telegrams:
            self._add(telegram.reading, telegram.hourly_gas, lines, late, now_hour, gas)
            statistics = lineprotocol.statistics_line(
                telegram.reading.meter, telegram.reading.timestamp, telegram.statistics, self.schema
            )
            if statistics:
                lines.append(statistics)
        latest = {telegram.reading.meter: telegram.text for telegram in telegrams if telegram.text}
        lines += [lineprotocol.latest_telegram_line(meter, text) for meter, text in latest.items()]
        self._committed(lines, late, gas)

    def store_reading(self, reading) -> None:
        """A v2 reading: it replaces one at the same meter+time (its `present` mask says which
        fields are its own), and its gas position is booked as stamped."""
        self.store_readings([reading])

    def store_readings(self, readings: list, hourly_gas: bool = False) -> None:
        """Readings (dsmr_ts.telegram.Reading) in one write through the group commit; gas booked
        one hour early for meters that report it hourly."""
        lines: list[str] = []
        late: set[tuple[str, int]] = set()
        gas: dict[str, tuple[int, float]] = {}
        now_hour = hour_of(self.clock())
        for reading in readings:
            self._add(reading, hourly_gas, lines, late, now_hour, gas)
        self._committed(lines, late, gas)

    def bulk(
        self, readings: Iterable, hourly_gas: bool = False, batch: int = BULK_BATCH_LINES, threads: int = BULK_THREADS
    ) -> int:
        """Many readings at once (imports, benchmarks), several writes in flight: each write holds a
        batch of readings, their gas bookings and the repair marks of the ended hours they fill (so
        counts stay right while it runs). Returns the readings written."""
        written = 0

        def batches() -> Iterable[list[str]]:
            nonlocal written
            lines: list[str] = []
            late: set[tuple[str, int]] = set()
            gas: dict[str, tuple[int, float]] = {}  # within this load: each gas value once
            count = 0
            now = self.clock()
            for reading in readings:
                self._add(reading, hourly_gas, lines, late, hour_of(now), gas, stored={})
                count += 1
                if count == batch:
                    yield lines + lineprotocol.repair_lines(late, now)
                    written += count
                    lines, late, count, now = [], set(), 0, self.clock()
            if count:
                yield lines + lineprotocol.repair_lines(late, now)
                written += count

        write_batches(self.client, batches(), threads=threads)
        return written

    def _add(
        self,
        reading,
        hourly_gas: bool,
        lines: list[str],
        late: set[tuple[str, int]],
        now_hour: int,
        gas: dict[str, tuple[int, float]],
        stored: dict[str, tuple[int, float]] | None = None,
    ) -> None:
        """A reading's lines, and the ended hours it touches; its gas booking unless that value
        is stored already (`stored`, default: by this writer) or in this batch (`gas`, updated)."""
        lines.append(lineprotocol.reading_line(reading, self.schema))
        late |= _late(reading.meter, (reading.timestamp,), now_hour)
        booked = lineprotocol.gas_booked_at(reading, hourly_gas)
        if booked is None:
            return
        value = (int(booked.timestamp()), float(reading.gas[1]))
        known = self._gas_stored if stored is None else stored
        if gas.get(reading.meter) == value or (reading.meter not in gas and known.get(reading.meter) == value):
            return
        gas[reading.meter] = value
        lines.append(lineprotocol.gas_line(reading.meter, booked, value[1]))
        late |= _late(reading.meter, (booked,), now_hour)

    def bulk_prepared(self, body: bytes, late_hours: Iterable[tuple[str, int]]) -> None:
        """Reading lines formatted elsewhere (by an import's source database, see
        lineprotocol.reading_fields_sql), with the repair marks of the ended hours they fill, so
        counts stay right while the import runs: one write, all or nothing."""
        marks = lineprotocol.repair_lines(set(late_hours), self.clock())
        self.client.write(body + b"\n" + "\n".join(marks).encode())

    def statistics_rows(self, lines: Iterable[str]) -> int:
        """Day or hour rows brought in from elsewhere (imports), into the statistics bucket."""
        return write_in_bulk(self.client, lines, self.client.settings.stats_bucket)

    def store_meter_statistics(self, meter: str, when: dt.datetime, statistics: dict) -> None:
        line = lineprotocol.statistics_line(meter, when, statistics, self.schema)
        if line:
            self.commit.write([line])

    def count_rejected(self, meter: str = "unknown") -> None:
        self.commit.write([lineprotocol.rejected_line(meter, self.clock())])


def _late(meter: str, moments: Iterable[dt.datetime | None], now_hour: int) -> set[tuple[str, int]]:
    return {(meter, hour_of(m)) for m in moments if m is not None and hour_of(m) < now_hour}
