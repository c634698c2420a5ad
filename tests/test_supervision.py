"""A service that heals itself: `dsmr-ts run` restarts what dies (the supervisor, with a clock of
its own in unit tests; then the real processes killed with SIGKILL under load), and the API
answers clearly while influxd is down."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from falcon import testing
from helpers import REPO, TEST_KEY, FakeSer2net, debian_binary, dsmr_ts_command, flux, wait_for
from test_deploy import config_key_for_env

from dsmr_ts.app import create_app
from dsmr_ts.config import load_config
from dsmr_ts.influx.bootstrap import bootstrap
from dsmr_ts.influx.server import ManagedInfluxd, free_port
from dsmr_ts.influx.store import Store
from dsmr_ts.supervisor import (
    FAILED_AT_ONCE,
    GIVE_UP_AFTER,
    HEALTHY_AFTER,
    MAX_BACKOFF,
    Child,
    Supervisor,
    SupervisorError,
)
from dsmr_ts.telegram import Reading, build_telegram

UTC = dt.timezone.utc
KEY = {"X-AUTHKEY": TEST_KEY}
V1 = "/api/v1/datalogger/dsmrreading"
V2 = "/api/v2/datalogger/dsmrreading"


# --- the supervisor, on a clock of its own ----------------------------------------------------------


class FakeProcess:
    def __init__(self) -> None:
        self.status: int | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.status = None

    def exit_status(self) -> int | None:
        return self.status

    def stop(self) -> None:
        self.status = -15

    def describe_exit(self) -> str:
        return ""


def supervised(*names: str) -> tuple[Supervisor, dict[str, FakeProcess], list[float]]:
    clock = [0.0]
    processes = {name: FakeProcess() for name in names}
    supervisor = Supervisor(
        [Child(name, process) for name, process in processes.items()], threading.Event(), clock=lambda: clock[0]
    )
    supervisor.start_all()
    return supervisor, processes, clock


def test_a_child_that_dies_is_restarted_with_a_doubling_backoff_while_the_others_run(caplog):
    supervisor, processes, clock = supervised("influxd", "api", "reader")
    caplog.set_level("INFO")
    delays = []
    for _ in range(4):  # dies again and again, each time after a healthy-enough while
        clock[0] += FAILED_AT_ONCE + 1
        processes["api"].status = -9
        supervisor.check()
        died = clock[0]
        while processes["api"].status is not None:  # not restarted yet
            clock[0] += 0.5
            supervisor.check()
        delays.append(clock[0] - died)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert processes["influxd"].starts == processes["reader"].starts == 1  # untouched
    assert caplog.text.count("api killed by SIGKILL; restarting it in") == 4
    assert caplog.text.count("restarting api (after killed by SIGKILL)") == 4
    # A minute of health resets the backoff.
    clock[0] += HEALTHY_AFTER
    supervisor.check()
    processes["api"].status = 1
    supervisor.check()
    died = clock[0]
    while processes["api"].status is not None:
        clock[0] += 0.5
        supervisor.check()
    assert clock[0] - died == 1.0


def test_the_backoff_stops_doubling_at_its_maximum():
    supervisor, processes, clock = supervised("reader")
    for _ in range(8):
        clock[0] += FAILED_AT_ONCE + 1
        processes["reader"].status = 1
        supervisor.check()
        delay = supervisor.children[0].restart_at - clock[0]
        clock[0] += delay
        supervisor.check()
    assert delay == MAX_BACKOFF


def test_a_child_failing_at_once_five_times_stops_everything_with_one_line():
    supervisor, processes, clock = supervised("influxd", "api")
    with pytest.raises(SupervisorError) as stopped:
        for _ in range(GIVE_UP_AFTER):
            processes["api"].status = 3
            supervisor.check()
            clock[0] = supervisor.children[1].restart_at
            supervisor.check()
    assert str(stopped.value) == (
        f"api failed {GIVE_UP_AFTER} times in a row right after starting"
        " (last: exited with status 3); stopping everything"
    )


# --- while influxd is down ----------------------------------------------------------------------------


def test_while_influxd_is_down_writes_are_503_and_health_and_schema_still_answer(influxd_binary, tmp_path):
    server = ManagedInfluxd(influxd_binary, tmp_path / "influxd", port=free_port()).start()
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(f"api:\n  enabled: true\n  key: {TEST_KEY}\ninfluxdb:\n  managed: false\n  url: {server.url}\n")
    bootstrap(load_config(path))
    config = load_config(path)
    store = Store(config.influxdb, timeout_ms=2000)
    client = testing.TestClient(create_app(config, store))
    moment = dt.datetime.now(UTC).replace(microsecond=0)
    telegram = build_telegram(
        Reading(moment, "E-DOWN", {"electricity_delivered_1": 1.0, "electricity_currently_delivered": 0.1})
    )
    form = {
        "headers": {**KEY, "Content-Type": "application/x-www-form-urlencoded"},
        "body": f"telegram={requests.utils.quote(telegram)}",
    }
    try:
        server.stop()
        v1 = client.simulate_post(V1, **form)
        assert (v1.status_code, v1.text) == (
            503,
            "Storage is unavailable: InfluxDB unreachable (ConnectionRefusedError)",
        )
        v2 = client.simulate_post(
            V2,
            headers=KEY,
            json={
                "timestamp": moment.isoformat(),
                "electricity_delivered_1": 1,
                "electricity_returned_1": 0,
                "electricity_delivered_2": 0,
                "electricity_returned_2": 0,
                "electricity_currently_delivered": 0.1,
                "electricity_currently_returned": 0,
            },
        )
        assert (
            v2.status_code == 503
            and v2.json["detail"] == "Storage is unavailable: InfluxDB unreachable (ConnectionRefusedError)"
        )
        assert client.simulate_get("/health").status_code == 503
        assert client.simulate_get("/api/v2/schema").status_code == 200
        server.start()  # back: the same app stores again, nothing restarted
        assert client.simulate_post(V1, **form).status_code == 201
        assert client.simulate_get("/health").status_code == 200
    finally:
        store.close()
        server.stop()


# --- the real thing: dsmr-ts run, each child killed under load ----------------------------------------


class Load:
    """Clients posting unique telegrams until stopped; acknowledged = answered 201."""

    START = dt.datetime(2025, 6, 1, tzinfo=UTC)

    def __init__(self, url: str, clients: int = 3):
        self.url = url
        self.numbers = itertools.count()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.acknowledged: list[int] = []
        self.refused: list[int] = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def telegram(self, index: int) -> str:
        return build_telegram(
            Reading(
                self.START + dt.timedelta(seconds=index),
                "E-SUPERVISED",
                {"electricity_delivered_1": 1000 + index / 1000, "electricity_currently_delivered": 0.5},
            )
        )

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            with self.lock:
                index = next(self.numbers)
            try:
                response = session.post(self.url + V1, headers=KEY, data={"telegram": self.telegram(index)}, timeout=30)
                ok = response.status_code == 201
            except requests.RequestException:
                ok = False
                session = requests.Session()
                time.sleep(0.05)  # a refused connection comes back at once: do not spin
            with self.lock:
                (self.acknowledged if ok else self.refused).append(index)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def children_of(pid: int) -> list[int]:
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += [int(child), *children_of(int(child))]
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_run_heals_itself_after_each_child_is_killed_under_load(tmp_path, influxd_binary, capsys):
    api_port, influx_port = free_port(), free_port()
    meter = FakeSer2net()
    config_path = tmp_path / "dsmr-ts.yaml"
    config_path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\nserver:\n  bind: 127.0.0.1:{api_port}\n"
        f"influxdb:\n  data_dir: ./influx-data\n  url: http://127.0.0.1:{influx_port}\n"
        f"reader:\n  port: {meter.url}\n  spool_dir: ./spool\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_")}
    env["DSMR_TS_INFLUXD"] = str(influxd_binary)
    log_path = tmp_path / "run.log"
    run = subprocess.Popen(
        dsmr_ts_command("run", "--config", str(config_path)),
        cwd=tmp_path,
        env=env,
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{api_port}"

    def serving() -> bool:
        assert run.poll() is None, log_path.read_text()[-3000:]
        try:
            return requests.get(url + V2, headers=KEY, params={"limit": 1}, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    # The meter: a telegram every 0.2 s (its own clock), into whatever reader is connected.
    sent = itertools.count()
    feeding = threading.Event()

    def feed() -> None:
        start = dt.datetime(2025, 7, 1, tzinfo=UTC)
        while not feeding.is_set():
            index = next(sent)
            try:
                meter.send(
                    build_telegram(
                        Reading(
                            start + dt.timedelta(seconds=index),
                            "E-SUPERVISED-METER",
                            {"electricity_delivered_1": float(index), "electricity_currently_delivered": 0.2},
                        )
                    ).encode()
                )
            except OSError:
                pass  # no reader connected right now: like a real meter, it sends anyway
            feeding.wait(0.2)

    load = None
    try:
        wait_for(serving, timeout=180, what="dsmr-ts run to serve")
        config = load_config(config_path)
        threading.Thread(target=feed, daemon=True).start()
        load = Load(url)
        wait_for(lambda: len(load.acknowledged) >= 100, what="the load running")
        store = Store(config.influxdb)

        def meter_readings() -> int:
            return store.readings.brute_force_count("E-SUPERVISED-METER", None, None)

        recovered = {}
        for victim in ("influxd", "api", "reader"):
            children = children_of(run.pid)
            if victim == "influxd":
                pid = yaml.safe_load((tmp_path / "influx-data" / "influxd.pid").read_text())["pid"]
            else:
                word = "gunicorn" if victim == "api" else " reader"
                pid = min(p for p in children if word in cmdline(p))  # the master, not a worker
            acknowledged_before = len(load.acknowledged)
            connections_before = meter.connections
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            # Served again within 15 s: answers, takes telegrams again, and the meter is read again.
            wait_for(
                lambda: serving() and len(load.acknowledged) > acknowledged_before + 20,
                timeout=15,
                what=f"the service to serve again after {victim} was killed",
            )
            if victim == "reader":
                wait_for(lambda: meter.connections > connections_before, timeout=15, what="the reader back")
            recovered[victim] = time.monotonic() - killed
        readings_now = meter_readings()
        wait_for(lambda: meter_readings() > readings_now, timeout=30, what="the meter's telegrams stored again")
        load.finish()

        text = log_path.read_text()
        for victim in ("influxd", "api", "reader"):
            assert text.count(f"{victim} killed by SIGKILL; restarting it in 1 s") == 1, text[-3000:]
            assert text.count(f"restarting {victim} (after killed by SIGKILL)") == 1
        rows = flux(
            store,
            "from(bucket: bucket) |> range(start: 2025-05-31T00:00:00Z, stop: 2025-06-30T00:00:00Z)"
            ' |> filter(fn: (r) => r._measurement == "reading" and r.meter == "E-SUPERVISED"'
            ' and r._field == "electricity_delivered_1")',
            {},
        )
        stored = [int((row["_time"] - Load.START).total_seconds()) for row in rows]
        lost = set(load.acknowledged) - set(stored)
        with capsys.disabled():
            print(
                f"\nsupervised kill test: {len(load.acknowledged)} acknowledged, {len(load.refused)} refused,"
                f" {len(stored)} stored, {len(lost)} lost; serving again after "
                + ", ".join(f"{victim} {seconds:.1f} s" for victim, seconds in recovered.items())
            )
        assert lost == set()
        assert len(stored) == len(set(stored))  # exactly once
        assert run.poll() is None  # it never gave up
        store.close()
    finally:
        feeding.set()
        if load:
            load.finish()
        os.killpg(run.pid, signal.SIGINT)
        run.wait(90)
        meter.close()
    assert "stopping" in log_path.read_text()


# --- systemd units ---------------------------------------------------------------------------------

UNITS = sorted([*(REPO / "deploy" / "systemd").glob("*.service"), *(REPO / "deploy" / "systemd").glob("*.timer")])


def verify(units: list[Path], folder: Path) -> subprocess.CompletedProcess:
    """systemd-analyze verify on copies whose ExecStart points at this checkout's dsmr-ts."""
    binary = debian_binary("systemd", "systemd-analyze")
    installed = Path(sys.executable).parent / "dsmr-ts"
    copies = []
    for unit in units:
        text = (
            unit.read_text()
            .replace("/opt/dsmr-ts/.venv/bin/dsmr-ts", str(installed))
            .replace("/etc/dsmr-ts/environment", str(REPO / "deploy" / "systemd" / "environment"))
        )
        (folder / unit.name).write_text(text)
        copies.append(str(folder / unit.name))
    return subprocess.run([binary, "verify", *copies], capture_output=True, text=True, timeout=120)


def test_the_systemd_units_verify(tmp_path):
    assert {unit.name for unit in UNITS} == {
        "dsmr-ts.service",
        "dsmr-ts-influxd.service",
        "dsmr-ts-setup.service",
        "dsmr-ts-api.service",
        "dsmr-ts-reader.service",
        "dsmr-ts-backup.service",
        "dsmr-ts-backup.timer",
    }
    result = verify(UNITS, tmp_path)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    for unit in (unit for unit in UNITS if unit.suffix == ".service"):
        text = unit.read_text()
        assert "User=dsmr-ts" in text and "ProtectSystem=strict" in text and "NoNewPrivileges=yes" in text
        if "oneshot" not in text:
            assert "Restart=on-failure" in text
    for name in ("api", "reader"):
        text = (REPO / "deploy" / "systemd" / f"dsmr-ts-{name}.service").read_text()
        assert (
            "Requires=dsmr-ts-setup.service" in text and "After=dsmr-ts-setup.service dsmr-ts-influxd.service" in text
        )
    environment = dict(
        line.split("=", 1)
        for line in (REPO / "deploy" / "systemd" / "environment").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in environment:  # every override names a real config key (or the influxd binary)
        assert name == "DSMR_TS_INFLUXD" or (name.startswith("DSMR_TS_") and config_key_for_env(name)), name


def test_systemd_verify_would_catch_a_broken_unit(tmp_path):
    broken = tmp_path / "source" / "dsmr-ts-broken.service"
    broken.parent.mkdir()
    broken.write_text(
        (REPO / "deploy" / "systemd" / "dsmr-ts-api.service")
        .read_text()
        .replace("Restart=on-failure", "Restart=sometimes")
    )
    (tmp_path / "out").mkdir()
    result = verify([broken], tmp_path / "out")
    assert "Failed to parse service restart specifier" in result.stdout + result.stderr  # what the main test forbids
