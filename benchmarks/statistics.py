"""Statistics at size: one year of 10-second readings (3.15 M) plus gas every 5 minutes,
`dsmr-ts regenerate` over the whole year, then GET statistics/day (a year) and statistics/hour
(a month) through gunicorn. Own influxd and API on free ports in a temp dir.

    .venv/bin/python benchmarks/statistics.py [--days 365]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

# This file's name would shadow the stdlib `statistics` module: put the repo root first instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.readings_api import timed_get, wait_for_cache_snapshot  # noqa: E402
from dsmr_ts.config import load_config  # noqa: E402
from dsmr_ts.influx.bootstrap import bootstrap  # noqa: E402
from dsmr_ts.influx.build import ensure_influxd  # noqa: E402
from dsmr_ts.influx.server import ManagedInfluxd, free_port  # noqa: E402
from dsmr_ts.influx.store import Store  # noqa: E402

KEY = "BENCHMARKKEY0123456789"
METER = "BENCH"
STEP = 10  # seconds between readings


def load_year(store: Store, start: int, count: int) -> float:
    def night_seconds(t: int) -> int:
        """Seconds of 00:00-07:00 UTC (the low tariff here) from the epoch up to t."""
        return (t // 86400) * 7 * 3600 + min(t % 86400, 7 * 3600)

    def lines(first: int) -> list[str]:
        out = []
        for i in range(first, min(first + 5000, count)):
            t = start + i * STEP
            night = night_seconds(t) - night_seconds(start)
            day = i * STEP - night
            # A steady 400 W: each register grows only in its own tariff's hours.
            out.append(
                f"reading,meter={METER} electricity_delivered_1={1000 + night / 3600 * 0.4:.3f},"
                f"electricity_delivered_2={2000 + day / 3600 * 0.4:.3f},electricity_returned_1=0.0,"
                f"electricity_returned_2=0.0,electricity_currently_delivered=0.4,"
                f"electricity_currently_returned=0.0 {t * 10**9}"
            )
            if (t % 300) == 0:
                out.append(f"gas,meter={METER} extra_device_delivered={500 + i / 3000:.3f} {t * 10**9}")
        return out

    began = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda first: store.write_lines(lines(first)), range(0, count, 5000)))
    return count / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    count = args.days * 86400 // STEP
    tmp = Path(tempfile.mkdtemp(prefix="dsmr-ts-bench-stats-"))
    with ManagedInfluxd(ensure_influxd(), tmp / "influxd", port=free_port()) as influxd:
        config_path = tmp / "dsmr-ts.yaml"
        config_path.write_text(f"api: {{enabled: true, key: {KEY}}}\ninfluxdb: {{managed: false, url: {influxd.url}}}\n")
        bootstrap(load_config(config_path))
        config = load_config(config_path)
        store = Store(config.influxdb, timeout_ms=600_000)
        now = int(time.time()) // 3600 * 3600
        start = now - args.days * 86400
        rate = load_year(store, start, count)
        print(f"bulk load: {count:,} readings ({args.days} days of 10-second readings) at {rate:,.0f} readings/s")
        print(f"write cache snapshotted after {wait_for_cache_snapshot(influxd.url):.0f} s")

        env = {**os.environ, "DSMR_TS_CONFIG": str(config_path)}
        began = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "dsmr_ts.cli", "regenerate"], env=env,
                                capture_output=True, text=True)
        elapsed = time.perf_counter() - began
        if result.returncode != 0:
            sys.exit(f"regenerate failed:\n{result.stderr}")
        print(f"dsmr-ts regenerate, {args.days} days: {elapsed:.1f} s = {count / elapsed:,.0f} readings/s"
              "  (target < 60 s; DSMR-reader ~300 readings/s, i.e. ~3 h for this year)")

        port = free_port()
        api = subprocess.Popen([sys.executable, "-m", "dsmr_ts.cli", "serve"],
                               env={**env, "DSMR_TS_SERVER_BIND": f"127.0.0.1:{port}"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if requests.get(base + "/health", timeout=1).ok:
                        break
                except requests.ConnectionError:
                    time.sleep(0.1)
            day_times = timed_get(base + "/api/v2/statistics/day", {"limit": 366}, 30)
            month_start = dt.datetime.fromtimestamp(now - 40 * 86400, dt.timezone.utc)
            hour_times = timed_get(base + "/api/v2/statistics/hour", {
                "limit": 744, "hour_start__gte": month_start.isoformat(),
                "hour_start__lte": (month_start + dt.timedelta(days=31)).isoformat()}, 30)
            days = requests.get(base + "/api/v2/statistics/day", params={"limit": 366},
                                headers={"X-AUTHKEY": KEY}).json()
            for name, times in (("statistics/day, a year (limit 366)", day_times),
                                ("statistics/hour, a month (limit 744)", hour_times)):
                print(f"GET {name}: p50 {sorted(times)[len(times) // 2]:.1f} ms, p90 {sorted(times)[int(len(times) * .9)]:.1f} ms"
                      "  (target p50 < 50 ms)")
            print(f"  days returned: {len(days['results'])} of count {days['count']}")
            sample = days["results"][len(days["results"]) // 2]
            usage = float(sample["electricity1"]) + float(sample["electricity2"])
            print(f"  check {sample['day']}: electricity {usage:.3f} kWh (expected 9.600 on a 24-hour day),"
                  f" gas {sample['gas']} m3 (expected 2.880)")
        finally:
            api.terminate()
            api.wait()
            store.close()


if __name__ == "__main__":
    main()
