"""Start and stop a local influxd that dsmr-ts manages (data in its own folder)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


class InfluxdError(Exception):
    """influxd did not start or answer; str() carries its last log lines."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when influxd's /health answers 200 (it opens its listener only once ready)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class ManagedInfluxd:
    """An influxd child process with all of its state under data_dir.

    Usable as a context manager. Keeps no telemetry, UI or pprof; logs go to data_dir/influxd.log.
    """

    def __init__(
        self,
        binary: Path,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 8086,
        extra_args: list[str] | None = None,
    ):
        self.binary = Path(binary)
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.extra_args = extra_args or []
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "influxd.log"

    def command(self) -> list[str]:
        return [
            str(self.binary),
            f"--http-bind-address={self.host}:{self.port}",
            f"--bolt-path={self.data_dir / 'influxd.bolt'}",
            f"--engine-path={self.data_dir / 'engine'}",
            f"--sqlite-path={self.data_dir / 'influxd.sqlite'}",
            "--reporting-disabled",
            "--pprof-disabled",
            "--log-level=info",
            # One huge query must not take the whole machine's memory.
            "--query-memory-bytes=1073741824",
            # A read of a series copies all of its values held in the write cache before it filters
            # by time, so a 25 MB cache (the default) makes every query over recent data slow
            # (~45 ms vs ~4 ms for the latest reading). Snapshot it to TSM early instead.
            "--storage-cache-snapshot-memory-size=4194304",
            "--storage-cache-snapshot-write-cold-duration=1m",
            *self.extra_args,
        ]

    def start(self, timeout: float = 60.0) -> "ManagedInfluxd":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        if not port_is_free(self.host, self.port):
            raise InfluxdError(f"port {self.host}:{self.port} is in use; set influxdb.url to a free port")
        # influxd reads config.{toml,yaml,json} from its working directory and INFLUXD_* from the
        # environment; run it in its data dir with neither, so only our flags count.
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXD_")}
        logfile = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it in order
            )
        finally:
            logfile.close()
        started = time.monotonic()
        while not is_healthy(self.url, timeout=1.0):
            if self.process.poll() is not None:
                raise InfluxdError(f"influxd exited with status {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() - started > timeout:
                self.stop()
                raise InfluxdError(f"influxd did not answer /health within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)
        log.info("influxd ready at %s in %.1f s (data in %s)", self.url, time.monotonic() - started, self.data_dir)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait (influxd flushes and closes its stores); SIGKILL if it hangs."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("influxd did not stop within %.0f s; killing it", timeout)
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would (for durability tests)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "ManagedInfluxd":
        return self.start()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
