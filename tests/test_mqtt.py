"""MQTT against a real mosquitto (Debian's, started here on a free loopback port, with a password)
and the real processes: gunicorn takes telegrams, `dsmr-ts reader` publishes, a paho subscriber
listens as Home Assistant would."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import requests
from falcon import testing
from helpers import REPO, TEST_KEY, debian_binary, dsmr_ts_command, port_open, start_api, wait_for

from dsmr_ts.app import create_app
from dsmr_ts.config import load_config
from dsmr_ts.influx.bootstrap import bootstrap
from dsmr_ts.influx.server import ManagedInfluxd, free_port
from dsmr_ts.influx.store import Store
from dsmr_ts.mqtt.outbox import Message, Outbox
from dsmr_ts.spool_dir import RAW_SOCKET, outbox_state
from dsmr_ts.telegram import Reading, build_telegram

UTC = dt.timezone.utc
KEY = {"X-AUTHKEY": TEST_KEY}
METER = "E-MQTT"
MQTT_USER, MQTT_PASSWORD = "dsmr", "broker-secret-3f9a1c"
# What Home Assistant's dsmr_reader integration subscribes to (MQTT-NOTES.md), topic -> fields.
HA_TOPICS = {
    "reading": [
        "timestamp",
        "electricity_delivered_1",
        "electricity_returned_1",
        "electricity_delivered_2",
        "electricity_returned_2",
        "electricity_currently_delivered",
        "electricity_currently_returned",
        "phase_currently_delivered_l1",
        "phase_currently_delivered_l2",
        "phase_currently_delivered_l3",
        "phase_currently_returned_l1",
        "phase_currently_returned_l2",
        "phase_currently_returned_l3",
        "extra_device_timestamp",
        "extra_device_delivered",
        "phase_voltage_l1",
        "phase_voltage_l2",
        "phase_voltage_l3",
        "phase_power_current_l1",
        "phase_power_current_l2",
        "phase_power_current_l3",
    ],
    "consumption/gas": ["read_at", "delivered", "currently_delivered"],
    "day-consumption": [
        "electricity1",
        "electricity2",
        "electricity1_returned",
        "electricity2_returned",
        "electricity_merged",
        "electricity_returned_merged",
        "electricity1_cost",
        "electricity2_cost",
        "electricity_cost_merged",
        "gas",
        "gas_cost",
        "total_cost",
        "fixed_cost",
        "energy_supplier_price_electricity_delivered_1",
        "energy_supplier_price_electricity_delivered_2",
        "energy_supplier_price_electricity_returned_1",
        "energy_supplier_price_electricity_returned_2",
        "energy_supplier_price_gas",
    ],
    "meter-stats": [
        "dsmr_version",
        "electricity_tariff",
        "power_failure_count",
        "long_power_failure_count",
        "voltage_sag_count_l1",
        "voltage_sag_count_l2",
        "voltage_sag_count_l3",
        "voltage_swell_count_l1",
        "voltage_swell_count_l2",
        "voltage_swell_count_l3",
        "rejected_telegrams",
    ],
    "current-month": [
        "electricity1",
        "electricity2",
        "electricity1_returned",
        "electricity2_returned",
        "electricity_merged",
        "electricity_returned_merged",
        "electricity1_cost",
        "electricity2_cost",
        "electricity_cost_merged",
        "gas",
        "gas_cost",
        "fixed_cost",
        "total_cost",
    ],
    "consumption/quarter-hour-peak-electricity": ["read_at_start", "read_at_end", "average_delivered"],
}
HA_TOPICS["current-year"] = HA_TOPICS["current-month"]


class Mosquitto:
    """Debian's mosquitto in the foreground on a loopback port, with a password file and
    persistence (a subscriber's session and queued messages survive a restart)."""

    def __init__(self, folder: Path):
        self.binary = debian_binary("mosquitto", "mosquitto")
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        passwords = folder / "passwords"
        passwords.write_text("")
        subprocess.run(
            [
                os.path.join(os.path.dirname(self.binary).replace("sbin", "bin"), "mosquitto_passwd"),
                "-b",
                str(passwords),
                MQTT_USER,
                MQTT_PASSWORD,
            ],
            check=True,
            capture_output=True,
        )
        passwords.chmod(0o600)
        (folder / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
            f"persistence true\npersistence_location {folder}/\nlog_dest stdout\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.folder / "mosquitto.log", "a")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.folder / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(lambda: port_open("127.0.0.1", self.port), timeout=30, what="mosquitto to listen")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # writes its persistence file
            self.proc.wait(timeout=30)
        wait_for(lambda: not port_open("127.0.0.1", self.port), timeout=30, what="mosquitto to stop")


class Subscriber:
    """Listens to everything, as Home Assistant does (a persistent session, QoS 2)."""

    def __init__(self, port: int):
        self.messages: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-subscriber", clean_session=False)
        self.client.username_pw_set(MQTT_USER, MQTT_PASSWORD)
        self.client.on_connect = lambda c, u, f, reason, p: c.subscribe([("dsmr/#", 2), ("homeassistant/#", 2)])
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload.decode("latin-1"), message.retain))

    def on(self, topic: str) -> list[str]:
        with self.lock:
            return [payload for found, payload, _ in self.messages if found == topic]

    def latest(self, topic: str) -> str | None:
        found = self.on(topic)
        return found[-1] if found else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def stack(influxd_binary, tmp_path_factory):
    """A private influxd, mosquitto, gunicorn and `dsmr-ts reader` with MQTT on (every source)."""
    folder = tmp_path_factory.mktemp("mqtt")
    influxd = ManagedInfluxd(influxd_binary, folder / "influxd", port=free_port()).start()
    broker = Mosquitto(folder / "mosquitto")
    broker.start()
    config_path = folder / "dsmr-ts.yaml"
    config_path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\n"
        f"influxdb:\n  managed: false\n  url: {influxd.url}\n"
        f"reader:\n  enabled: false\n  spool_dir: ./spool\n"
        f"mqtt:\n  enabled: true\n  port: {broker.port}\n  username: {MQTT_USER}\n  password: {MQTT_PASSWORD}\n"
        f"  publish: [raw, json, reading, day, period, meter_stats, gas, quarter_hour_peaks, discovery]\n"
        "prices:\n  - {start: 2000-01-01, electricity_delivered_1: 0.25, electricity_delivered_2: 0.30,"
        " electricity_returned_1: 0.10, electricity_returned_2: 0.10, gas: 1.20, fixed_daily_cost: 0.50}\n"
    )
    bootstrap(load_config(config_path))
    config = load_config(config_path)
    subscriber = Subscriber(broker.port)
    api, url = start_api(config, folder / "api.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_")}
    reader_log = folder / "reader.log"
    reader = subprocess.Popen(
        dsmr_ts_command("reader", "--config", str(config_path)),
        cwd=REPO,
        env=env,
        stdout=open(reader_log, "w"),
        stderr=subprocess.STDOUT,
    )
    store = Store(config.influxdb)
    spool_dir = config.resolve_path(config.reader.spool_dir)
    wait_for(
        lambda: "MQTT: connected" in reader_log.read_text() and (spool_dir / RAW_SOCKET).exists(),
        timeout=60,
        what="the reader to connect to the broker and take relayed raw telegrams",
    )
    yield {
        "config": config,
        "broker": broker,
        "subscriber": subscriber,
        "url": url,
        "store": store,
        "reader_log": reader_log,
        "reader": reader,
    }
    reader.terminate()
    reader.wait(timeout=30)
    api.terminate()
    api.wait(timeout=30)
    subscriber.close()
    store.close()
    broker.stop()
    influxd.stop()
    assert MQTT_PASSWORD not in reader_log.read_text()  # secrets stay out of the log


def post_telegram(url: str, reading: Reading, statistics: dict | None = None) -> str:
    counters = {
        "electricity_tariff": 2,
        "power_failure_count": 3,
        "long_power_failure_count": 1,
        **{f"voltage_{kind}_count_l{n}": n for kind in ("sag", "swell") for n in (1, 2, 3)},
    }
    telegram = build_telegram(reading, {**counters, **(statistics or {})})
    response = requests.post(
        url + "/api/v1/datalogger/dsmrreading", data={"telegram": telegram}, headers=KEY, timeout=10
    )
    assert response.status_code == 201, response.text
    return telegram


def api(url: str, path: str, **params) -> dict:
    response = requests.get(url + path, headers=KEY, params={"meter": METER, **params}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def meter_reading(moment: dt.datetime, d1: float, d2: float, gas: tuple[dt.datetime, float]) -> Reading:
    return Reading(
        moment,
        METER,
        {
            "electricity_delivered_1": d1,
            "electricity_delivered_2": d2,
            "electricity_returned_1": 0.5,
            "electricity_returned_2": 0.25,
            "electricity_currently_delivered": 0.432,
            "electricity_currently_returned": 0.0,
            "phase_currently_delivered_l1": 0.432,
            "phase_currently_delivered_l2": 0.0,
            "phase_currently_delivered_l3": 0.0,
            "phase_currently_returned_l1": 0.0,
            "phase_currently_returned_l2": 0.0,
            "phase_currently_returned_l3": 0.0,
            "phase_voltage_l1": 231.5,
            "phase_voltage_l2": 230.0,
            "phase_voltage_l3": 229.9,
            "phase_power_current_l1": 2,
            "phase_power_current_l2": 0,
            "phase_power_current_l3": 0,
            "extra_device_timestamp": gas[0],
            "extra_device_delivered": gas[1],
        },
    )


def test_home_assistant_topics_carry_what_the_api_answers(stack):
    url, subscriber, store, config = stack["url"], stack["subscriber"], stack["store"], stack["config"]

    def expect(topic: str, value: str) -> None:  # a batch arrives message by message: wait for each one
        wait_for(lambda: subscriber.latest(topic) == value, timeout=30, what=f"{topic} = {value!r}")

    now = dt.datetime.now(UTC).replace(microsecond=0)
    midnight = now.astimezone(config.tz).replace(hour=0, minute=0, second=0).astimezone(UTC)
    # Yesterday evening (the day's baseline), two readings in the last completed quarter hour, and now.
    quarter = now.replace(minute=now.minute - now.minute % 15, second=0) - dt.timedelta(minutes=15)
    post_telegram(
        url, meter_reading(midnight - dt.timedelta(hours=2), 100.0, 200.0, (midnight - dt.timedelta(hours=2), 50.0))
    )
    post_telegram(url, meter_reading(quarter + dt.timedelta(minutes=1), 101.0, 201.0, (quarter, 50.5)))
    post_telegram(url, meter_reading(quarter + dt.timedelta(minutes=11), 101.2, 201.1, (quarter, 50.5)))
    store.compute.regenerate(midnight - dt.timedelta(days=1), now.replace(minute=0, second=0))
    store.compute.recompute(quarter.replace(minute=0), quarter.replace(minute=0) + dt.timedelta(hours=1))
    newest = now + dt.timedelta(seconds=5)  # newer than anything above, whatever the time of day
    telegram = post_telegram(url, meter_reading(newest, 101.5, 201.25, (newest.replace(second=0), 50.75)))

    stamp = newest.strftime("%Y-%m-%dT%H:%M:%SZ")

    def published() -> bool:  # dsmr/json comes after a reading's split topics
        latest = subscriber.latest("dsmr/json")
        return latest is not None and json.loads(latest)["timestamp"] == stamp

    wait_for(published, timeout=30, what="the reading on MQTT")
    reading = api(url, "/api/v2/datalogger/dsmrreading", ordering="-timestamp", limit=1)["results"][0]
    for field in HA_TOPICS["reading"]:
        expect(f"dsmr/reading/{field}", str(reading[field]))
    assert json.loads(subscriber.latest("dsmr/json")) == reading
    expect("dsmr/raw", telegram)  # relayed from the API's worker

    today = api(url, "/api/v2/consumption/today")
    wait_for(
        lambda: subscriber.latest("dsmr/day-consumption/electricity1") == today["electricity1"],
        timeout=30,
        what="today's totals on MQTT",
    )
    for field in (
        "electricity1",
        "electricity2",
        "electricity1_returned",
        "electricity2_returned",
        "gas",
        "electricity1_cost",
        "electricity2_cost",
        "gas_cost",
        "total_cost",
    ):
        expect(f"dsmr/day-consumption/{field}", today[field])
    expect(
        "dsmr/day-consumption/electricity_merged",
        "{:.3f}".format(float(today["electricity1"]) + float(today["electricity2"])),
    )
    expect("dsmr/day-consumption/fixed_cost", "0.50")
    expect("dsmr/day-consumption/energy_supplier_price_gas", "1.20000")

    gas = api(url, "/api/v2/consumption/gas", ordering="-read_at", limit=1)["results"][0]
    wait_for(
        lambda: subscriber.latest("dsmr/consumption/gas/read_at") == gas["read_at"],
        timeout=30,
        what="the gas value on MQTT",
    )
    assert (gas["delivered"], gas["currently_delivered"]) == ("50.750", "0.250")
    expect("dsmr/consumption/gas/delivered", gas["delivered"])
    expect("dsmr/consumption/gas/currently_delivered", gas["currently_delivered"])

    statistics = api(url, "/api/v2/datalogger/meter-statistics")
    wait_for(
        lambda: subscriber.latest("dsmr/meter-stats/power_failure_count") == "3",
        timeout=30,
        what="meter statistics on MQTT",
    )
    for field in HA_TOPICS["meter-stats"]:
        expect(f"dsmr/meter-stats/{field}", str(statistics[field]))

    peak = api(url, "/api/v2/consumption/quarter-hour-peak-electricity", ordering="-read_at_start", limit=1)
    wait_for(
        lambda: (
            subscriber.latest("dsmr/consumption/quarter-hour-peak-electricity/average_delivered")
            == peak["results"][0]["average_delivered"]
        ),
        timeout=30,
        what="the quarter-hour peak on MQTT",
    )
    expect("dsmr/consumption/quarter-hour-peak-electricity/read_at_start", peak["results"][0]["read_at_start"])

    # This month and this year: the day statistics before today plus today, as the API has them.
    days = api(
        url, "/api/v2/statistics/day", day__gte=now.astimezone(config.tz).date().replace(day=1).isoformat(), limit=40
    )["results"]
    before_today = [d for d in days if d["day"] != today["day"]]
    expected = sum(float(d["electricity1"]) for d in before_today) + float(today["electricity1"])
    wait_for(
        lambda: subscriber.latest("dsmr/current-month/electricity1") == f"{expected:.3f}",
        timeout=30,
        what="this month's totals on MQTT",
    )
    expected_cost = sum(float(d["total_cost"]) for d in before_today) + float(today["total_cost"])
    expect("dsmr/current-month/total_cost", f"{expected_cost:.2f}")

    for group, fields in HA_TOPICS.items():  # every topic the integration reads has a value
        for field in fields:
            topic = f"dsmr/{group}/{field}"
            wait_for(lambda topic=topic: subscriber.latest(topic) is not None, timeout=30, what=f"a value on {topic}")
    retained = {topic: retain for topic, _, retain in subscriber.messages}
    assert "dsmr/reading/timestamp" in retained  # published retained (the flag is seen by later subscribers)


def test_home_assistant_discovery_makes_energy_sensors(stack):
    subscriber = stack["subscriber"]

    def discovery(sensor: str) -> dict:  # each config is its own message: wait for each one
        topic = f"homeassistant/sensor/dsmr_ts_{METER}/{sensor}/config"
        return json.loads(
            wait_for(lambda: subscriber.latest(topic), timeout=30, what=f"the discovery config of {sensor}")
        )

    config = discovery("electricity_delivered_1")
    assert config["state_topic"] == "dsmr/reading/electricity_delivered_1"
    assert (config["unit_of_measurement"], config["device_class"], config["state_class"]) == (
        "kWh",
        "energy",
        "total_increasing",
    )
    assert config["device"]["identifiers"] == [f"dsmr_ts_{METER}"]
    gas = discovery("gas_delivered")
    assert (gas["unit_of_measurement"], gas["device_class"], gas["state_class"]) == ("m³", "gas", "total_increasing")
    power = discovery("electricity_currently_delivered")
    assert (power["device_class"], power["state_class"]) == ("power", "measurement")


def test_nothing_is_lost_while_the_broker_is_away(stack):
    url, broker, subscriber = stack["url"], stack["broker"], stack["subscriber"]
    spool_dir = stack["config"].resolve_path(stack["config"].reader.spool_dir)
    broker.stop()
    start = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(minutes=1)
    stamps = []
    for i in range(5):  # stored at once (201) although nothing can be published
        moment = start + dt.timedelta(seconds=i)
        post_telegram(url, meter_reading(moment, 102.0 + i / 10, 202.0, (start.replace(second=0), 51.0)))
        stamps.append(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))

    def waiting() -> int:
        state = outbox_state(spool_dir)
        return state.waiting if state else 0

    wait_for(lambda: waiting() >= 5, timeout=30, what="the messages waiting in the outbox")
    broker.start()

    def received() -> list[str]:  # in order; after a reconnect the current value comes once more
        return list(dict.fromkeys(s for s in subscriber.on("dsmr/reading/timestamp") if s in stamps))

    wait_for(
        lambda: received() == stamps, timeout=60, what="every reading published in order after the broker came back"
    )
    wait_for(lambda: waiting() == 0, timeout=30, what="the outbox to empty")


def test_outbox_drops_older_messages_of_a_topic_first(tmp_path, caplog):
    outbox = Outbox(tmp_path, max_messages=100)
    caplog.set_level(logging.WARNING)
    for round_ in range(60):
        outbox.add([Message("dsmr/reading/timestamp", f"t{round_}"), Message("dsmr/reading/power", f"p{round_}")])
    outbox.add([Message("dsmr/raw", "telegram")])
    waiting = [(m.topic, m.payload) for _, m in outbox.after(0, 1000)]
    assert len(waiting) <= 100
    assert waiting[-3:] == [("dsmr/reading/timestamp", "t59"), ("dsmr/reading/power", "p59"), ("dsmr/raw", "telegram")]
    times = [p for t, p in waiting if t == "dsmr/reading/timestamp"]
    assert times == sorted(times, key=lambda p: int(p[1:]))  # what is kept stays in order
    assert caplog.text.count("MQTT outbox full") == 1
    # Handed to the client: never dropped, even when full.
    outbox.handed_out = outbox.after(0, 1)[0][0]
    first = outbox.after(0, 1)[0]
    for round_ in range(200):
        outbox.add([Message("dsmr/reading/timestamp", f"x{round_}")])
    assert outbox.after(0, 1)[0] == first
    outbox.close()


def test_messages_waiting_long_are_a_problem_and_a_metric(config, tmp_path):
    config.reader.spool_dir = str(tmp_path)
    config.mqtt.enabled = True
    outbox = Outbox(tmp_path, max_messages=1000)
    outbox.add([Message("dsmr/reading/timestamp", "2026-01-01T00:00:00Z")] * 3)
    outbox.close()
    with sqlite3.connect(tmp_path / "mqtt-outbox.sqlite3") as db:  # as if added ten minutes ago
        db.execute("UPDATE message SET added = added - 600")
    client = testing.TestClient(create_app(config))
    body = client.simulate_get("/api/v2/application/monitoring", headers=KEY).json
    (problem,) = [p for p in body["details"] if p["source"] == "mqtt"]
    assert problem["description"] == "3 MQTT messages wait for the broker (is it reachable?)"
    assert "dsmr_ts_mqtt_outbox_messages 3" in client.simulate_get("/metrics", headers=KEY).text
