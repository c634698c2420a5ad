"""The MQTT publisher of `dsmr-ts reader`: follows the store and publishes DSMR-reader's topics.

Two halves, joined by the on-disk outbox (outbox.py):
- produce (a scheduler job, every second): reads what is new in InfluxDB since its cursors (the
  readings of the default meter from every path, serial reader, v1 and v2 alike; new gas values;
  completed quarter hours) and what changed (today's totals, meter statistics; the month and
  year every 10 s), turns it into messages (messages.py), drops those identical to the last one
  on their topic, and adds them to the outbox with the moved cursors in one transaction;
- send (a thread): hands waiting messages to the paho client while the broker is connected and
  deletes them from the outbox once the broker has them (QoS 1/2: acknowledged). paho resends
  what was in flight when a connection drops.
The ingest path never waits for either: a 201 means stored in InfluxDB; MQTT follows within a
second. Only `raw` telegrams come from the ingest path itself (raw_relay.py).

Readings with a time older than the newest one published are not published: every topic is
retained, and history would set Home Assistant's sensors back in time. When more than
READINGS_PER_TICK readings arrive in a second (a datalogger catching up, a load test), the newest
ones are published. After a (re)connect every current value is published once more, so a broker that
lost its retained messages gets them back.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho

from dsmr_ts import costs
from dsmr_ts.backoff import Backoff
from dsmr_ts.config import Config
from dsmr_ts.formats import gas_used
from dsmr_ts.influx.store import Store, StoreUnavailable
from dsmr_ts.mqtt import messages
from dsmr_ts.mqtt.outbox import Message, Outbox
from dsmr_ts.spool_dir import RAW_SOCKET
from dsmr_ts.telegram import DEFAULT_METER

log = logging.getLogger("dsmr_ts.mqtt")

READINGS_PER_TICK = 10  # a meter sends one a second at most; more is a datalogger catching up
PERIOD_EVERY = 10.0  # seconds between month/year totals (and today's, without new readings)
SLOW_EVERY = 10.0  # seconds between looks at meter statistics and quarter hours
IN_FLIGHT = 100  # messages handed to the client and not yet acknowledged (it sends 20 at a time)
QUARTER = dt.timedelta(minutes=15)


class MqttPublisher:
    def __init__(self, config: Config, store: Store, clock: Callable[[], dt.datetime] | None = None):
        self.config = config
        self.settings = config.mqtt
        self.store = store
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.sources = set(self.settings.publish)
        self.prefix = self.settings.prefix
        self.tz = config.tz
        self.output_tz = config.tz if self.settings.local_datetimes else None
        self.spool_dir = config.resolve_path(config.reader.spool_dir)
        self.outbox = Outbox(self.spool_dir, self.settings.outbox_max_messages)
        self.cursors = self.outbox.state()
        self.backoff = Backoff("publishing to MQTT (reading InfluxDB)", log)
        self._last: dict[str, str] = {}  # topic -> the last payload produced on it
        self._discovered: str | None = None  # the meter whose discovery configs were published
        self._republish = threading.Event()
        self._due: dict[str, float] = {}
        self._skipped = 0
        self._skipped_logged = 0.0
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._client = self._make_client()
        self._threads: list[threading.Thread] = []
        self._raw_socket: socket.socket | None = None

    # --- produce --------------------------------------------------------------------------------

    def produce(self) -> None:
        """The scheduler job: what is new or changed becomes messages in the outbox."""
        if not self.backoff.ready():
            return
        try:
            self._produce()
            self.backoff.succeeded()
        except StoreUnavailable as exc:
            self.backoff.failed(str(exc))

    def _produce(self) -> None:
        if self._republish.is_set():
            self._republish.clear()
            self._last.clear()
            self._due.clear()
            self._discovered = None
        meter = self.store.meters.default()
        if meter == DEFAULT_METER:
            return  # no readings yet
        now = self.clock()
        out: list[Message] = []
        moved: dict[str, str] = {}
        new_readings = False
        if self.sources & {"reading", "json", "day"}:
            new_readings = self._readings(meter, out, moved)
        if "day" in self.sources and (new_readings or self._due_now("day", PERIOD_EVERY)):
            day = self.store.totals.today(meter, now, self.tz, self.config.prices)
            if day:
                out += messages.day_consumption(self.prefix, day)
        if "period" in self.sources and self._due_now("period", PERIOD_EVERY):
            out += self._period(meter, now)
        if "gas" in self.sources:
            self._gas(meter, out, moved)
        if "prices" in self.sources and self._due_now("prices", PERIOD_EVERY):
            out += self._prices(now)
        if "meter_stats" in self.sources and self._due_now("meter_stats", SLOW_EVERY):
            out += messages.meter_statistics(
                self.prefix, self.store.meters.statistics(meter), self.store.meters.rejected_count(), self.store.schema
            )
        if "quarter_hour_peaks" in self.sources and self._due_now("quarters", SLOW_EVERY):
            self._quarters(meter, out, moved)
        if "discovery" in self.sources and self._discovered != meter:
            out += messages.discovery(
                self.settings.discovery_prefix, self.prefix, meter, self.sources, self.store.schema
            )
        changed = self._changed(out)
        self.outbox.add(changed, moved)
        self.cursors.update(moved)
        for message in changed:
            self._last[message.topic] = message.payload
        if "discovery" in self.sources:
            self._discovered = meter
        if changed:
            self._wake.set()

    def _due_now(self, what: str, every: float) -> bool:
        now = time.monotonic()
        if now < self._due.get(what, 0.0):
            return False
        self._due[what] = now + every
        return True

    def _changed(self, out: list[Message]) -> list[Message]:
        """Messages whose payload differs from the last one on their topic."""
        last = dict(self._last)
        changed = []
        for message in out:
            if last.get(message.topic) != message.payload:
                changed.append(message)
                last[message.topic] = message.payload
        return changed

    def _cursor(self, key: str) -> dt.datetime | None:
        value = self.cursors.get(key)
        return dt.datetime.fromisoformat(value) if value else None

    def _readings(self, meter: str, out: list[Message], moved: dict[str, str]) -> bool:
        key = f"reading:{meter}"
        cursor = self._cursor(key)
        rows = self.store.readings.newest_after(meter, cursor, READINGS_PER_TICK if cursor else 1)
        if len(rows) == READINGS_PER_TICK:
            self._skipped += 1
            if time.monotonic() - self._skipped_logged > 60:
                self._skipped_logged = time.monotonic()
                log.info(
                    "MQTT: more than %d readings a second arrive; the newest are published (%d time(s))",
                    READINGS_PER_TICK,
                    self._skipped,
                )
        split, as_json = "reading" in self.sources, "json" in self.sources
        for row in rows:
            out += messages.reading(self.prefix, row, self.output_tz, split, as_json, self.store.schema)
        if rows:
            moved[key] = rows[-1]["_time"].isoformat()
        return bool(rows)

    def _period(self, meter: str, now: dt.datetime) -> list[Message]:
        live = self.store.totals.today(meter, now, self.tz, self.config.prices)
        local = now.astimezone(self.tz).date()
        month = self.store.totals.period(meter, local.replace(day=1), live, self.tz, self.config.prices)
        year = self.store.totals.period(meter, local.replace(month=1, day=1), live, self.tz, self.config.prices)
        priced = costs.price_for(local, self.config.prices) is not None
        return messages.period_totals(self.prefix, month, year, priced)

    def _prices(self, now: dt.datetime) -> list[Message]:
        """Under a dynamic contract: the price now and next (nothing without one, or without a price now)."""
        period = costs.price_for(now.astimezone(self.tz).date(), self.config.prices)
        if period is None or period.dynamic is None:
            return []
        current = self.store.prices.at(period.dynamic.area, now)
        if current is None:
            return []
        following = self.store.prices.at(period.dynamic.area, current.stop)
        return messages.prices(self.prefix, current, following, period.dynamic)

    def _gas(self, meter: str, out: list[Message], moved: dict[str, str]) -> None:
        key, value_key = f"gas:{meter}", f"gas value:{meter}"
        cursor = self._cursor(key)
        rows = self.store.gas.newest_after(meter, cursor, 10 if cursor else 1)
        if not rows:
            return
        previous = (
            float(self.cursors[value_key])
            if value_key in self.cursors
            else self.store.gas.before(meter, rows[0]["_time"])
        )
        for row in rows:
            used = gas_used(row["delivered"], previous)
            out += messages.gas(self.prefix, row["_time"], row["delivered"], used, self.output_tz)
            previous = row["delivered"]
        moved[key], moved[value_key] = rows[-1]["_time"].isoformat(), repr(previous)

    def _quarters(self, meter: str, out: list[Message], moved: dict[str, str]) -> None:
        key = f"quarter:{meter}"
        cursor = self._cursor(key)
        _, rows = self.store.statistics.quarters(
            meter,
            (cursor + QUARTER) if cursor else None,
            None,
            0,
            4 if cursor else 1,
            by_average=False,
            descending=True,
        )
        for row in reversed(rows):
            out += messages.quarter_hour_peak(self.prefix, row, self.output_tz)
        if rows:
            moved[key] = rows[0]["_time"].isoformat()

    def raw(self, telegram: str) -> None:
        """A raw telegram (`raw` source), from this process or relayed by an API worker."""
        self.outbox.add([messages.raw(self.prefix, telegram)])
        self._wake.set()

    # --- send ------------------------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        settings = self.settings
        client_id = settings.client_id or f"dsmr-ts-{socket.gethostname()}"
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if settings.tls != "off":
            ca_file = str(self.config.resolve_path(settings.ca_file)) if settings.ca_file else None
            if settings.tls == "verify":
                client.tls_set(ca_certs=ca_file)
            else:
                client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_NONE)
                client.tls_insecure_set(True)
        client.reconnect_delay_set(1, 30)
        # paho keeps its default window of 20 unacknowledged messages (the rest of what is handed to
        # it waits in its queue): mosquitto drops QoS 2 messages beyond its own max_inflight_messages
        # (20) of a client, although it acknowledges them.
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = lambda *args: self._wake.set()
        return client

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        where = f"{self.settings.host}:{self.settings.port}"
        if reason.is_failure:
            log.warning("MQTT: the broker at %s refused the connection: %s", where, reason)
            return
        log.info("MQTT: connected to %s", where)
        self._connected.set()
        self._republish.set()  # its retained messages may be gone: every current value once more
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            log.warning(
                "MQTT: connection to %s:%s lost (%s); messages wait in the outbox",
                self.settings.host,
                self.settings.port,
                reason,
            )
        self._connected.clear()

    def _send(self) -> None:
        in_flight: collections.deque[tuple[int, paho.MQTTMessageInfo]] = collections.deque()
        handed = 0
        while not self._stop.is_set():
            acknowledged = None
            while in_flight and in_flight[0][1].is_published():
                acknowledged = in_flight.popleft()[0]
            if acknowledged is not None:
                self.outbox.delivered(acknowledged)
            waiting = []
            if self._connected.is_set() and len(in_flight) < IN_FLIGHT:
                waiting = self.outbox.after(handed, IN_FLIGHT - len(in_flight))
            for seq, message in waiting:
                info = self._client.publish(message.topic, message.payload, qos=self.settings.qos, retain=True)
                if info.rc == paho.MQTT_ERR_NO_CONN:
                    break  # not handed over: it stays in the outbox for the next connection
                in_flight.append((seq, info))
                handed = self.outbox.handed_out = seq
            if not waiting:
                self._wake.wait(0.5)
                self._wake.clear()

    def start(self) -> None:
        """Connect (in the background, retrying), start sending, and listen for relayed raw telegrams."""
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=60)
        self._client.loop_start()
        self._threads.append(threading.Thread(target=self._send, name="mqtt send", daemon=True))
        if "raw" in self.sources:
            self._raw_socket = _bind_datagram(self.spool_dir / RAW_SOCKET)
            self._threads.append(threading.Thread(target=self._relay, name="mqtt raw relay", daemon=True))
        for thread in self._threads:
            thread.start()
        log.info(
            "MQTT: publishing %s to %s:%s (topics %s/...)",
            ", ".join(sorted(self.sources)),
            self.settings.host,
            self.settings.port,
            self.prefix,
        )

    def _relay(self) -> None:
        """Relayed raw telegrams, added to the outbox a batch at a time (one transaction each)."""
        assert self._raw_socket is not None
        while not self._stop.is_set():
            try:
                batch = [self._raw_socket.recv(1 << 17)]
            except TimeoutError:
                continue
            except OSError:
                return
            self._raw_socket.setblocking(False)  # then whatever else is there already
            while len(batch) < 500:
                try:
                    batch.append(self._raw_socket.recv(1 << 17))
                except (BlockingIOError, InterruptedError):
                    break
            self._raw_socket.settimeout(0.5)
            self.outbox.add([messages.raw(self.prefix, data.decode("latin-1")) for data in batch])
            self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending (what waits stays in the outbox for the next start) and disconnect."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        if self._raw_socket:
            self._raw_socket.close()
            (self.spool_dir / RAW_SOCKET).unlink(missing_ok=True)
        self._client.disconnect()
        self._client.loop_stop()
        self.outbox.close()


def _bind_datagram(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    path.chmod(0o600)
    sock.settimeout(0.5)
    return sock
