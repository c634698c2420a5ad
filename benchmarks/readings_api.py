"""Reads at size: N one-second DSMR 5 readings (all fields: phases, voltages, currents, gas every
five minutes) loaded through the bulk write path, statistics built as an import builds them, then
the API requests people make most (readings, statistics, per-minute electricity, gas values,
quarter-hour peaks), each with p50 and p99 over sequential requests after warm-ups, and every
count checked against the number of readings loaded.

    .venv/bin/python benchmarks/readings_api.py [--readings 1000000] [--repeat 50] [--keep DIR]

Starts its own influxd and API (gunicorn, 2 workers) in a temp dir, so it never touches your data.
With --keep DIR the loaded store stays in DIR, and a later run with the same DIR measures again
without loading (100 M readings take 45 minutes to load): it rebuilds the statistics and counts,
then measures.
Prints the load rate, influxd's disk use per million readings, and DSMR-reader's figures for the
same requests beside ours, labelled as measured separately (not in this run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

from stack import KEY, Stack, cpu_seconds

from dsmr_ts.datetimes import floor_hour, local_midnight
from dsmr_ts.influx.count_index import REPAIR_SLACK
from dsmr_ts.influx.store import Store
from dsmr_ts.telegram import Reading

METER = "BENCH"
UTC = dt.timezone.utc
PATH = "/api/v2/datalogger/dsmrreading"
# Measured separately on this machine kind (DSMR-reader v5.11, PostgreSQL 15, 4 workers; p50):
# at 1 M readings side by side, at 10 M with 1-second readings.
DSMR_READER = {
    "latest": "48 ms at 1 M, 240 ms at 10 M",
    "first page": "54 ms at 1 M, 248 ms at 10 M",
    "one day": "127 ms at 1 M, 98 ms at 10 M",
    "deep page": "172 ms at 1 M, 1,376 ms at 10 M",
    "statistics/day, a year": "26 ms at 1 M",
}


def readings(count: int, start: dt.datetime) -> Iterator[Reading]:
    """A household's day, one reading a second: positions only go up, power moves with the hour."""
    base = int(start.timestamp())
    for i in range(count):
        t = base + i
        hour = t % 86400 / 3600
        power = 0.3 + (0.9 if 17 <= hour < 22 else 0.2) + (i % 61) / 1000
        gas_time = t - t % 300
        yield Reading(
            dt.datetime.fromtimestamp(t, UTC),
            METER,
            {
                "electricity_delivered_1": round(1000 + i * 0.00011, 3),
                "electricity_delivered_2": round(2000 + i * 0.00012, 3),
                "electricity_returned_1": 12.345,
                "electricity_returned_2": round(23.456 + i * 0.00001, 3),
                "electricity_currently_delivered": round(power, 3),
                "electricity_currently_returned": 0.0,
                "phase_currently_delivered_l1": round(power / 3, 3),
                "phase_currently_delivered_l2": round(power / 3, 3),
                "phase_currently_delivered_l3": round(power / 3, 3),
                "phase_currently_returned_l1": 0.0,
                "phase_currently_returned_l2": 0.0,
                "phase_currently_returned_l3": 0.0,
                "phase_voltage_l1": 230.1 + i % 7 / 10,
                "phase_voltage_l2": 231.0,
                "phase_voltage_l3": 229.4,
                "phase_power_current_l1": int(power * 1000 / 3 / 230),
                "phase_power_current_l2": 1,
                "phase_power_current_l3": 1,
                "extra_device_timestamp": dt.datetime.fromtimestamp(gas_time, UTC),
                "extra_device_delivered": round(500 + gas_time / 300 * 0.002 - base / 300 * 0.002, 3),
            },
        )


def cache_bytes(influx_url: str) -> float:
    with urllib.request.urlopen(influx_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("storage_cache_inuse_bytes")
    )


def wait_for_cache_snapshot(influx_url: str, timeout: float = 300) -> float:
    """A bulk load leaves data in influxd's write cache; a live meter's data is mostly in TSM
    files. Wait until the cache has been snapshotted so figures show the steady state."""
    began = time.monotonic()
    while cache_bytes(influx_url) > 0 and time.monotonic() - began < timeout:
        time.sleep(1)
    return time.monotonic() - began


def wait_for_idle(pid: int, timeout: float = 900) -> float:
    """After the cache snapshot influxd still compacts the new TSM files for minutes, using most of
    a core; a meter's store is compacted nearly all the time. Wait until influxd uses under 5% of a
    core for 5 seconds in a row, so that the figures show that steady state."""
    began, quiet, last = time.monotonic(), 0, cpu_seconds(pid)
    while quiet < 5 and time.monotonic() - began < timeout:
        time.sleep(1)
        now = cpu_seconds(pid)
        quiet, last = (quiet + 1 if now - last < 0.05 else 0), now
    return time.monotonic() - began


def disk_bytes(folder) -> int:
    """Allocated bytes (du): series files are sparse, apparent sizes would overstate them."""
    return int(
        subprocess.run(
            ["du", "-s", "--block-size=1", str(folder)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )


def timed_get(url: str, params: dict, repeat: int, expect_count: int | None = None, warmups: int = 3) -> list[float]:
    request = urllib.request.Request(url + "?" + urllib.parse.urlencode(params), headers={"X-AUTHKEY": KEY})
    times = []
    for index in range(warmups + repeat):
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:
            body = json.loads(response.read())
        elapsed = (time.perf_counter() - began) * 1000
        if expect_count is not None and body["count"] != expect_count:
            raise SystemExit(f"wrong count for {params}: {body['count']} instead of {expect_count}")
        if index >= warmups:
            times.append(elapsed)
    return times


def percentile(times: list[float], fraction: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def load(stack: Stack, store: Store, count: int, keep: Path | None) -> dt.datetime:
    """N readings ending two hours ago through the bulk path (or the store kept in `keep` by an
    earlier run), their statistics built as an import builds them, compactions done and the repair
    job run once, as the reader runs it: the store as a household's would be. Returns when the
    readings start. Prints what each step took."""
    loaded = keep / "loaded.json" if keep else None
    kept = json.loads(loaded.read_text()) if loaded and loaded.exists() else None
    if kept and kept["readings"] != count:
        raise SystemExit(
            f"{keep} holds {kept['readings']:,} readings, not {count:,}: give --readings {kept['readings']}"
            " or another folder"
        )
    if kept:
        start = dt.datetime.fromisoformat(kept["start"])
        print(
            f"bulk load: done before, {kept['loaded']}: {kept['figure']} (this run measures the store kept in {keep})"
        )
    else:
        start = floor_hour(dt.datetime.now(UTC)) - dt.timedelta(seconds=count) - dt.timedelta(hours=2)
        began, cpu = time.perf_counter(), stack.cpu()
        written = store.writer.bulk(readings(count, start))
        elapsed = time.perf_counter() - began
        influx_cpu = stack.cpu()[1] - cpu[1]
        figure = (
            f"{written:,} readings ({count / 86400 / 30.4:.1f} months of 1-second readings, all DSMR 5"
            f" fields) in {elapsed:.0f} s = {written / elapsed:,.0f} readings/s (influxd {influx_cpu:.0f} cpu-s)"
        )
        print("bulk load: " + figure)
        if loaded:
            stamp = dt.datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            loaded.write_text(json.dumps({"readings": count, "start": start.isoformat(), "figure": figure,
                                          "loaded": stamp}))  # fmt: skip
    tz = stack.config.tz
    began = time.perf_counter()
    store.compute.regenerate(local_midnight(start, tz), floor_hour(dt.datetime.now(UTC)) + dt.timedelta(hours=1))
    elapsed = time.perf_counter() - began
    print(
        f"statistics (hours, days, quarter-hour peaks, count index) for them: {elapsed:.0f} s"
        f" = {count / elapsed:,.0f} readings/s"
    )
    print(
        f"write cache snapshotted after {wait_for_cache_snapshot(stack.influxd.url):.0f} s;"
        f" compactions done (influxd idle) after {wait_for_idle(stack.influxd.process.pid):.0f} s more"
    )
    # Until the repair job has run once more than REPAIR_SLACK after the load, every count also checks
    # the hours the load marked (they may still wait for it): a few ms more per request at 10 M. The
    # reader runs the job every minute; here it is run once, as it would be by then.
    settled = began + REPAIR_SLACK.total_seconds() - time.perf_counter()
    if settled > 0:
        time.sleep(settled)
    store.housekeeping.repair()
    print(
        f"the repair job run once, {REPAIR_SLACK.total_seconds():.0f} s after the load"
        " (the reader runs it every minute)"
    )
    return start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50, help="timed requests per figure")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep the loaded store in DIR; use it again if it holds one"
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # figures as they come, also into a file
    count = args.readings
    with Stack(folder=args.keep) as stack:
        store = Store(stack.config.influxdb, timeout_ms=3_600_000)
        start = load(stack, store, count, args.keep)
        tz = stack.config.tz
        disk = disk_bytes(stack.influxd.data_dir / "engine")
        print(f"influxd disk use: {disk / 2**30:.2f} GiB = {disk / count * 1e6 / 2**20:.0f} MiB per million readings")
        url = stack.start_api() + PATH
        day = local_midnight(start + dt.timedelta(seconds=count // 2), tz)
        day_end = local_midnight(day, tz, 1) - dt.timedelta(seconds=1)
        in_day = min(
            86400,
            max(0, int((min(day_end, start + dt.timedelta(seconds=count - 1)) - max(day, start)).total_seconds()) + 1),
        )
        cases = [
            ("latest", "?ordering=-timestamp&limit=1", {"ordering": "-timestamp", "limit": 1}, count),
            ("first page", "?limit=25", {"limit": 25}, count),
            (
                "one day",
                "?timestamp__gte..lte (a day), limit 1000",
                {"timestamp__gte": day.isoformat(), "timestamp__lte": day_end.isoformat(), "limit": 1000},
                in_day,
            ),
            ("deep page", "?offset=N/2&limit=25", {"offset": count // 2, "limit": 25}, count),
        ]
        if count > 5_000_000:
            cases.append(("offset 5,000,000", "?offset=5000000&limit=25", {"offset": 5_000_000, "limit": 25}, count))
        print(f"{'request':<52} {'p50 ms':>8} {'p99 ms':>8}   DSMR-reader p50 (measured separately)")
        for name, shown, params, expected in cases:
            times = timed_get(url, params, args.repeat, expected)
            print(
                f"{name + ' ' + shown:<52} {percentile(times, 0.5):8.1f} {percentile(times, 0.99):8.1f}"
                f"   {DSMR_READER.get(name, '-')}"
            )
        base = url.rsplit(PATH, 1)[0]
        now = dt.datetime.now(UTC)
        month = floor_hour(now) - dt.timedelta(days=31)
        first, last = int(start.timestamp()), int(start.timestamp()) + count - 1
        minutes, gas_values = last // 60 - first // 60 + 1, last // 300 - first // 300 + 1
        quarters = sum(
            1 for q in range(first // 900, last // 900 + 1) if min(last, q * 900 + 899) - max(first, q * 900) >= 1
        )  # at least 2 readings
        day_minutes = in_day // 60 if in_day % 60 == 0 else None
        for name, path, params, expected in (
            (
                "statistics/day, a year (limit 366)",
                "/api/v2/statistics/day",
                {"limit": 366, "day__gte": (now - dt.timedelta(days=365)).date().isoformat()},
                None,
            ),
            (
                "statistics/hour, a month (limit 744)",
                "/api/v2/statistics/hour",
                {"limit": 744, "hour_start__gte": month.isoformat(), "hour_start__lte": now.isoformat()},
                None,
            ),
            (
                "electricity per minute, latest 25",
                "/api/v2/consumption/electricity",
                {"ordering": "-read_at", "limit": 25},
                minutes,
            ),
            (
                "electricity per minute, a day (limit 1440)",
                "/api/v2/consumption/electricity",
                {
                    "read_at__gte": (day + dt.timedelta(minutes=1)).isoformat(),
                    "read_at__lte": (day_end + dt.timedelta(seconds=1)).isoformat(),
                    "limit": 1440,
                },
                day_minutes,
            ),
            (
                "electricity per minute, deep page (offset N/2)",
                "/api/v2/consumption/electricity",
                {"offset": minutes // 2, "limit": 25},
                minutes,
            ),
            ("gas, latest 25", "/api/v2/consumption/gas", {"ordering": "-read_at", "limit": 25}, gas_values),
            (
                "gas, deep page (offset N/2)",
                "/api/v2/consumption/gas",
                {"offset": gas_values // 2, "limit": 25},
                gas_values,
            ),
            (
                "quarter-hour peaks, a month's highest 25",
                "/api/v2/consumption/quarter-hour-peak-electricity",
                {"ordering": "-average_delivered", "limit": 25, "read_at_start__gte": month.isoformat()},
                None,
            ),
            (
                "quarter-hour peaks, deep page (offset N/2)",
                "/api/v2/consumption/quarter-hour-peak-electricity",
                {"offset": quarters // 2, "limit": 25},
                quarters,
            ),
        ):
            times = timed_get(base + path, params, args.repeat, expected)
            print(
                f"{name:<52} {percentile(times, 0.5):8.1f} {percentile(times, 0.99):8.1f}"
                f"   {DSMR_READER.get(name.split(' (')[0], '-')}"
            )
        store.close()


if __name__ == "__main__":
    main()
