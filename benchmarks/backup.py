"""Backup and restore at size: the read benchmark's store (N one-second DSMR 5 readings, default
10 M), `dsmr-ts backup` of it while clients post live telegrams (the service's ingest rate before
and during the backup), the backup's size beside the store's, and `dsmr-ts restore` into a fresh
influxd, with the readings counted on both sides.

    .venv/bin/python benchmarks/backup.py [--readings 10000000] [--clients 8] [--keep DIR]

--keep DIR shares the store with `benchmarks/readings_api.py --keep DIR` / `page.py --keep DIR`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from readings_api import load
from stack import KEY, Stack

from dsmr_ts.config import load_config
from dsmr_ts.influx.backup import backups, folder_bytes
from dsmr_ts.influx.build import ensure_influxd
from dsmr_ts.influx.client import InfluxClient
from dsmr_ts.influx.server import ManagedInfluxd, free_port
from dsmr_ts.influx.store import Store
from dsmr_ts.reader.simulator import MeterSimulator

COUNT = 'SELECT count("electricity_delivered_1") FROM "reading"'


class Posters:
    """`clients` threads posting live v1 telegrams (each its own meter) until stop(); counts the 201s."""

    def __init__(self, url: str, clients: int):
        self.url = url + "/api/v1/datalogger/dsmrreading"
        self.stored = 0
        self.other = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.post, args=(n,), daemon=True) for n in range(clients)]
        for thread in self.threads:
            thread.start()

    def post(self, number: int) -> None:
        simulator = MeterSimulator(meter=f"BACKUP-BENCH-{number}")
        session = requests.Session()
        while not self.stopping.is_set():
            telegram = simulator.telegram(dt.datetime.now(dt.timezone.utc))
            status = session.post(self.url, data={"telegram": telegram}, headers={"X-AUTHKEY": KEY}).status_code
            with self.lock:
                if status == 201:
                    self.stored += 1
                else:
                    self.other += 1

    def rate_while(self, action) -> tuple[float, float, object]:
        """(201s per second, seconds, action's result) while action() runs."""
        before, began = self.stored, time.perf_counter()
        result = action()
        seconds = time.perf_counter() - began
        return (self.stored - before) / seconds, seconds, result

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()


def dsmr_ts(config: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "dsmr_ts.cli", "--config", str(config), *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"dsmr-ts {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done


def readings_in(settings) -> int:
    client = InfluxClient(settings, timeout_ms=3_600_000)
    try:
        ((series,),) = client.influxql([COUNT])
        return int(next(series.rows())["count"])
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=10_000_000)
    parser.add_argument("--clients", type=int, default=8, help="clients posting live telegrams meanwhile")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="the store kept by readings_api.py --keep DIR")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    with Stack(folder=args.keep) as stack, tempfile.TemporaryDirectory(prefix="dsmr-ts-backup-bench-") as work:
        store = Store(stack.config.influxdb, timeout_ms=3_600_000)
        load(stack, store, args.readings, args.keep)
        store.close()
        base = stack.start_api()
        engine = folder_bytes(stack.tmp / "influxd" / "engine")
        posters = Posters(base, args.clients)
        quiet, _, _ = posters.rate_while(lambda: time.sleep(20))
        folder = Path(work) / "backups"
        during, seconds, made = posters.rate_while(lambda: dsmr_ts(stack.config_path, "backup", "--to", str(folder)))
        posters.stop()
        (backup,) = backups(folder)
        print(
            f"\nstore: {args.readings:,} readings (+ what the clients posted), influxd engine {engine / 2**20:,.0f} MiB"
        )
        print(f"backup: {seconds:.1f} s, {folder_bytes(backup) / 2**20:,.0f} MiB on disk ({made.stdout.strip()})")
        print(
            f"ingest while it ran ({args.clients} clients posting live v1 telegrams): {during:,.0f} readings/s;"
            f" before it, 20 s: {quiet:,.0f} readings/s; refused or failed: {posters.other}"
        )

        target = Path(work) / "restored"
        influxd = ManagedInfluxd(ensure_influxd(), target / "influxd", port=free_port()).start()
        try:
            config = target / "dsmr-ts.yaml"
            config.write_text(f"api: {{enabled: true, key: {KEY}}}\ninfluxdb: {{managed: false, url: {influxd.url}}}\n")
            config.chmod(0o600)
            began = time.perf_counter()
            dsmr_ts(config, "restore", str(backup))
            restore_seconds = time.perf_counter() - began
            restored = load_config(config)  # with the token restore's setup made
            counts = readings_in(stack.config.influxdb), readings_in(restored.influxdb)
            print(f"restore into a fresh influxd: {restore_seconds:.1f} s (onboarding and setup included)")
            print(f"readings: {counts[0]:,} in the store, {counts[1]:,} in the restored one")
        finally:
            influxd.stop()


if __name__ == "__main__":
    main()
