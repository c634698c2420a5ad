"""The energy page at size: the read benchmark's store (N one-second DSMR 5 readings, default
10 M), then every data request the page makes (p50 and p99 over sequential requests after
warm-ups), the first render with data in Debian's chromium (from navigation to every figure and
chart drawn), and the page's weight.

    .venv/bin/python benchmarks/page.py [--readings 10000000] [--repeat 30] [--keep DIR]

--keep DIR shares the store with `benchmarks/readings_api.py --keep DIR` (a 10 M load takes a few
minutes). Needs chromium (Debian: apt-get install chromium).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import shutil
import statistics
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from readings_api import load, percentile
from stack import KEY, Stack

from dsmr_ts.influx.store import Store
from dsmr_ts.resources.web import PAGE_FILES

METER = "BENCH"


def timed(url: str, repeat: int, warmups: int = 3) -> tuple[list[float], int]:
    """Milliseconds of each of `repeat` GETs (after warm-ups), and the size of the last answer."""
    times, size = [], 0
    request = urllib.request.Request(url, headers={"X-AUTHKEY": KEY})
    for index in range(warmups + repeat):
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:
            size = len(response.read())
        if index >= warmups:
            times.append((time.perf_counter() - began) * 1000)
    return times, size


def first_render(url: str, runs: int) -> list[float]:
    """Seconds from navigation to the page with every figure and chart drawn, in a fresh context each."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]  # fmt: skip
    found = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=args)
        for _ in range(runs + 1):  # the first warms influxd and the workers
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            began = time.perf_counter()
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=120_000)
            found.append(time.perf_counter() - began)
            context.close()
        browser.close()
    return found[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=30, help="timed requests per figure")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="the store kept by readings_api.py --keep DIR")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    with Stack(folder=args.keep) as stack:
        store = Store(stack.config.influxdb, timeout_ms=3_600_000)
        start = load(stack, store, args.readings, args.keep)
        base = stack.start_api()
        tz = stack.config.tz
        last = start + dt.timedelta(seconds=args.readings - 1)
        middle = (start + dt.timedelta(seconds=args.readings // 2)).astimezone(tz).date()
        end = last.astimezone(tz).date()
        cases = [
            ("meters (picker, default meter)", "meters", {}),
            ("live (every 5 s)", "live", {}),
            ("summary: today, yesterday, month, year, problems", "summary", {}),
            ("power per minute, the last day (1440 minutes)", "power", {"day": end.isoformat()}),
            ("power per minute, a day in the middle", "power", {"day": middle.isoformat()}),
            ("days of the last month", "days", {"month": end.isoformat()[:7]}),
            ("months of the year", "months", {"year": str(end.year)}),
            ("quarter-hour peaks of the last month", "peaks", {"month": end.isoformat()[:7]}),
        ]
        print(f"\n{args.readings:,} readings; the page's data requests (meter {METER}):")
        print(f"{'request':<52} {'p50 ms':>8} {'p99 ms':>8} {'bytes':>9}")
        for name, path, params in cases:
            query = urllib.parse.urlencode({**params, "meter": METER})
            times, size = timed(f"{base}/web/data/{path}?{query}", args.repeat)
            print(f"{name:<52} {percentile(times, 0.5):8.1f} {percentile(times, 0.99):8.1f} {size:9,}")
        renders = first_render(base, 5)
        print(
            f"\nfirst render with data (navigation to every figure and chart drawn, chromium headless, 5 runs):"
            f" median {statistics.median(renders):.2f} s, slowest {max(renders):.2f} s"
        )
        files = ["index.html", "page.js", "page.css"]
        raw = sum(len((PAGE_FILES / name).read_bytes()) for name in files)
        packed = sum(len(gzip.compress((PAGE_FILES / name).read_bytes(), 9)) for name in files)
        print(f"page weight: {raw / 1024:.1f} KB ({packed / 1024:.1f} KB gzip-compressed): {', '.join(files)}")
        store.close()


if __name__ == "__main__":
    main()
