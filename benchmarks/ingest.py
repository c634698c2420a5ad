"""Ingest through the API as dataloggers use it: wrk POSTs unique, realistic telegrams (DSMR 5 with
phases and gas, ~750 bytes; v1) or readings (v2 JSON) at 1, 8 and 32 clients, with live timestamps
(from now on) and historic ones (a day back, advancing: a datalogger catching up). Each run uses its
own meter, so runs never overwrite each other. Prints telegrams/s, p50 and p99 latency, and the CPU
seconds the API (gunicorn and its workers) and influxd spent per 1,000 telegrams.

    .venv/bin/python benchmarks/ingest.py [--seconds 20] [--clients 1,8,32] [--only v1|v2]

Needs wrk (Debian: apt-get install wrk). Starts its own influxd and API in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from stack import KEY, Stack

WRK = Path(__file__).resolve().parent / "wrk"
DAY = 86400

# Measured separately (not in this run) on this machine kind: DSMR-reader v5.11, PostgreSQL, 4 workers.
DSMR_READER = {("v1", 1): "71 (p99 347 ms)", ("v1", 8): "120-125", ("v1", 32): "108-121 (p99 1 s)",
               ("v2", 8): "140-143", ("v2", 32): "110-190"}


def run_wrk(url: str, version: str, clients: int, seconds: int, ts_base: int, meter: str) -> dict[str, float]:
    threads = min(clients, 2)
    env = {**os.environ, "TPL": str(WRK / "telegram.txt"), "TS_BASE": str(ts_base), "AUTHKEY": KEY,
           "NTHREADS": str(threads), "METER": meter}
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK / f"{version}.lua"),
         url], env=env, capture_output=True, text=True, check=True)
    found = re.search(r"RESULT (.*)", result.stdout)
    if not found:
        raise SystemExit(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")
    figures = {key: float(value) for key, value in (part.split("=") for part in found.group(1).split())}
    statuses = re.search(r"STATUS(.*)", result.stdout).group(1).split()
    figures["ok"] = sum(int(s.split("=")[1]) for s in statuses if s.split("=")[0] in ("200", "201"))
    figures["failed"] = sum(int(s.split("=")[1]) for s in statuses if s.split("=")[0] not in ("200", "201"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="length of each run (default 20)")
    parser.add_argument("--clients", default="1,8,32", help="client counts to sweep (default 1,8,32)")
    parser.add_argument("--only", choices=["v1", "v2"], help="only one API version")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    clients = [int(c) for c in args.clients.split(",")]
    versions = [args.only] if args.only else ["v1", "v2"]
    with Stack() as stack:
        url = stack.start_api()
        workers = stack.config.server.workers
        print(f"dsmr-ts API: gunicorn with {workers} workers; influxd {stack.influxd.url}; {args.seconds} s per run")
        print(f"{'run':<22} {'telegrams/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6}"
              f" {'API cpu-s/1k':>12} {'influxd cpu-s/1k':>16}   DSMR-reader (measured separately)")
        for version in versions:
            for timing in ("live", "historic"):
                for count in clients:
                    meter = f"BENCH-{version}-{timing}-{count}"
                    now = int(time.time())
                    # v1 timestamps are the meter's wall clock with a W (winter, UTC+1) flag.
                    base = now - (DAY if timing == "historic" else 0) + (3600 if version == "v1" else 0)
                    before = stack.cpu()
                    figures = run_wrk(url, version, count, args.seconds, base, meter)
                    after = stack.cpu()
                    done = max(figures["ok"], 1)
                    rate = figures["ok"] / figures["seconds"]
                    api_cpu = (after[0] - before[0]) / done * 1000
                    influx_cpu = (after[1] - before[1]) / done * 1000
                    reference = DSMR_READER.get((version, count), "-") if timing == "live" else "-"
                    print(f"{version} {timing:<8} {count:>2} clients {rate:>11,.0f} {figures['p50_ms']:>7.1f}"
                          f" {figures['p99_ms']:>7.1f} {int(figures['failed']):>6} {api_cpu:>12.2f}"
                          f" {influx_cpu:>16.2f}   {reference}", flush=True)
        with urllib.request.urlopen(urllib.request.Request(
                url + "/metrics", headers={"X-AUTHKEY": KEY})) as response:
            rejected = [line for line in response.read().decode().splitlines()
                        if line.startswith("dsmr_ts_telegrams_total{") and "rejected" in line]
        print("rejected telegrams:", rejected[0].rsplit(" ", 1)[1] if rejected else "0")


if __name__ == "__main__":
    main()
