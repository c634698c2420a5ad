"""Small helpers shared by the tests (import as `from helpers import ...`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
import requests

from dsmr_ts.influx.server import free_port

REPO = Path(__file__).resolve().parent.parent
# Real meter telegrams (latin-1, valid CRCs) and their expected values (telegrams/EXPECTED.md).
TELEGRAMS = Path(__file__).resolve().parent / "telegrams"
# Every sample the tests use, named here so that a missing file fails a test instead of
# silently parametrizing over nothing.
SAMPLE_TELEGRAMS = (
    "dsmr22_nl_1.txt",
    "dsmr40_nl_1.txt",
    "dsmr42_nl_1.txt",
    "dsmr42_nl_2.txt",
    "dsmr42_nl_3.txt",
    "dsmr50_nl_1.txt",
    "dsmr50_nl_2.txt",
    "dsmr50_nl_3.txt",
    "fluvius_be_1.txt",
    "fluvius_be_2.txt",
    "fluvius_be_3.txt",
    "fluvius_be_4.txt",
    "fluvius_be_5.txt",
    "kamstrup_se_1.txt",
    "smarty_lu_1.txt",
)


def sample_telegram(name: str) -> bytes:
    """The bytes of a sample telegram in tests/telegrams/ (a missing one fails the test)."""
    path = TELEGRAMS / name
    assert path.is_file(), f"test fixture {path} is missing"
    return path.read_bytes()


TEST_KEY = "TESTKEY0123456789TESTKEY0123456789TESTKEY0123456789TESTKEY012345"


def stored_reading(store, meter: str, moment) -> dict:
    """The reading stored at meter+moment as dsmr-ts reads it back (the fields its `present` mask
    names; datetimes as datetimes), without `_time`; {} when there is none."""
    from dsmr_ts.influx.client import ns, quote

    (series,) = store.client.influxql([f"SELECT * FROM reading WHERE meter = {quote(meter)} AND time = {ns(moment)}"])
    rows = [store.readings.reading_row(row) for found in series for row in found.rows()]
    if not rows:
        return {}
    rows[0].pop("_time")
    return rows[0]


def flux(store, query: str, params: dict | None = None) -> list[dict]:
    """Rows of a Flux query against the store (`bucket` and `stats` are set)."""
    return store.client.flux(query, params or {})


def write_lines(store, lines: list[str], bucket: str | None = None) -> None:
    """Raw line protocol straight into InfluxDB (for data shapes the ingest path never writes)."""
    store.client.write("\n".join(lines), bucket)


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Poll until condition() is truthy; fail the test naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def dsmr_ts_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dsmr_ts.cli", *args]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start_api(config, log_path: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """`dsmr-ts serve` (gunicorn) on a free port with extra DSMR_TS_* overrides."""
    port = free_port()
    environment = env_without_overrides()
    environment.update(DSMR_TS_CONFIG=str(config.path), DSMR_TS_SERVER_BIND=f"127.0.0.1:{port}", **env)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            dsmr_ts_command("serve"), cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, log_path, timeout=60, what="gunicorn to answer")
    return proc, url


def wait_healthy(proc: subprocess.Popen, url: str, log_path: Path, timeout: float, what: str) -> None:
    """Until url/health answers 200; the process ending first fails the test with its log."""

    def healthy() -> bool:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(healthy, timeout=timeout, what=what)


class FakeSer2net:
    """What ser2net does for a P1 cable: a TCP port that streams the meter's bytes.
    The test decides what the 'meter' sends and can drop the connection."""

    def __init__(self) -> None:
        import threading

        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.port = self.server.getsockname()[1]
        self.client: socket.socket | None = None
        self.connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with self._lock:
                self.client = client
                self.connections += 1

    def send(self, data: bytes) -> None:
        wait_for(lambda: self.client is not None, timeout=30, what="the reader to connect")
        with self._lock:
            assert self.client is not None
            self.client.sendall(data)

    def drop(self) -> None:
        with self._lock:
            if self.client is not None:
                self.client.close()
                self.client = None

    def close(self) -> None:
        self.drop()
        self.server.close()


def run_task(config, name: str, scheduled_for) -> None:
    """Run an InfluxDB task once as if scheduled for that time (now() in its Flux), and wait
    until the run succeeded (a failed run fails the test with its log)."""
    from influxdb_client import InfluxDBClient
    from influxdb_client.rest import ApiException

    from dsmr_ts.influx.bootstrap import admin_token

    settings = config.influxdb
    with InfluxDBClient(url=settings.url, token=admin_token(config), org=settings.org) as client:  # tasks: admin
        task = next(t for t in client.tasks_api().find_tasks(name=name) if t.name == name)
        run = client.tasks_api().run_manually(task.id, scheduled_for=scheduled_for)

        def finished() -> bool:
            try:
                status = client.tasks_api().get_run(task.id, run.id).status
            except ApiException as exc:
                if exc.status != 404:  # queued manual runs are briefly "not found"
                    raise
                return False
            assert status != "failed", client.tasks_api().get_run_logs(task.id, run.id)
            return status == "success"

        wait_for(finished, timeout=60, what=f"task {name!r} run for {scheduled_for}")


def npm_packages(*specs: str) -> Path:
    """node_modules holding npm packages (name@version), installed once per machine into
    ~/.cache/dsmr-ts/npm (from the npm registry, with the machine's npm)."""
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dsmr-ts" / "npm" / "-".join(specs)
    modules = folder / "node_modules"
    if not (folder / ".installed").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(folder), *specs],
                       check=True, timeout=900)  # fmt: skip
        (folder / ".installed").touch()
    return modules


def debian_binary(package: str, binary: str) -> str:
    """A program from a Debian package (nginx, mosquitto, ...), installed with apt-get if this
    machine does not have it yet (as .ci/run does up front)."""
    import shutil

    def found() -> str | None:
        return shutil.which(binary) or next(
            (
                f"{d}/{binary}"
                for d in ("/usr/sbin", "/usr/bin", "/usr/lib/postgresql")
                if os.path.exists(f"{d}/{binary}")
            ),
            None,
        )

    if not found():
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", package],
            check=True,
            capture_output=True,
            timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    path = found()
    assert path, f"{binary} is missing after installing the Debian package {package}"
    return path


def env_without_overrides() -> dict[str, str]:
    """This process's environment without DSMR_TS_* (a child reads its config file alone)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_")}


def write_config(folder: Path, reader: str, extra: str = "") -> Path:
    """A `dsmr-ts run` config in a new folder: API on, free ports, a managed influxd in ./influx-data."""
    folder.mkdir()
    path = folder / "dsmr-ts.yaml"
    path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\n"
        f"server:\n  bind: 127.0.0.1:{free_port()}\n  workers: 1\n"
        f"influxdb:\n  url: http://127.0.0.1:{free_port()}\n  data_dir: ./influx-data\n"
        f"reader:\n{reader}{extra}"
    )
    path.chmod(0o600)
    return path


class Running:
    """`dsmr-ts run` for a config, until stop()."""

    def __init__(self, config: Path, env: dict[str, str] | None = None):
        """env: added to an environment without DSMR_TS_* overrides (e.g. DSMR_TS_INFLUXD)."""
        self.log = config.parent / "run.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                dsmr_ts_command("--config", str(config), "run"), cwd=REPO, env={**env_without_overrides(), **(env or {})},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        bind = next(line.split()[-1] for line in config.read_text().splitlines() if "bind:" in line)
        self.url = f"http://{bind}"
        wait_for(self.healthy, timeout=120, what="dsmr-ts run to answer")

    def healthy(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return requests.get(self.url + "/health", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def get(self, path: str, **params) -> bytes:
        response = requests.get(self.url + path, headers={"X-AUTHKEY": TEST_KEY}, params=params, timeout=60)
        assert response.status_code == 200, (path, response.text)
        return response.content

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(120)
