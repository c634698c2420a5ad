"""The serial reader: framing, spool, presets, and the real `dsmr-ts reader` process reading a
ser2net-style socket into a real influxd, through a connection drop, an InfluxDB outage, a
kill -9, and forwarding to another dsmr-ts."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import REPO, TEST_KEY, FakeSer2net, dsmr_ts_command, flux, sample_telegram, wait_for

from dsmr_ts.config import load_config
from dsmr_ts.influx.bootstrap import bootstrap
from dsmr_ts.influx.server import free_port
from dsmr_ts.influx.store import Store
from dsmr_ts.reader.framing import MAX_TELEGRAM_BYTES, TelegramFramer
from dsmr_ts.reader.service import serial_settings
from dsmr_ts.reader.simulator import MeterSimulator
from dsmr_ts.reader.spool import Spool
from dsmr_ts.spool_dir import has_pending, waiting
from dsmr_ts.telegram import parse_telegram

UTC = dt.timezone.utc


def telegrams(count: int, meter: str, start: dt.datetime) -> list[bytes]:
    simulator = MeterSimulator(meter=meter, seed=7)
    return [t.encode("latin-1") for t in simulator.telegrams(start, dt.timedelta(seconds=10), count)]


# --- framing -----------------------------------------------------------------------------------


def test_framing_split_garbage_partial_and_two_in_one_read():
    one, two, three = telegrams(3, "E-FRAME", dt.datetime(2026, 5, 1, 12, tzinfo=UTC))
    framer = TelegramFramer()
    # The reader starts mid-telegram: the tail of an earlier one and noise come first.
    assert framer.feed(b"\x00\xff23.7*kW)\r\n!ABCD\r\nnoise" + one[:100]) == []
    assert framer.feed(one[100:-3]) == []
    assert framer.feed(one[-3:] + two + three[:50]) == [one, two]  # two telegrams in one read
    assert framer.feed(three[50:]) == [three]
    # A telegram cut off by a new one is dropped; the new one is kept.
    assert framer.feed(one[:200] + two) == [two]
    assert framer.dropped_bytes > 0


def test_framing_memory_is_bounded_without_telegrams():
    framer = TelegramFramer()
    for _ in range(100):
        framer.feed(b"x" * 1000)
        framer.feed(b"/" + b"y" * 1000)  # a start without an end
    assert len(framer.buffer) <= MAX_TELEGRAM_BYTES


def test_framing_dsmr22_without_crc():
    data = sample_telegram("dsmr22_nl_1.txt") + b"\r\n"  # the file stops at '!'; a meter sends the line end
    framer = TelegramFramer()
    assert framer.feed(data[:-1]) == []  # '!' alone is not the end yet: its line must finish
    assert framer.feed(data[-1:]) == [data]


# --- spool -------------------------------------------------------------------------------------


def test_spool_keeps_order_survives_reopen_and_crash(tmp_path):
    now = dt.datetime(2026, 5, 1, tzinfo=UTC)
    spool = Spool(tmp_path, "influxdb", 1 << 20)
    for i in range(5):
        assert spool.append(f"telegram {i}", now + dt.timedelta(seconds=i))
    assert stat.S_IMODE(os.stat(spool.path).st_mode) == 0o600
    delivered = []
    spool.drain(lambda r: delivered.append(r.telegram), limit=2)
    assert delivered == ["telegram 0", "telegram 1"]
    # A crash in the middle of an append leaves half a line.
    with open(spool.path, "ab") as fh:
        fh.write(b'{"telegram": "half')
    reopened = Spool(tmp_path, "influxdb", 1 << 20)
    assert len(reopened) == 3

    def fail_on_4(record):
        if record.telegram == "telegram 4":
            raise ConnectionError("down")
        delivered.append(record.telegram)

    with pytest.raises(ConnectionError):
        reopened.drain(fail_on_4)
    assert delivered[-2:] == ["telegram 2", "telegram 3"] and len(reopened) == 1
    reopened.drain(lambda r: delivered.append(r.telegram))
    assert delivered == [f"telegram {i}" for i in range(5)]
    assert not reopened.has_pending() and not reopened.path.exists()  # drained: file started afresh


def test_spool_full_refuses_and_says_so_once(tmp_path, caplog):
    now = dt.datetime(2026, 5, 1, tzinfo=UTC)
    probe = Spool(tmp_path / "probe", "influxdb", 1 << 20)
    probe.append("x" * 50, now)
    spool = Spool(tmp_path, "influxdb", 3 * probe.path.stat().st_size)  # room for exactly three
    caplog.set_level(logging.ERROR)
    results = [spool.append("x" * 50, now) for _ in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert caplog.text.count("is full") == 1


def test_serial_presets_and_override(config):
    config.reader.dsmr_version = "2.2"
    assert serial_settings(config) == {"baudrate": 9600, "bytesize": 7, "parity": "E", "stopbits": 1, "xonxoff": True}
    config.reader.dsmr_version = "5"
    config.reader.serial = {"baudrate": 9600}
    assert serial_settings(config)["baudrate"] == 9600 and serial_settings(config)["bytesize"] == 8


# --- the reader process ------------------------------------------------------------------------


def start_reader(config_path: Path, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_")}
    with open(log_path, "a") as log:
        return subprocess.Popen(
            dsmr_ts_command("--config", str(config_path), "reader"),
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stored(store: Store, meter: str) -> int:
    return store.readings.brute_force_count(meter, None, None)


def test_reader_through_drop_outage_and_kill_9(private_influxd, tmp_path):
    meter = "E-READER"
    ser2net = FakeSer2net()
    config_path = tmp_path / "dsmr-ts.yaml"
    config_path.write_text(
        f"influxdb:\n  managed: false\n  url: {private_influxd.url}\n"
        f"reader:\n  port: {ser2net.url}\n  spool_dir: ./spool\n"
    )
    bootstrap(load_config(config_path))
    config = load_config(config_path)
    store = Store(config.influxdb)
    log_path = tmp_path / "reader.log"
    batch = telegrams(13, meter, dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=3))
    reader = start_reader(config_path, log_path)
    try:
        # 1. Telegrams split across writes, noise in front.
        ser2net.send(b"garbage" + batch[0][:300])
        ser2net.send(batch[0][300:] + batch[1] + batch[2])
        wait_for(lambda: stored(store, meter) == 3, what="3 readings from the reader")

        # 2. The connection drops (ser2net restarted): the reader reconnects on its own.
        ser2net.drop()
        wait_for(lambda: ser2net.connections >= 2, timeout=60, what="the reader to reconnect")
        ser2net.send(batch[3] + batch[4])
        wait_for(lambda: stored(store, meter) == 5, what="readings after the reconnect")
        log_text = log_path.read_text()
        assert log_text.count("meter connection") == 2, log_text  # one line lost, one line back

        # 3. InfluxDB goes away: telegrams go to the spool, in order, on disk.
        private_influxd.stop()
        for telegram in batch[5:9]:
            ser2net.send(telegram)
        # At least these 4; a telegram stored just as influxd went down may be spooled again
        # (its write succeeded, the statistics repair after it did not): duplicates overwrite.
        # Read-only look: the reader is appending to this spool right now.
        wait_for(lambda: waiting(tmp_path / "spool", "influxdb") >= 4, what="4 telegrams in the spool")

        # 4. The reader is killed hard; a new one starts; InfluxDB comes back: nothing is lost.
        reader.send_signal(signal.SIGKILL)
        reader.wait(10)
        ser2net.drop()  # the dead reader's connection
        connections = ser2net.connections
        reader = start_reader(config_path, log_path)
        wait_for(lambda: ser2net.connections > connections, what="the new reader to connect")
        private_influxd.start()
        for telegram in batch[9:]:
            ser2net.send(telegram)
        wait_for(lambda: stored(store, meter) == 13, timeout=60, what="all 13 readings after the outage")
        wait_for(lambda: not has_pending(tmp_path / "spool", "influxdb"), what="the spool to drain")
        expected = [parse_telegram(t).reading.timestamp for t in batch]
        rows = flux(
            store,
            'from(bucket: bucket) |> range(start: 0) |> filter(fn: (r) => r._measurement == "reading"'
            ' and r.meter == meter and r._field == "electricity_delivered_1")',
            {"meter": meter},
        )
        assert sorted(r["_time"] for r in rows) == expected
    finally:
        reader.send_signal(signal.SIGTERM)
        assert reader.wait(30) == 0
        ser2net.close()
        store.close()


def test_forwarding_to_a_remote_and_a_dead_remote_never_blocks(api_server, session_config, private_influxd, tmp_path):
    meter = "E-FORWARD"
    ser2net = FakeSer2net()
    dead = f"http://127.0.0.1:{free_port()}/api/v1/datalogger/dsmrreading"
    config_path = tmp_path / "dsmr-ts.yaml"
    # Stored locally in a private influxd; forwarded to the session's dsmr-ts API (another store,
    # so readings there can only have come by forwarding) and to a port where nothing listens.
    config_path.write_text(
        f"influxdb:\n  managed: false\n  url: {private_influxd.url}\n"
        f"reader:\n  port: {ser2net.url}\n  spool_dir: ./spool\n  forward:\n"
        f"    - {{url: '{dead}', key: 'x'}}\n"
        f"    - {{url: '{api_server}/api/v1/datalogger/dsmrreading', key: '{TEST_KEY}'}}\n"
    )
    bootstrap(load_config(config_path))
    local = Store(load_config(config_path).influxdb)
    remote = Store(session_config.influxdb)
    log_path = tmp_path / "reader.log"
    reader = start_reader(config_path, log_path)
    try:
        for telegram in telegrams(3, meter, dt.datetime(2026, 6, 1, 8, tzinfo=UTC)):
            ser2net.send(telegram)
        wait_for(lambda: stored(local, meter) == 3, what="the readings stored locally")
        wait_for(lambda: stored(remote, meter) == 3, what="the readings forwarded to the other dsmr-ts")
        wait_for(lambda: "forwarding to 127.0.0.1 failed" in log_path.read_text(), what="the dead target logged")

        def spools_waiting() -> int:
            return sum(has_pending(tmp_path / "spool", p.stem) for p in (tmp_path / "spool").glob("forward-*.spool"))

        # The dead target's telegrams wait on disk; the live one's spool drains.
        wait_for(lambda: spools_waiting() == 1, what="only the dead target's spool to hold telegrams")
        log_text = log_path.read_text()
        assert log_text.count("forwarding to 127.0.0.1 failed") == 1  # once per outage, not per try
        assert TEST_KEY not in log_text
    finally:
        reader.send_signal(signal.SIGTERM)
        assert reader.wait(30) == 0
        ser2net.close()
        local.close()
        remote.close()


def test_simulate_posts_valid_telegrams(api_server, session_config):
    before = Store(session_config.influxdb)
    try:
        start = stored(before, "simulated")
        result = subprocess.run(
            dsmr_ts_command(
                "--config",
                str(session_config.path),
                "simulate",
                "--url",
                f"{api_server}/api/v1/datalogger/dsmrreading",
                "--rate",
                "50",
                "--count",
                "20",
            ),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "sent 20 telegrams"
        wait_for(lambda: stored(before, "simulated") >= start + 20, what="20 simulated readings")
    finally:
        before.close()
