"""Kill tests: while clients post telegrams (v1) and record every 201, influxd is killed with -9
and restarted, and a gunicorn worker is killed with -9. Afterwards every acknowledged reading is
in InfluxDB exactly once. Loopback only, bounded in count and time."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import threading
from pathlib import Path

import pytest
import requests
from helpers import TEST_KEY, flux, start_api, wait_for

from dsmr_ts.config import load_config
from dsmr_ts.influx.bootstrap import bootstrap
from dsmr_ts.influx.server import ManagedInfluxd, free_port
from dsmr_ts.influx.store import Store
from dsmr_ts.telegram import Reading, build_telegram

METER = "E-KILL"
START = dt.datetime(2025, 2, 3, 4, 0, 0, tzinfo=dt.timezone.utc)
TOTAL = 1500


def telegram(index: int) -> str:
    values = {
        "electricity_delivered_1": 1000 + index / 1000,
        "electricity_delivered_2": 5.0,
        "electricity_returned_1": 0.0,
        "electricity_returned_2": 0.0,
        "electricity_currently_delivered": 0.5,
        "electricity_currently_returned": 0.0,
    }
    return build_telegram(Reading(timestamp=START + dt.timedelta(seconds=index), meter=METER, values=values))


class Load:
    """Clients posting telegrams 0..TOTAL-1, each once; acknowledged = answered 201."""

    def __init__(self, url: str, clients: int = 4):
        self.url = url
        self.numbers = itertools.count()
        self.lock = threading.Lock()
        self.acknowledged: list[int] = []
        self.refused: list[int] = []  # 503 while InfluxDB was down, or a dropped connection
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        session = requests.Session()
        while True:
            with self.lock:
                index = next(self.numbers)
            if index >= TOTAL:
                return
            try:
                response = session.post(
                    self.url + "/api/v1/datalogger/dsmrreading",
                    headers={"X-AUTHKEY": TEST_KEY},
                    data={"telegram": telegram(index)},
                    timeout=30,
                )
                ok = response.status_code == 201
            except requests.RequestException:
                ok = False
                session = requests.Session()
            with self.lock:
                (self.acknowledged if ok else self.refused).append(index)

    @property
    def done(self) -> int:
        return len(self.acknowledged) + len(self.refused)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(120)


@pytest.fixture
def system(influxd_binary, tmp_path):
    port = free_port()
    influxd = ManagedInfluxd(influxd_binary, tmp_path / "influxd", port=port).start()
    config_path = tmp_path / "dsmr-ts.yaml"
    config_path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\ninfluxdb:\n  managed: false\n  url: {influxd.url}\n"
    )
    bootstrap(load_config(config_path))
    config = load_config(config_path)
    api, url = start_api(config, tmp_path / "api.log")
    yield influxd, api, url, config
    api.terminate()
    api.wait(30)
    influxd.stop()


def workers_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_every_acknowledged_reading_survives_kill_9_of_influxd_and_a_worker(system, capsys):
    influxd, api, url, config = system
    load = Load(url)

    wait_for(lambda: load.done >= 300, what="load running")
    influxd.kill()  # kill -9: no flush, no goodbye
    wait_for(lambda: len(load.refused) >= 20, what="requests refused while influxd is down")
    influxd.start()  # same data dir and port: the WAL is replayed

    wait_for(lambda: load.done >= 800, timeout=60, what="load running again")
    victim = workers_of(api.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: victim not in workers_of(api.pid) and len(workers_of(api.pid)) == 2,
        what="gunicorn to replace the killed worker",
    )
    load.join()

    store = Store(config.influxdb)
    rows = flux(
        store,
        "from(bucket: bucket) |> range(start: 2025-02-01T00:00:00Z, stop: 2025-02-05T00:00:00Z)"
        ' |> filter(fn: (r) => r._measurement == "reading" and r.meter == meter'
        ' and r._field == "electricity_delivered_1")',
        {"meter": METER},
    )
    store.close()
    stored = [int((row["_time"] - START).total_seconds()) for row in rows]
    acknowledged = set(load.acknowledged)
    lost = acknowledged - set(stored)
    with capsys.disabled():
        print(
            f"\nkill test: {len(acknowledged)} acknowledged, {len(load.refused)} refused (not acknowledged), "
            f"{len(stored)} stored, {len(lost)} lost"
        )
    assert len(load.acknowledged) + len(load.refused) == TOTAL
    assert len(load.refused) > 0  # the outage really happened under load
    assert lost == set()
    assert len(stored) == len(set(stored))  # exactly once: one point per meter and second


def test_reader_killed_during_a_spool_replay_loses_nothing(influxd_binary, tmp_path):
    from helpers import FakeSer2net
    from test_reader import start_reader, stored

    from dsmr_ts.reader.simulator import MeterSimulator
    from dsmr_ts.spool_dir import has_pending, waiting

    meter, count = "E-REPLAY", 3000  # the replay writes 500 a time: several writes to be killed between
    influxd = ManagedInfluxd(influxd_binary, tmp_path / "influxd", port=free_port()).start()
    ser2net = FakeSer2net()
    config_path = tmp_path / "dsmr-ts.yaml"
    config_path.write_text(
        f"influxdb:\n  managed: false\n  url: {influxd.url}\nreader:\n  port: {ser2net.url}\n  spool_dir: ./spool\n"
    )
    bootstrap(load_config(config_path))
    store = Store(load_config(config_path).influxdb)
    spool = tmp_path / "spool"
    offset_file = spool / "influxdb.offset"
    reader = start_reader(config_path, tmp_path / "reader.log")
    try:
        influxd.stop()
        simulator = MeterSimulator(meter=meter, seed=11)
        start = dt.datetime(2025, 6, 1, 8, tzinfo=dt.timezone.utc)
        for text in simulator.telegrams(start, dt.timedelta(seconds=10), count):
            ser2net.send(text.encode("latin-1"))
        wait_for(lambda: waiting(spool, "influxdb") >= count, what="all telegrams spooled")

        influxd.start()  # the reader starts replaying within seconds

        def replay_under_way() -> bool:
            text = offset_file.read_text() if offset_file.exists() else ""
            return bool(text) and int(text) > 0 and has_pending(spool, "influxdb")

        wait_for(replay_under_way, what="the replay to be under way")
        reader.send_signal(signal.SIGKILL)
        reader.wait(10)
        left = waiting(spool, "influxdb")
        assert 0 < left < count  # killed in the middle of it

        ser2net.drop()
        reader = start_reader(config_path, tmp_path / "reader.log")
        wait_for(lambda: not has_pending(spool, "influxdb"), timeout=120, what="the replay to finish")
        assert stored(store, meter) == count  # all of them, each once (one point per meter and second)
    finally:
        reader.send_signal(signal.SIGTERM)
        reader.wait(30)
        ser2net.close()
        store.close()
        influxd.stop()
