"""Statistics at size: a year of 10-second readings (3.15 M) plus gas every 5 minutes, then
`dsmr-ts regenerate` over the whole year (the same Flux as the InfluxDB tasks), and the day and
hour statistics the API serves from it, checked against hand-computed usage. Then the same with a
dynamic contract: a year of quarter-hour market prices imported (`dsmr-ts prices import`), and
`dsmr-ts regenerate` again, which now prices every quarter hour; a day's cost checked by hand.

    .venv/bin/python benchmarks/regenerate_year.py [--days 365]

Own influxd and API on free ports in a temp dir. DSMR-reader turns ~300 readings/s into statistics
on this machine kind (measured separately): about 3 hours for this year.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zoneinfo
from decimal import Decimal
from typing import Iterator

from readings_api import percentile, timed_get, wait_for_cache_snapshot
from stack import KEY, Stack

from dsmr_ts.influx.store import Store
from dsmr_ts.telegram import Reading

METER = "BENCH"
STEP = 10  # seconds between readings
UTC = dt.timezone.utc
AMSTERDAM = zoneinfo.ZoneInfo("Europe/Amsterdam")


def year(start: int, count: int) -> Iterator[Reading]:
    """A steady 400 W: the tariff-1 register grows from 00:00 to 07:00 UTC, tariff 2 otherwise;
    gas 0.002 m3 every 5 minutes (0.576 m3 a day)."""

    def night_seconds(t: int) -> int:  # of 00:00-07:00 UTC, from the epoch up to t
        return (t // 86400) * 7 * 3600 + min(t % 86400, 7 * 3600)

    for i in range(count):
        t = start + i * STEP
        night = night_seconds(t) - night_seconds(start)
        values = {
            "electricity_delivered_1": round(1000 + night / 3600 * 0.4, 3),
            "electricity_delivered_2": round(2000 + (i * STEP - night) / 3600 * 0.4, 3),
            "electricity_returned_1": 0.0,
            "electricity_returned_2": 0.0,
            "electricity_currently_delivered": 0.4,
            "electricity_currently_returned": 0.0,
        }
        gas_time = t - t % 300
        values.update(
            extra_device_timestamp=dt.datetime.fromtimestamp(gas_time, UTC),
            extra_device_delivered=round(500 + (gas_time - start) / 300 * 0.002, 3),
        )
        yield Reading(dt.datetime.fromtimestamp(t, UTC), METER, values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    count = args.days * 86400 // STEP
    with Stack() as stack:
        store = Store(stack.config.influxdb, timeout_ms=3_600_000)
        now = int(time.time()) // 3600 * 3600
        start = now - args.days * 86400
        began = time.perf_counter()
        store.writer.bulk(year(start, count))
        rate = count / (time.perf_counter() - began)
        store.close()
        print(f"bulk load: {count:,} readings ({args.days} days of 10-second readings) at {rate:,.0f} readings/s")
        print(f"write cache snapshotted after {wait_for_cache_snapshot(stack.influxd.url):.0f} s")
        env = {**os.environ, "DSMR_TS_CONFIG": str(stack.config_path)}
        began = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "dsmr_ts.cli", "regenerate"], env=env, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - began
        if result.returncode != 0:
            sys.exit(f"regenerate failed:\n{result.stderr}")
        print(
            f"dsmr-ts regenerate, {args.days} days: {elapsed:.1f} s = {count / elapsed:,.0f} readings/s"
            "  (DSMR-reader, measured separately: ~300 readings/s, about 3 h for this year)"
        )
        base = stack.start_api()
        day_times = timed_get(base + "/api/v2/statistics/day", {"limit": 366}, 30)
        month_start = dt.datetime.fromtimestamp(now - 40 * 86400, UTC)
        hour_times = timed_get(
            base + "/api/v2/statistics/hour",
            {
                "limit": 744,
                "hour_start__gte": month_start.isoformat(),
                "hour_start__lte": (month_start + dt.timedelta(days=31)).isoformat(),
            },
            30,
        )
        for name, times in (
            ("statistics/day, a year (limit 366)", day_times),
            ("statistics/hour, a month (limit 744)", hour_times),
        ):
            print(f"GET {name}: p50 {percentile(times, 0.5):.1f} ms, p99 {percentile(times, 0.99):.1f} ms")
        request = urllib.request.Request(
            base + "/api/v2/statistics/day?" + urllib.parse.urlencode({"limit": 366}), headers={"X-AUTHKEY": KEY}
        )
        with urllib.request.urlopen(request) as response:
            days = json.loads(response.read())
        print(f"  days returned: {len(days['results'])} of count {days['count']}")
        sample = days["results"][len(days["results"]) // 2]
        usage = float(sample["electricity1"]) + float(sample["electricity2"])
        print(
            f"  check {sample['day']}: electricity {usage:.3f} kWh (expected 9.600 on a 24-hour day),"
            f" gas {sample['gas']} m3 (expected 0.576)"
        )
        stack.stop_api()
        dynamic_year(stack, start, args.days)


CONTRACT = {"markup": Decimal("0.02"), "energy_tax": Decimal("0.1088"), "vat": Decimal(21)}


def market_price(quarter_index: int) -> Decimal:
    """A made-up but day-shaped market price (EUR/kWh): cheap at night and noon, negative at times."""
    hour = quarter_index // 4 % 24
    return Decimal(f"{0.06 + 0.015 * abs(12 - hour) % 0.19 - (0.08 if hour in (12, 13) else 0):.5f}")


def dynamic_year(stack: Stack, start: int, days: int) -> None:
    env = {**os.environ, "DSMR_TS_CONFIG": str(stack.config_path)}
    quarters = (days + 1) * 96
    csv_path = stack.tmp / "prices.csv"
    with open(csv_path, "w") as out:
        out.write("start,price\n")
        for i in range(quarters):
            out.write(f"{dt.datetime.fromtimestamp(start + i * 900, UTC).isoformat()},{market_price(i)}\n")
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dsmr_ts.cli", "prices", "import", str(csv_path), "--area", "NL"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"prices import failed:\n{result.stderr}")
    print(f"dsmr-ts prices import, {quarters:,} quarter-hour prices (CSV): {elapsed:.2f} s (the command, start to end)")
    print(f"  {result.stdout.strip()}")
    first_day = dt.datetime.fromtimestamp(start, UTC).date()
    with open(stack.config_path, "a") as config:
        config.write(
            f"prices:\n  - start: {first_day - dt.timedelta(days=1)}\n    dynamic:\n      area: NL\n"
            f"      markup: {CONTRACT['markup']}\n      energy_tax: {CONTRACT['energy_tax']}\n      vat: 21\n"
        )
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dsmr_ts.cli", "regenerate"], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"regenerate failed:\n{result.stderr}")
    print(f"dsmr-ts regenerate, {days} days, dynamic contract (every quarter hour priced): {elapsed:.1f} s")
    base = stack.start_api()
    request = urllib.request.Request(
        base + "/api/v2/statistics/day?" + urllib.parse.urlencode({"limit": 366}), headers={"X-AUTHKEY": KEY}
    )
    with urllib.request.urlopen(request) as response:
        sample = json.loads(response.read())["results"][days // 2]
    local = dt.datetime.combine(dt.date.fromisoformat(sample["day"]), dt.time(), AMSTERDAM)
    first_quarter = (int(local.timestamp()) - start) // 900
    expected = sum(
        Decimal("0.1") * (market_price(q) + CONTRACT["markup"] + CONTRACT["energy_tax"]) * Decimal("1.21")
        for q in range(first_quarter, first_quarter + 96)
    )
    cost = Decimal(sample["electricity1_cost"]) + Decimal(sample["electricity2_cost"])
    print(
        f"  check {sample['day']}: electricity cost {cost} EUR (by hand: 96 quarters x 0.1 kWh x all-in price"
        f" = {expected:.4f}; the two tariffs are rounded to cents apart)"
    )


if __name__ == "__main__":
    main()
