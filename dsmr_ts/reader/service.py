"""`dsmr-ts reader`: one process, an APScheduler scheduler, and these jobs:

- read meter (every second, reading for 0.8 s of it): read what the meter sent, cut it into telegrams, store each one
  through the same Ingest as the API; InfluxDB unreachable -> the disk spool;
- flush spool (every 5 s): deliver spooled telegrams in order once InfluxDB answers, 500 per write;
- forward to <url> (every 2 s, one per target): POST spooled telegrams to remote
  DSMR-reader-compatible APIs (v1, with the key header), each from its own spool, so a slow or
  dead remote never delays local storage;
- telegram counters (every 60 s): one log line with what happened in the last minute;
- keep statistics (every 15 s, housekeeping): recompute the hours late readings touched, from
  every path (API, spool, imports), and move the count index's watermark behind the hour task.
  It runs with reader.enabled false too;
- publish to MQTT (every second, with mqtt.enabled): DSMR-reader's topics from what is new in
  InfluxDB, through an on-disk outbox and a sender thread (dsmr_ts/mqtt/publisher.py).

Nothing is lost while the process runs, and a telegram is on disk (InfluxDB's WAL or the spool,
both fsync'd) before the next one is read, so a crash loses at most the telegram being read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import logging
import os
import signal
import sys
import threading
import time
import tty
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import serial
from apscheduler.schedulers.blocking import BlockingScheduler

from dsmr_ts.backoff import Backoff
from dsmr_ts.config import Config, ForwardTarget
from dsmr_ts.influx.store import Store, StoreUnavailable
from dsmr_ts.ingest import Ingest
from dsmr_ts.mqtt.publisher import MqttPublisher
from dsmr_ts.reader import dlms
from dsmr_ts.reader.dlms import EncryptedFramer
from dsmr_ts.reader.framing import TelegramFramer
from dsmr_ts.reader.simulator import MeterSimulator
from dsmr_ts.reader.spool import Spool, SpooledTelegram
from dsmr_ts.spool_dir import StoreFullMarker
from dsmr_ts.telegram import ParseError

log = logging.getLogger("dsmr_ts.reader")

# Serial settings per DSMR version (the README's meter table); reader.serial overrides any of them.
SERIAL_PRESETS: dict[str, dict[str, Any]] = {
    "2.2": {"baudrate": 9600, "bytesize": 7, "parity": "E", "stopbits": 1, "xonxoff": True},
    "3": {"baudrate": 9600, "bytesize": 7, "parity": "E", "stopbits": 1, "xonxoff": True},
    **{
        version: {"baudrate": 115200, "bytesize": 8, "parity": "N", "stopbits": 1, "xonxoff": True}
        for version in ("4", "5", "fluvius", "iskra_ie", "eon_hu", "sweden")
    },
    # Smarty frames may be binary (encrypted): no XON/XOFF, whose bytes would be taken out of them.
    "smarty": {"baudrate": 115200, "bytesize": 8, "parity": "N", "stopbits": 1, "xonxoff": False},
    # EasyMeter Q3D's optical info interface (D0).
    "q3d": {"baudrate": 9600, "bytesize": 7, "parity": "E", "stopbits": 1, "xonxoff": False},
}
READ_TIMEOUT = 0.2  # seconds a read waits for bytes
REPAIR_EVERY = 15  # seconds between runs of the statistics repair


def serial_settings(config: Config) -> dict[str, Any]:
    return {**SERIAL_PRESETS[config.reader.dsmr_version], **config.reader.serial}


class MeterConnection:
    """The meter over a device path or any pyserial URL (socket:// for ser2net, rfc2217://)."""

    def __init__(self, port: str, settings: dict[str, Any]):
        self.port = port
        self.settings = settings
        self.serial: serial.SerialBase | None = None
        self.backoff = Backoff(f"meter connection {port}", log)

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


class ForwardError(Exception):
    """A forward target did not take a telegram (it will be sent again)."""


# application/x-www-form-urlencoded for a latin-1 telegram in one str.translate (urlencode's
# per-byte loop costs more than the rest of a forward).
_FORM_SAFE = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_TABLE = {byte: chr(byte) if byte in _FORM_SAFE else f"%{byte:02X}" for byte in range(256)}


def telegram_form(telegram: str) -> bytes:
    """The v1 API's request body for one telegram: `telegram=<urlencoded>`."""
    return ("telegram=" + telegram.translate(_FORM_TABLE)).encode("ascii")


class Forwarder:
    """POSTs telegrams to one remote API (v1) from its own spool, with retry: batches in order,
    the telegrams of a batch over a few keep-alive connections at once (the remote stores each by
    its own timestamp, so the order inside a batch does not matter; a failed batch is sent again)."""

    CONNECTIONS = 16
    BATCH = 512

    def __init__(self, target: ForwardTarget, spool: Spool, timeout: float = 10.0):
        self.target = target
        self.spool = spool
        self.timeout = timeout
        url = urllib.parse.urlsplit(target.url)
        # Named by host only: a URL may hold credentials, and the key is never logged.
        self.host = url.hostname or "?"
        self._https = url.scheme == "https"
        self._port = url.port or (443 if self._https else 80)
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.backoff = Backoff(f"forwarding to {self.host}", log)
        self.pool = ThreadPoolExecutor(self.CONNECTIONS, thread_name_prefix=f"forward {self.host}")
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = self._local.connection = cls(self.host, self._port, timeout=self.timeout)
        return connection

    def post(self, telegram: str) -> str | None:
        """One telegram; returns the remote's reason when it rejects it (400: sending it again
        would not change that), raises ForwardError when it should be sent again."""
        body = telegram_form(telegram)
        headers = {"X-AUTHKEY": self.target.key, "Content-Type": "application/x-www-form-urlencoded"}
        connection = self._connection()
        try:
            connection.request("POST", self._path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read(4096)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            self._local.connection = None
            raise ForwardError(str(exc) or exc.__class__.__name__) from None
        if 200 <= response.status < 300:
            return None
        if response.status == 400:
            return answer[:200].decode("latin-1", "replace")
        raise ForwardError(f"HTTP {response.status}")

    def post_batch(self, batch: list[SpooledTelegram]) -> None:
        rejected = [reason for reason in self.pool.map(lambda record: self.post(record.telegram), batch) if reason]
        if rejected:
            log.warning("forwarding: %s rejected %d telegram(s), e.g.: %s", self.host, len(rejected), rejected[0])

    def run(self) -> None:
        if not self.backoff.ready() or not self.spool.has_pending():
            return
        try:
            self.spool.drain_batches(self.post_batch, batch_size=self.BATCH)
            self.backoff.succeeded()
        except ForwardError as exc:
            self.backoff.failed(str(exc))

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class ReaderService:
    """The meter (when reader.enabled), its spool and forwarders, and the housekeeping jobs."""

    def __init__(self, config: Config, store: Store, port: str | None):
        self.config = config
        self.store = store
        self.publisher = MqttPublisher(config, store) if config.mqtt.enabled else None
        raw = self.publisher.raw if self.publisher and "raw" in config.mqtt.publish else None
        spool_dir = config.resolve_path(config.reader.spool_dir)
        self.ingest = Ingest(store, on_telegram=raw, store_full=StoreFullMarker(spool_dir))
        self.spool = Spool(spool_dir, "influxdb", config.reader.spool_max_bytes)
        self.forwarders = [
            Forwarder(
                target,
                Spool(
                    spool_dir,
                    "forward-" + hashlib.sha256(target.url.encode()).hexdigest()[:12],
                    config.reader.spool_max_bytes,
                ),
            )
            for target in (config.reader.forward if port else [])
        ]
        self.connection = MeterConnection(port, serial_settings(config)) if port else None
        keys = config.reader
        # Encrypted meters (Smarty) send binary frames: cut and decrypted before anything else.
        self.keys = (
            (
                bytes.fromhex(keys.decryption_key),
                bytes.fromhex(keys.authentication_key) if keys.authentication_key else None,
            )
            if keys.decryption_key
            else None
        )
        self.framer = EncryptedFramer() if self.keys else TelegramFramer()
        self.undecryptable = 0  # frames in a row that could not be decrypted
        self.store_backoff = Backoff("storing in InfluxDB", log)
        self.statistics_backoff = Backoff("keeping the statistics", log)
        self.counters: Counter[str] = Counter()

    # --- jobs ----------------------------------------------------------------------------------

    def read_meter(self) -> None:
        # Reads for most of its 1 s interval, so the meter is read almost continuously while
        # runs never overlap.
        connection = self.connection
        assert connection is not None  # the job is scheduled only with a meter to read
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            data = connection.read()
            for frame in self.framer.feed(data):
                telegram = self.plaintext(frame)
                if telegram is not None:
                    self.handle(telegram, dt.datetime.now(dt.timezone.utc))

    def plaintext(self, frame: bytes) -> str | None:
        """The telegram in a frame (decrypted when the meter encrypts); None: rejected, counted,
        and logged once until frames decrypt again."""
        if self.keys is None:
            return frame.decode("latin-1")
        try:
            text = dlms.decrypt(frame, *self.keys).decode("latin-1")
        except dlms.DecryptionError as exc:
            self.counters["rejected (not decrypted)"] += 1
            self.undecryptable += 1
            if self.undecryptable == 1:
                log.warning("cannot decrypt a telegram from the meter: %s", exc)
            try:
                self.store.writer.count_rejected()
            except StoreUnavailable:
                pass
            return None
        if self.undecryptable:
            log.info("telegrams decrypt again (after %d that did not)", self.undecryptable)
            self.undecryptable = 0
        return text

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
        """Spooled telegrams into InfluxDB, a batch per write (a long outage replays fast)."""
        if not self.spool.has_pending() or not self.store_backoff.ready():
            return

        def deliver(batch: list[SpooledTelegram]) -> None:
            stored, rejected = self.ingest.telegrams([(record.telegram, record.received) for record in batch])
            self.counters["stored from spool"] += stored
            self.counters["rejected"] += rejected

        try:
            self.spool.drain_batches(deliver)
            self.store_backoff.succeeded()
        except StoreUnavailable as exc:
            self.store_backoff.failed(str(exc))

    def keep_statistics(self) -> None:
        """Housekeeping (see influx/housekeeping.py): recompute the hours that late readings touched,
        and move the count index's watermark behind the hour task."""
        if not self.statistics_backoff.ready():
            return
        try:
            self.store.housekeeping.repair()
            self.store.housekeeping.follow_hour_task()
            self.statistics_backoff.succeeded()
        except StoreUnavailable as exc:
            self.statistics_backoff.failed(str(exc))

    def log_counters(self) -> None:
        counts, self.counters = self.counters, Counter()
        waiting = len(self.spool)
        if counts or waiting:
            summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "nothing read"
            log.info("telegrams in the last minute: %s; %d waiting in the spool", summary, waiting)

    # --- scheduling ----------------------------------------------------------------------------

    def scheduler(self) -> BlockingScheduler:
        scheduler = BlockingScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
        if self.connection:
            scheduler.add_job(self.read_meter, "interval", seconds=1, id="read meter")
            scheduler.add_job(self.log_counters, "interval", seconds=60, id="telegram counters")
        scheduler.add_job(self.flush_spool, "interval", seconds=5, id="flush spool")
        for index, forwarder in enumerate(self.forwarders):
            scheduler.add_job(forwarder.run, "interval", seconds=2, id=f"forward to {forwarder.host} ({index})")
        scheduler.add_job(
            self.keep_statistics,
            "interval",
            seconds=REPAIR_EVERY,
            id="keep statistics",
            next_run_time=dt.datetime.now(dt.timezone.utc),
        )
        if self.publisher:
            scheduler.add_job(
                self.publisher.produce,
                "interval",
                seconds=1,
                id="publish to MQTT",
                next_run_time=dt.datetime.now(dt.timezone.utc),
            )
        return scheduler

    def start(self) -> None:
        """What runs beside the scheduler's jobs: the MQTT sender."""
        if self.publisher:
            self.publisher.start()

    def close(self) -> None:
        if self.publisher:
            self.publisher.stop()
        if self.connection:
            self.connection.close()
        for forwarder in self.forwarders:
            forwarder.close()


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
    """The `dsmr-ts reader` process: runs until SIGINT/SIGTERM. With reader.enabled false it reads
    no meter and runs the housekeeping jobs only."""
    port = config.reader.port
    if config.reader.enabled and port is None:
        port, _ = start_simulated_meter()
    store = Store.for_config(config)
    service = ReaderService(config, store, port if config.reader.enabled else None)
    scheduler = service.scheduler()
    service.start()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    if service.connection:
        log.info(
            "reader started on %s (%s); %d forward target(s)",
            port,
            " ".join(f"{k}={v}" for k, v in serial_settings(config).items()),
            len(service.forwarders),
        )
    else:
        log.info("housekeeping started (reader.enabled is false: no meter to read)")
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
