"""`dsmr-ts reader`: one process, an APScheduler scheduler, and these jobs:

- read meter (every second, reading for 0.8 s of it): read what the meter sent, cut it into telegrams, store each one
  through the same Ingest as the API; InfluxDB unreachable -> the disk spool;
- flush spool (every 5 s): deliver spooled telegrams in order once InfluxDB answers;
- forward to <url> (every 2 s, one per target): POST spooled telegrams to remote
  DSMR-reader-compatible APIs (v1, with the key header), each from its own spool, so a slow or
  dead remote never delays local storage;
- telegram counters (every 60 s): one log line with what happened in the last minute.

Nothing is lost while the process runs, and a telegram is on disk (InfluxDB's WAL or the spool,
both fsync'd) before the next one is read, so a crash loses at most the telegram being read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import signal
import sys
import threading
import time
import tty
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any

import serial
from apscheduler.schedulers.blocking import BlockingScheduler

from dsmr_ts.config import Config, ForwardTarget
from dsmr_ts.influx.store import Store, StoreUnavailable
from dsmr_ts.ingest import Ingest
from dsmr_ts.reader.framing import TelegramFramer
from dsmr_ts.reader.simulator import MeterSimulator
from dsmr_ts.reader.spool import Spool, SpooledTelegram
from dsmr_ts.telegram import ParseError

log = logging.getLogger("dsmr_ts.reader")

# Serial settings per DSMR version (API-NOTES.md); reader.serial overrides any of them.
SERIAL_PRESETS: dict[str, dict[str, Any]] = {
    "2.2": {"baudrate": 9600, "bytesize": 7, "parity": "E", "stopbits": 1, "xonxoff": True},
    "3": {"baudrate": 9600, "bytesize": 7, "parity": "E", "stopbits": 1, "xonxoff": True},
    **{version: {"baudrate": 115200, "bytesize": 8, "parity": "N", "stopbits": 1, "xonxoff": True}
       for version in ("4", "5", "fluvius", "smarty")},
}
READ_TIMEOUT = 0.2  # seconds a read waits for bytes
MAX_BACKOFF = 30.0


def serial_settings(config: Config) -> dict[str, Any]:
    return {**SERIAL_PRESETS[config.reader.dsmr_version], **config.reader.serial}


class Backoff:
    """Exponential retry delay, and one log line per outage (not per attempt)."""

    def __init__(self, what: str):
        self.what = what
        self.delay = 0.0
        self.next_try = 0.0
        self.down_since: float | None = None

    def ready(self) -> bool:
        return time.monotonic() >= self.next_try

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            log.warning("%s failed: %s; retrying with backoff", self.what, reason)
        self.delay = min(MAX_BACKOFF, max(1.0, self.delay * 2))
        self.next_try = now + self.delay

    def succeeded(self) -> None:
        if self.down_since is not None:
            log.info("%s works again after %.0f s", self.what, time.monotonic() - self.down_since)
        self.down_since, self.delay, self.next_try = None, 0.0, 0.0


class MeterConnection:
    """The meter over a device path or any pyserial URL (socket:// for ser2net, rfc2217://)."""

    def __init__(self, port: str, settings: dict[str, Any]):
        self.port = port
        self.settings = settings
        self.serial: serial.SerialBase | None = None
        self.backoff = Backoff(f"meter connection {port}")

    def read(self) -> bytes:
        """Bytes the meter sent (maybe none). Reconnects with backoff; never raises."""
        if self.serial is None:
            if not self.backoff.ready():
                time.sleep(READ_TIMEOUT)
                return b""
            try:
                self.serial = serial.serial_for_url(self.port, timeout=READ_TIMEOUT, **self.settings)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.backoff.failed(str(exc))
                return b""
        try:
            data = self.serial.read(max(1, self.serial.in_waiting))
        except (serial.SerialException, OSError) as exc:
            self.close()
            self.backoff.failed(str(exc) or exc.__class__.__name__)
            return b""
        if data:
            self.backoff.succeeded()
        return data

    def close(self) -> None:
        if self.serial is not None:
            try:
                self.serial.close()
            except (serial.SerialException, OSError):
                pass
            self.serial = None


class Forwarder:
    """POSTs telegrams to one remote API (v1) from its own spool, in order, with retry."""

    def __init__(self, target: ForwardTarget, spool: Spool, timeout: float = 10.0):
        self.target = target
        self.spool = spool
        self.timeout = timeout
        # Named by host only: a URL may hold credentials, and the key is never logged.
        self.host = urllib.parse.urlsplit(target.url).hostname or "?"
        self.backoff = Backoff(f"forwarding to {self.host}")

    def post(self, record: SpooledTelegram) -> None:
        body = urllib.parse.urlencode({"telegram": record.telegram}).encode()
        request = urllib.request.Request(self.target.url, data=body, method="POST",
                                         headers={"X-AUTHKEY": self.target.key})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 400:  # the remote rejects this telegram; retrying will not change that
                log.warning("forwarding: %s rejected a telegram: %s", self.backoff.what,
                            exc.read(200).decode("latin-1", "replace"))
                return
            raise

    def run(self) -> None:
        if not self.backoff.ready() or not self.spool.has_pending():
            return
        try:
            self.spool.drain(self.post)
            self.backoff.succeeded()
        except (urllib.error.URLError, OSError) as exc:
            self.backoff.failed(str(getattr(exc, "reason", exc)))


class ReaderService:
    def __init__(self, config: Config, store: Store, port: str):
        self.config = config
        self.ingest = Ingest(store)
        spool_dir = config.resolve_path(config.reader.spool_dir)
        self.spool = Spool(spool_dir, "influxdb", config.reader.spool_max_bytes)
        self.forwarders = [
            Forwarder(target, Spool(spool_dir, "forward-" + hashlib.sha256(target.url.encode()).hexdigest()[:12],
                                    config.reader.spool_max_bytes))
            for target in config.reader.forward
        ]
        self.connection = MeterConnection(port, serial_settings(config))
        self.framer = TelegramFramer()
        self.store_backoff = Backoff("storing in InfluxDB")
        self.counters: Counter[str] = Counter()

    # --- jobs ----------------------------------------------------------------------------------

    def read_meter(self) -> None:
        # Reads for most of its 1 s interval, so the meter is read almost continuously while
        # runs never overlap.
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            data = self.connection.read()
            for telegram in self.framer.feed(data):
                self.handle(telegram.decode("latin-1"), dt.datetime.now(dt.timezone.utc))

    def handle(self, telegram: str, received: dt.datetime) -> None:
        """One telegram: to every forward spool, then into InfluxDB (or the spool, in order)."""
        self.counters["read"] += 1
        for forwarder in self.forwarders:
            forwarder.spool.append(telegram, received)
        if self.spool.has_pending() or not self.store_backoff.ready():
            self._spool(telegram, received)  # keep the order: older telegrams go first
            return
        try:
            self.ingest.telegram(telegram, now=received)
            self.counters["stored"] += 1
        except ParseError:
            self.counters["rejected"] += 1
        except StoreUnavailable as exc:
            self.store_backoff.failed(str(exc))
            self._spool(telegram, received)

    def _spool(self, telegram: str, received: dt.datetime) -> None:
        self.counters["spooled" if self.spool.append(telegram, received) else "dropped (spool full)"] += 1

    def flush_spool(self) -> None:
        if not self.spool.has_pending() or not self.store_backoff.ready():
            return

        def deliver(record: SpooledTelegram) -> None:
            try:
                self.ingest.telegram(record.telegram, now=record.received)
                self.counters["stored from spool"] += 1
            except ParseError:
                self.counters["rejected"] += 1

        try:
            self.spool.drain(deliver)
            self.store_backoff.succeeded()
        except StoreUnavailable as exc:
            self.store_backoff.failed(str(exc))

    def log_counters(self) -> None:
        counts, self.counters = self.counters, Counter()
        waiting = len(self.spool)
        if counts or waiting:
            summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "nothing read"
            log.info("telegrams in the last minute: %s; %d waiting in the spool", summary, waiting)

    # --- scheduling ----------------------------------------------------------------------------

    def scheduler(self) -> BlockingScheduler:
        scheduler = BlockingScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
        scheduler.add_job(self.read_meter, "interval", seconds=1, id="read meter")
        scheduler.add_job(self.flush_spool, "interval", seconds=5, id="flush spool")
        for index, forwarder in enumerate(self.forwarders):
            scheduler.add_job(forwarder.run, "interval", seconds=2, id=f"forward to {forwarder.host} ({index})")
        scheduler.add_job(self.log_counters, "interval", seconds=60, id="telegram counters")
        return scheduler

    def close(self) -> None:
        self.connection.close()


def start_simulated_meter(rate: float = 1.0) -> tuple[str, threading.Event]:
    """A pseudo-terminal fed by MeterSimulator; returns the device path a reader can open."""
    master, slave = os.openpty()
    tty.setraw(slave)  # no newline translation: the bytes must stay as the meter sends them
    path = os.ttyname(slave)
    stop = threading.Event()

    def feed() -> None:
        simulator = MeterSimulator()
        while not stop.is_set():
            os.write(master, simulator.telegram(dt.datetime.now(dt.timezone.utc)).encode("latin-1"))
            stop.wait(1.0 / rate)

    threading.Thread(target=feed, name="simulated meter", daemon=True).start()
    log.info("no reader.port configured: reading a simulated DSMR 5 meter on %s", path)
    return path, stop


def run_reader(config: Config) -> None:
    """The `dsmr-ts reader` process: runs until SIGINT/SIGTERM."""
    port = config.reader.port
    if port is None:
        port, _ = start_simulated_meter()
    store = Store(config.influxdb, timezone=config.timezone)
    service = ReaderService(config, store, port)
    scheduler = service.scheduler()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    log.info("reader started on %s (%s); %d forward target(s)", port,
             " ".join(f"{k}={v}" for k, v in serial_settings(config).items()), len(service.forwarders))
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if scheduler.running:
            scheduler.shutdown(wait=True)  # a job in progress finishes the telegram it holds
        service.close()
        store.close()
        log.info("reader stopped")
