"""The stack a benchmark measures: its own influxd and `dsmr-ts serve` on free loopback ports in a
temp dir (never your data), plus CPU accounting of both from /proc."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dsmr_ts.config import load_config  # noqa: E402
from dsmr_ts.influx.bootstrap import bootstrap  # noqa: E402
from dsmr_ts.influx.build import ensure_influxd  # noqa: E402
from dsmr_ts.influx.server import ManagedInfluxd, free_port  # noqa: E402

KEY = "BENCHMARKKEY0123456789BENCHMARKKEY0123456789"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process and its descendants, also those that ended (gunicorn replaces
    a worker after max_requests: its CPU counts in the master's cutime once the master reaped it)."""
    total = 0.0
    for member in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS  # utime, stime, cutime, cstime
    return total


def descendants(pid: int) -> list[int]:
    found = []
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return found
    for child in children:
        found += [child, *descendants(child)]
    return found


class Stack:
    """influxd + setup + `dsmr-ts serve` (gunicorn) with the API enabled; `extra_config` is YAML
    appended to the config. Use as a context manager. In a temp dir removed afterwards, or in
    `folder`, kept (and used again when it already holds a stack: its data, on new ports)."""

    def __init__(self, extra_config: str = "", env: dict[str, str] | None = None, folder: Path | None = None):
        self.kept = folder is not None
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
        self.tmp = folder or Path(tempfile.mkdtemp(prefix="dsmr-ts-bench-"))
        self.extra_config = extra_config
        self.env = env or {}
        self.influxd: ManagedInfluxd | None = None
        self.api: subprocess.Popen | None = None
        self.reader: subprocess.Popen | None = None
        self.broker: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> Stack:
        # A benchmark stopped with SIGTERM (kill, timeout) still stops its influxd and API.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"stopped by signal {signum}"))
        self.influxd = ManagedInfluxd(ensure_influxd(), self.tmp / "influxd", port=free_port()).start()
        self.config_path = self.tmp / "dsmr-ts.yaml"
        self.config_path.write_text(
            f"api: {{enabled: true, key: {KEY}}}\ninfluxdb: {{managed: false, url: {self.influxd.url}}}\n"
            "reader: {enabled: false}\n" + self.extra_config
        )
        self.config_path.chmod(0o600)  # it holds the key: dsmr-ts refuses a world-readable one
        bootstrap(load_config(self.config_path))
        self.config = load_config(self.config_path)
        return self

    def stop_api(self) -> None:
        """Stop the API (to start it again with a changed config)."""
        if self.api:
            self.api.terminate()
            self.api.wait(30)
            self.api = None

    def start_api(self) -> str:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_")},
            "DSMR_TS_CONFIG": str(self.config_path),
            "DSMR_TS_SERVER_BIND": f"127.0.0.1:{port}",
            **self.env,
        }
        if os.environ.get("DSMR_TS_INFLUXD"):
            env["DSMR_TS_INFLUXD"] = os.environ["DSMR_TS_INFLUXD"]
        self.api_log = open(self.tmp / "api.log", "w")
        self.api = subprocess.Popen(
            [sys.executable, "-m", "dsmr_ts.cli", "serve"],
            env=env,
            cwd=self.tmp,
            stdout=self.api_log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self.url
            except OSError:
                pass
            if self.api.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the API did not start; see {self.tmp / 'api.log'}")
            time.sleep(0.1)

    def cpu(self) -> tuple[float, float]:
        """(API CPU seconds, influxd CPU seconds) so far."""
        api = cpu_seconds(self.api.pid) if self.api else 0.0
        return api, cpu_seconds(self.influxd.process.pid)

    def side_cpu(self) -> float:
        """CPU seconds of the reader process and the MQTT broker, when they run."""
        return sum(cpu_seconds(p.pid) for p in (self.reader, self.broker) if p)

    @staticmethod
    def start_mosquitto(folder: Path) -> tuple[subprocess.Popen, int]:
        """Debian's mosquitto (apt-get install mosquitto) on a free loopback port, anonymous."""
        binary = next((b for b in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(b).exists()), None)
        if not binary:
            raise SystemExit("mosquitto is not installed (Debian: apt-get install mosquitto)")
        port = free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\n" + ("user root\n" if os.geteuid() == 0 else "")
        )
        broker = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return broker, port

    def start_reader(self) -> None:
        """`dsmr-ts reader` on this stack's config (housekeeping, and MQTT when configured)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_")}
        env["DSMR_TS_CONFIG"] = str(self.config_path)
        self.reader_log = open(self.tmp / "reader.log", "w")
        self.reader = subprocess.Popen(
            [sys.executable, "-m", "dsmr_ts.cli", "reader"],
            env=env,
            cwd=self.tmp,
            stdout=self.reader_log,
            stderr=subprocess.STDOUT,
        )

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        for process in (self.reader, self.broker):
            if process:
                process.terminate()
                process.wait(30)
        if self.api:
            self.api.terminate()
            self.api.wait(30)
            self.api_log.close()
        if self.influxd:
            self.influxd.stop()
        if exc_type is None and not self.kept:  # a failed run keeps its logs for a look
            shutil.rmtree(self.tmp, ignore_errors=True)
