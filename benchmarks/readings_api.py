"""Readings API at size: ingest rate (v1 over HTTP) and GET latency at N stored readings.

Starts its own influxd and `dsmr-ts serve` (gunicorn) on free ports in a temp dir, so it
never touches your data. Prints figures beside DSMR-reader's, measured on this machine kind.

    .venv/bin/python benchmarks/readings_api.py [--readings 1000000] [--telegrams 2000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsmr_ts.config import load_config  # noqa: E402
from dsmr_ts.influx.bootstrap import bootstrap  # noqa: E402
from dsmr_ts.influx.build import ensure_influxd  # noqa: E402
from dsmr_ts.influx.server import ManagedInfluxd, free_port  # noqa: E402
from dsmr_ts.influx.store import Store  # noqa: E402
from dsmr_ts.telegram import Reading, build_telegram  # noqa: E402

KEY = "BENCHMARKKEY0123456789"
METER = "BENCH"
UTC = dt.timezone.utc


def bulk_load(store: Store, count: int, start: dt.datetime) -> float:
    """Write `count` one-second readings in 5000-line batches; returns points/s."""
    began = time.perf_counter()
    base = int(start.timestamp())
    batch = 5000
    def write(first: int) -> None:
        lines = [
            f"reading,meter={METER} electricity_delivered_1={1000 + i / 3600:.3f},electricity_delivered_2=500.0,"
            f"electricity_returned_1=0.0,electricity_returned_2=0.0,electricity_currently_delivered=0.4,"
            f"electricity_currently_returned=0.0 {(base + i) * 10**9}"
            for i in range(first, min(first + batch, count))
        ]
        store.write_lines(lines)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(0, count, batch)))
    return count / (time.perf_counter() - began)


def cache_bytes(influx_url: str) -> float:
    text = requests.get(influx_url + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("storage_cache_inuse_bytes"))


def wait_for_cache_snapshot(influx_url: str, timeout: float = 180) -> float:
    """A bulk load leaves data in influxd's write cache; a live meter's data is mostly in TSM
    files. Wait until the cache has been snapshotted so figures show the steady state."""
    began = time.monotonic()
    while cache_bytes(influx_url) > 0 and time.monotonic() - began < timeout:
        time.sleep(1)
    return time.monotonic() - began


def timed_get(url: str, params: dict, repeat: int) -> list[float]:
    session = requests.Session()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = session.get(url, params=params, headers={"X-AUTHKEY": KEY})
        response.raise_for_status()
        response.json()
        times.append((time.perf_counter() - began) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--telegrams", type=int, default=2000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dsmr-ts-bench-"))
    with ManagedInfluxd(ensure_influxd(), tmp / "influxd", port=free_port()) as influxd:
        config_path = tmp / "dsmr-ts.yaml"
        config_path.write_text(f"api: {{enabled: true, key: {KEY}}}\ninfluxdb: {{managed: false, url: {influxd.url}}}\n")
        config = load_config(config_path)
        bootstrap(config)
        config = load_config(config_path)
        store = Store(config.influxdb, timeout_ms=600_000)
        start = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(seconds=args.readings + 3600)
        rate = bulk_load(store, args.readings, start)
        print(f"bulk load: {args.readings:,} readings at {rate:,.0f} readings/s")
        waited = wait_for_cache_snapshot(influxd.url)
        print(f"write cache snapshotted after {waited:.0f} s (influxd snapshots a cold cache after 1 min)")

        port = free_port()
        env = {**os.environ, "DSMR_TS_CONFIG": str(config_path), "DSMR_TS_SERVER_BIND": f"127.0.0.1:{port}",
               "DSMR_TS_SERVER_WORKERS": "2"}
        api = subprocess.Popen([sys.executable, "-m", "dsmr_ts.cli", "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if requests.get(base + "/health", timeout=1).ok:
                        break
                except requests.ConnectionError:
                    time.sleep(0.1)
            url = base + "/api/v2/datalogger/dsmrreading"
            first = timed_get(url, {"ordering": "-timestamp", "limit": 1}, 1)[0]
            print(f"first GET (builds the hour index for {args.readings:,} readings): {first:.0f} ms")
            cases = [
                ("latest reading  ?ordering=-timestamp&limit=1", {"ordering": "-timestamp", "limit": 1}, 50),
                ("first page      ?limit=25", {"limit": 25}, 50),
                ("deep page       ?offset=N/2&limit=25", {"offset": args.readings // 2, "limit": 25}, 20),
                ("one month       ?timestamp__gte..lte (count)", {
                    "timestamp__gte": (start + dt.timedelta(days=2, minutes=17)).isoformat(),
                    "timestamp__lte": (start + dt.timedelta(days=9, minutes=3)).isoformat(), "limit": 1}, 20),
                ("big page        ?limit=10000", {"limit": 10000}, 3),
            ]
            for name, params, repeat in cases:
                times = timed_get(url, params, repeat)
                print(f"{name}: median {statistics.median(times):6.1f} ms  (p90 {sorted(times)[int(len(times) * .9) - 1]:.1f})")
            print("  baseline DSMR-reader at 1 M readings: ~50 ms for the latest reading (it counts every row)")

            # v1 ingest over HTTP, 4 concurrent dataloggers.
            telegrams = []
            t0 = start + dt.timedelta(seconds=args.readings + 10)
            for i in range(args.telegrams):
                reading = Reading(timestamp=t0 + dt.timedelta(seconds=i), meter=METER, values={
                    "electricity_delivered_1": 2000 + i / 1000, "electricity_delivered_2": 1.0,
                    "electricity_returned_1": 0.0, "electricity_returned_2": 0.0,
                    "electricity_currently_delivered": 0.3, "electricity_currently_returned": 0.0})
                telegrams.append(build_telegram(reading))
            session = requests.Session()
            def post(telegram: str) -> int:
                return session.post(base + "/api/v1/datalogger/dsmrreading", data={"telegram": telegram},
                                    headers={"X-AUTHKEY": KEY}).status_code
            began = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                codes = list(pool.map(post, telegrams))
            elapsed = time.perf_counter() - began
            assert codes.count(201) == len(codes), set(codes)
            print(f"v1 ingest: {len(codes) / elapsed:,.0f} telegrams/s over HTTP (4 clients, 2 workers)"
                  "  baseline DSMR-reader: 90-180 telegrams/s")
        finally:
            api.terminate()
            api.wait()
            store.close()


if __name__ == "__main__":
    main()
