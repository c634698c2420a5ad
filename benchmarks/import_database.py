"""Import speed from DSMR-reader's own database: a real PostgreSQL (Debian) holding N DSMR-reader
readings (10-second readings of a one-phase DSMR 4 household, its Django table layout), read by
`dsmr-ts import dsmr-reader --database` into a fresh influxd. Prints readings/s of the whole
import (reading, line building, writing, the statistics regenerated afterwards) and each part's CPU.

    .venv/bin/python benchmarks/import_database.py [--readings 1000000] [--step 10]

Starts its own PostgreSQL and influxd in temp dirs. DSMR-reader's own API importer figure is
printed labelled as measured separately.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from stack import REPO, Stack, cpu_seconds

sys.path.insert(0, str(REPO / "tests"))
from dsmr_reader_db import Postgres, reading_rows

from dsmr_ts.import_database import import_database
from dsmr_ts.influx.store import Store

# Measured separately (not in this run): `dsmr-ts import dsmr-reader --url` through DSMR-reader v5.11's
# API moved 157,600 readings in 34 s on this machine kind (limited by DSMR-reader's API).
API_IMPORT = "4,700 readings/s through DSMR-reader's API (measured separately)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument(
        "--step",
        type=int,
        default=10,
        help="seconds between readings: 10 for a DSMR 4 meter's"
        " history, 1 for DSMR 5 (the statistics cost per hour, so per reading 10x less)",
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    start = dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)
    database = Postgres()
    try:
        began = time.perf_counter()
        database.load(reading_rows(args.readings, start, args.step))
        print(
            f"PostgreSQL loaded with {args.readings:,} DSMR-reader readings, {args.step} s apart"
            f" ({args.readings * args.step / 86400:.0f} days), in {time.perf_counter() - began:.0f} s"
        )
        with Stack() as stack:
            store = Store(stack.config.influxdb, timeout_ms=3_600_000)
            before = (time.process_time(), cpu_seconds(database.pid), stack.cpu()[1])
            began = time.perf_counter()
            written = import_database(store, database.url, "BENCH-IMPORT", stack.config.timezone)
            elapsed = time.perf_counter() - began
            own, postgres = time.process_time() - before[0], cpu_seconds(database.pid) - before[1]
            influx = stack.cpu()[1] - before[2]
            count = store.readings.brute_force_count("BENCH-IMPORT", None, None)
            print(
                f"import --database: {written:,} readings in {elapsed:.1f} s = {written / elapsed:,.0f} readings/s"
                f" (the statistics regenerated afterwards included); stored {count:,}"
            )
            print(
                f"cpu: PostgreSQL (reading, writing the line protocol) {postgres:.1f} s, the importer (COPY,"
                f" prefixing lines, writes) {own:.1f} s, influxd {influx:.1f} s; 2 cores give {elapsed * 2:.0f}"
                " cpu-s in that time"
            )
            first = start
            last = start + dt.timedelta(seconds=args.step * (args.readings - 1))
            began = time.perf_counter()
            store.compute.recompute(first.replace(minute=0, second=0), last + dt.timedelta(hours=1), "BENCH-IMPORT")
            print(f"  of which the statistics (recomputed once more on their own): {time.perf_counter() - began:.1f} s")
            print(API_IMPORT)
            store.close()
    finally:
        database.stop()


if __name__ == "__main__":
    main()
