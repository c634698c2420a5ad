"""Ingest through the API as dataloggers use it: wrk POSTs unique, realistic telegrams (DSMR 5 with
phases and gas, ~750 bytes; v1) or readings (v2 JSON) at 1, 8 and 32 clients, with live timestamps
(from now on) and historic ones (a day back, advancing: a datalogger catching up). Each run uses its
own meter, so runs never overwrite each other. Prints telegrams/s, p50 and p99 latency, and the CPU
seconds the API (gunicorn and its workers) and influxd spent per 1,000 telegrams.

    .venv/bin/python benchmarks/ingest.py [--seconds 20] [--clients 1,8,32] [--only v1|v2] [--mqtt default|all]

--mqtt default|all also runs `dsmr-ts reader` publishing MQTT (its default sources, or all of them
including every raw telegram) to a mosquitto, and a subscriber counting what arrives. Needs wrk
(Debian: apt-get install wrk; and mosquitto for --mqtt). Starts its own influxd and API in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from stack import KEY, Stack

WRK = Path(__file__).resolve().parent / "wrk"
DAY = 86400

# Measured separately (not in this run) on this machine kind: DSMR-reader v5.11, PostgreSQL, 4 workers.
DSMR_READER = {
    ("v1", 1): "71 (p99 347 ms)",
    ("v1", 8): "120-125",
    ("v1", 32): "108-121 (p99 1 s)",
    ("v2", 8): "140-143",
    ("v2", 32): "110-190",
}


def run_wrk(url: str, version: str, clients: int, seconds: int, ts_base: int, meter: str) -> dict[str, float]:
    threads = min(clients, 2)
    env = {
        **os.environ,
        "TPL": str(WRK / "telegram.txt"),
        "TS_BASE": str(ts_base),
        "AUTHKEY": KEY,
        "NTHREADS": str(threads),
        "METER": meter,
    }
    result = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{clients}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(WRK / f"{version}.lua"),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"RESULT (.*)", result.stdout)
    if not found:
        raise SystemExit(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")
    figures = {key: float(value) for key, value in (part.split("=") for part in found.group(1).split())}
    statuses = re.search(r"STATUS(.*)", result.stdout).group(1).split()
    figures["ok"] = sum(int(s.split("=")[1]) for s in statuses if s.split("=")[0] in ("200", "201"))
    figures["failed"] = sum(int(s.split("=")[1]) for s in statuses if s.split("=")[0] not in ("200", "201"))
    return figures


def telegrams(count: int, meter: str, start: int) -> list[str]:
    """Realistic DSMR 5 telegrams (the wrk template), one second apart from `start` (Unix s)."""
    from dsmr_ts.telegram import crc16_arc

    template = (WRK / "telegram.txt").read_text(encoding="latin-1").replace("@ID@", meter.encode().hex().upper())
    out = []
    for i in range(count):
        t = start + i
        text = (
            template.replace("@TS@", time.strftime("%y%m%d%H%M%S", time.gmtime(t + 3600)) + "W")
            .replace("@GTS@", time.strftime("%y%m%d%H%M", time.gmtime(t + 3600 - t % 300)) + "00W")
            .replace("@E1@", f"{1000 + i * 0.001:010.3f}")
            .replace("@E2@", f"{2000 + i * 0.0005:010.3f}")
            .replace("@R1@", "000010.000")
            .replace("@R2@", "000020.000")
            .replace("@CD@", f"{1 + (i % 1000) / 1000:06.3f}")
        )
        out.append(text + f"{crc16_arc(text.encode('latin-1')):04X}\r\n")
    return out


def count_messages(port: int):
    """A subscriber to every topic; returns a function giving how many messages arrived."""
    import paho.mqtt.client as paho

    count = [0]
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="benchmark-counter")
    client.on_connect = lambda c, u, f, reason, p: c.subscribe("#", 0)
    client.on_message = lambda c, u, m: count.__setitem__(0, count[0] + 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return lambda: count[0]


def _nginx_answering_201(folder: Path) -> tuple[subprocess.Popen, str] | None:
    """nginx (if installed) on a free port, answering every POST with 201 like a remote API would."""
    from dsmr_ts.influx.server import free_port

    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not binary:
        print("(nginx is not installed: no forwarding figure without the remote's own cost)")
        return None
    port = free_port()
    conf = folder / "nginx-201.conf"
    conf.write_text(f"""daemon off; worker_processes 1; pid {folder}/nginx-201.pid; error_log {folder}/nginx-201.log;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {folder}/nginx-body;
  server {{ listen 127.0.0.1:{port}; location / {{ return 201; }} }} }}
""")
    process = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{port}/", method="POST", data=b"x"), timeout=1
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 201:
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            pass
        else:
            return process, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    process.terminate()
    return None


def reader_paths(stack: Stack, count: int) -> None:
    """The reader's two bulk paths, in this process as the reader runs them: replaying its spool
    into InfluxDB after an outage, and forwarding spooled telegrams to a remote API (this stack's)."""
    import datetime as dt

    from dsmr_ts.config import ForwardTarget
    from dsmr_ts.influx.store import Store
    from dsmr_ts.reader.service import Forwarder, ReaderService
    from dsmr_ts.reader.spool import Spool

    received = dt.datetime.now(dt.timezone.utc)
    store = Store(stack.config.influxdb)
    try:
        service = ReaderService(stack.config, store, None)
        history = telegrams(count, "BENCH-REPLAY", int(time.time()) - DAY)  # an outage a day ago
        for text in history:
            service.spool.append(text, received)
        began, cpu = time.perf_counter(), stack.cpu()
        while service.spool.has_pending():
            service.flush_spool()
        elapsed = time.perf_counter() - began
        influx_cpu = (stack.cpu()[1] - cpu[1]) / count * 1000
        print(
            f"reader: spool replay of {count:,} telegrams {count / elapsed:,.0f}/s  (influxd {influx_cpu:.2f} cpu-s/1k)"
        )
        remotes = [("this stack's API (on the same 2 cores)", stack.url)]
        nginx = _nginx_answering_201(stack.tmp)
        if nginx:
            remotes.append(("nginx answering 201 (a remote elsewhere: only the forwarder's own cost)", nginx[1]))
        for index, (what, base) in enumerate(remotes):
            forwarder = Forwarder(
                ForwardTarget(url=base + "/api/v1/datalogger/dsmrreading", key=KEY),
                Spool(stack.tmp / "spool", f"forward-bench-{index}", 1 << 30),
            )
            for text in telegrams(count, f"BENCH-FORWARD-{index}", int(time.time()) - DAY):
                forwarder.spool.append(text, received)
            began, own_cpu = time.perf_counter(), time.process_time()
            while forwarder.spool.has_pending():
                forwarder.run()
                if forwarder.backoff.down_since is not None:
                    raise SystemExit("forwarding failed")
            elapsed, own_cpu = time.perf_counter() - began, time.process_time() - own_cpu
            forwarder.close()
            print(
                f"reader: forwarding {count:,} telegrams {count / elapsed:,.0f}/s to {what};"
                f" {Forwarder.CONNECTIONS} connections, the forwarder {own_cpu / count * 1000:.2f} cpu-s/1k"
            )
        if nginx:
            nginx[0].terminate()
            nginx[0].wait(30)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="length of each run (default 20)")
    parser.add_argument("--clients", default="1,8,32", help="client counts to sweep (default 1,8,32)")
    parser.add_argument("--only", choices=["v1", "v2"], help="only one API version")
    parser.add_argument(
        "--spooled", type=int, default=20_000, help="telegrams for the reader's replay and forwarding (0: skip)"
    )
    parser.add_argument(
        "--mqtt",
        choices=["default", "all"],
        help="with the MQTT publisher running: its default sources (what Home Assistant reads), or all",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    clients = [int(c) for c in args.clients.split(",")]
    versions = [args.only] if args.only else ["v1", "v2"]
    extra, broker = "", None
    if args.mqtt:
        folder = Path(__file__).resolve().parent / ".mosquitto"
        folder.mkdir(exist_ok=True)
        broker, port = Stack.start_mosquitto(folder)
        extra = f"mqtt:\n  enabled: true\n  port: {port}\n"
        if args.mqtt == "all":
            extra += "  publish: [raw, json, reading, day, period, meter_stats, gas, quarter_hour_peaks, discovery]\n"
    with Stack(extra) as stack:
        url = stack.start_api()
        workers = stack.config.server.workers
        received = None
        if broker:
            stack.broker = broker
            stack.start_reader()
            received = count_messages(port)
        print(
            f"dsmr-ts API: gunicorn with {workers} workers; influxd {stack.influxd.url}; {args.seconds} s per run;"
            f" MQTT {'on (' + args.mqtt + ' sources)' if broker else 'off'}"
        )
        print(
            f"{'run':<22} {'telegrams/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6}"
            f" {'API cpu-s/1k':>12} {'influxd cpu-s/1k':>16}   DSMR-reader (measured separately)"
        )
        follow: dict[str, int] = {}  # with MQTT: one meter per version whose live readings continue run to run
        for version in versions:
            for timing in ("live",) if broker else ("live", "historic"):
                for count in clients:
                    meter = f"BENCH-{version}-{timing}-{count}" if not broker else f"BENCH-MQTT-{version}"
                    now = int(time.time())
                    # v1 timestamps are the meter's wall clock with a W (winter, UTC+1) flag.
                    base = now - (DAY if timing == "historic" else 0) + (3600 if version == "v1" else 0)
                    # A telegram a second of meter time: at 1,000/s a run reaches hours ahead, and the
                    # publisher only follows readings newer than the newest it published.
                    if broker:
                        base = max(base, follow.get(version, 0))
                    before, side_before = stack.cpu(), stack.side_cpu()
                    figures = run_wrk(url, version, count, args.seconds, base, meter)
                    after, side_after = stack.cpu(), stack.side_cpu()
                    done = max(figures["ok"], 1)
                    if broker:
                        follow[version] = base + int(figures["ok"]) + 10
                    rate = figures["ok"] / figures["seconds"]
                    api_cpu = (after[0] - before[0]) / done * 1000
                    influx_cpu = (after[1] - before[1]) / done * 1000
                    reference = DSMR_READER.get((version, count), "-") if timing == "live" else "-"
                    print(
                        f"{version} {timing:<8} {count:>2} clients {rate:>11,.0f} {figures['p50_ms']:>7.1f}"
                        f" {figures['p99_ms']:>7.1f} {int(figures['failed']):>6} {api_cpu:>12.2f}"
                        f" {influx_cpu:>16.2f}   {reference}",
                        flush=True,
                    )
                    if received is not None:
                        print(
                            f"   MQTT: {received():,} messages received so far; reader + mosquitto"
                            f" {(side_after - side_before) / done * 1000:.2f} cpu-s/1k",
                            flush=True,
                        )
        print()
        if stack.reader and stack.reader.poll() is not None:
            raise SystemExit("the reader process stopped: " + (stack.tmp / "reader.log").read_text()[-2000:])
        if args.spooled:
            reader_paths(stack, args.spooled)
        with urllib.request.urlopen(urllib.request.Request(url + "/metrics", headers={"X-AUTHKEY": KEY})) as response:
            rejected = [
                line
                for line in response.read().decode().splitlines()
                if line.startswith("dsmr_ts_telegrams_total{") and "rejected" in line
            ]
        print("rejected telegrams:", rejected[0].rsplit(" ", 1)[1] if rejected else "0")


if __name__ == "__main__":
    main()
