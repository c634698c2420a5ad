"""A day of traffic compressed into a bounded run: telegrams at full speed through the API (v1) and
through the reader (a ser2net-style socket), printing the RSS of the gunicorn workers and of the
reader at the start and at the end, and influxd's disk use per million readings.

    .venv/bin/python benchmarks/soak.py [--api 200000] [--reader 50000]

Own influxd, gunicorn and reader on loopback ports in a temp dir; stops by itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from dsmr_ts.config import load_config  # noqa: E402
from dsmr_ts.influx.bootstrap import bootstrap  # noqa: E402
from dsmr_ts.influx.build import ensure_influxd  # noqa: E402
from dsmr_ts.influx.server import ManagedInfluxd, free_port  # noqa: E402
from dsmr_ts.influx.store import Store  # noqa: E402
from dsmr_ts.telegram import Reading, build_telegram  # noqa: E402

KEY = "SOAKKEY0123456789"
METERS = 10  # one reading per meter and second: ten meters keep the timestamps within the next day


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def telegrams(count: int, prefix: str) -> list[bytes]:
    # Live data: from a minute from now on, so the hour statistics need no repair per write.
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(minutes=1)
    out = []
    for i in range(count):
        values = {
            "electricity_delivered_1": 1000 + i / 1000,
            "electricity_delivered_2": 1.0,
            "electricity_returned_1": 0.0,
            "electricity_returned_2": 0.0,
            "electricity_currently_delivered": 0.4,
            "electricity_currently_returned": 0.0,
        }
        reading = Reading(
            timestamp=start + dt.timedelta(seconds=i // METERS), meter=f"{prefix}{i % METERS}", values=values
        )
        out.append(build_telegram(reading).encode("latin-1"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", type=int, default=200_000, help="telegrams through the API")
    parser.add_argument("--reader", type=int, default=50_000, help="telegrams through the reader")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dsmr-ts-soak-"))
    with ManagedInfluxd(ensure_influxd(), tmp / "influxd", port=free_port()) as influxd:
        meter_port = free_port()
        config_path = tmp / "dsmr-ts.yaml"
        config_path.write_text(
            f"api: {{enabled: true, key: {KEY}}}\ninfluxdb: {{managed: false, url: {influxd.url}}}\n"
            f"reader: {{port: 'socket://127.0.0.1:{meter_port}', spool_dir: ./spool}}\n"
        )
        config_path.chmod(0o600)  # it holds the key: dsmr-ts refuses a world-readable one
        bootstrap(load_config(config_path))
        config = load_config(config_path)
        env = {**os.environ, "DSMR_TS_CONFIG": str(config_path)}
        port = free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "dsmr_ts.cli", "serve"],
            env={**env, "DSMR_TS_SERVER_BIND": f"127.0.0.1:{port}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/api/v1/datalogger/dsmrreading"
        for _ in range(600):
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        try:
            batch = telegrams(args.api, "API")
            local = threading.local()

            def post(telegram: bytes) -> int:
                if not hasattr(local, "session"):
                    local.session = requests.Session()
                return local.session.post(url, data={"telegram": telegram}, headers={"X-AUTHKEY": KEY}).status_code

            with ThreadPoolExecutor(4) as pool:
                warm = list(pool.map(post, batch[:2000]))
                workers = children(api.pid)
                start_rss = {pid: rss_mib(pid) for pid in workers}
                began = time.perf_counter()
                codes = warm + list(pool.map(post, batch[2000:]))
                elapsed = time.perf_counter() - began
            end_rss = {pid: rss_mib(pid) for pid in children(api.pid)}
            print(f"API: {len(codes)} telegrams, {codes.count(201)} stored, {(len(codes) - 2000) / elapsed:.0f}/s")
            for pid in workers:
                print(
                    f"  gunicorn worker {pid}: RSS {start_rss[pid]:.1f} MiB after warm-up -> "
                    f"{end_rss.get(pid, float('nan')):.1f} MiB at the end"
                )
        finally:
            api.terminate()
            api.wait()

        # The reader, fed as fast as the socket takes it.
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", meter_port))
        server.listen(1)
        reader = subprocess.Popen(
            [sys.executable, "-m", "dsmr_ts.cli", "reader"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        connection, _ = server.accept()
        store = Store(config.influxdb, timeout_ms=600_000)
        try:
            stream = telegrams(args.reader, "RDR")
            connection.sendall(b"".join(stream[:1000]))
            while sum(store.readings.brute_force_count(f"RDR{m}", None, None) for m in range(METERS)) < 1000:
                time.sleep(0.5)
            start = rss_mib(reader.pid)
            began = time.perf_counter()
            connection.sendall(b"".join(stream[1000:]))
            while (
                stored := sum(store.readings.brute_force_count(f"RDR{m}", None, None) for m in range(METERS))
            ) < args.reader:
                time.sleep(1)
            elapsed = time.perf_counter() - began
            print(
                f"reader: {stored} telegrams stored, {(args.reader - 1000) / elapsed:.0f}/s; "
                f"RSS {start:.1f} MiB -> {rss_mib(reader.pid):.1f} MiB"
            )
        finally:
            reader.terminate()
            reader.wait()
            connection.close()
            server.close()
        total = sum(
            store.readings.brute_force_count(f"{p}{m}", None, None) for p in ("API", "RDR") for m in range(METERS)
        )
        store.close()
        files = [f.stat() for f in (tmp / "influxd").rglob("*") if f.is_file()]
        # Allocated blocks, not apparent sizes: each bucket's series file is a sparse 32 MiB preallocation.
        used = sum(st.st_blocks * 512 for st in files) / 2**20
        apparent = sum(st.st_size for st in files) / 2**20
        print(
            f"influxd disk: {used:.0f} MiB used ({apparent:.0f} MiB apparent) for {total} readings = "
            f"{used / max(total, 1) * 1e6:.0f} MiB per million readings, before compaction settles"
        )


if __name__ == "__main__":
    main()
