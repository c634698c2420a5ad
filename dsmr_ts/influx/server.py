"""Start and stop a local influxd that dsmr-ts manages (data in its own folder).

One influxd per data dir: whoever starts it takes an exclusive lock on `influxd.lock` there and
hands the locked file to influxd itself, so the lock lives exactly as long as that influxd (even
when the process that started it is gone). `influxd.pid` beside it says which process and URL.
Another dsmr-ts command for the same data dir finds the lock taken and uses that influxd
(`use_or_start`) instead of starting a second one.
"""

from __future__ import annotations

import fcntl
import json
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


LOCK_FILE = "influxd.lock"
PID_FILE = "influxd.pid"


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
            # by time, so a 25 MB cache (the default) makes every query over recent data slow.
            # Snapshot it to TSM early instead.
            "--storage-cache-snapshot-memory-size=4194304",
            "--storage-cache-snapshot-write-cold-duration=1m",
            *self.extra_args,
        ]

    def start(self, timeout: float = 60.0) -> ManagedInfluxd:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self._release()  # a restart after a crash: the dead process's lock is ours to take again
        self._lock = _try_lock(self.data_dir)
        if self._lock is None:
            raise InfluxdError(
                f"an influxd already runs for {self.data_dir} ({_describe(read_pid_file(self.data_dir))})"
            )
        try:
            if not port_is_free(self.host, self.port):
                raise InfluxdError(f"port {self.host}:{self.port} is in use; set influxdb.url to a free port")
            self._spawn()
        except BaseException:
            self._release()
            raise
        started = time.monotonic()
        process = self.process
        assert process is not None  # _spawn started it
        while not is_healthy(self.url, timeout=1.0):
            if process.poll() is not None:
                self._release()
                raise InfluxdError(f"influxd exited with status {process.returncode}:\n{self.log_tail()}")
            if time.monotonic() - started > timeout:
                self.stop()
                raise InfluxdError(f"influxd did not answer /health within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)
        log.info("influxd ready at %s in %.1f s (data in %s)", self.url, time.monotonic() - started, self.data_dir)
        return self

    def _spawn(self) -> None:
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
                pass_fds=(self._lock,)
                if self._lock is not None
                else (),  # influxd holds the data dir's lock for as long as it runs
            )
        finally:
            logfile.close()
        _write_private_json(self.data_dir / PID_FILE, {"pid": self.process.pid, "url": self.url})

    def _release(self) -> None:
        """Let go of the data dir's lock (influxd keeps its own copy for as long as it runs)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            os.close(lock)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait (influxd flushes and closes its stores); SIGKILL if it hangs."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("influxd did not stop within %.0f s; killing it", timeout)
                proc.kill()
                proc.wait()
        self._release()

    def kill(self) -> None:
        """SIGKILL, as a crash would (for durability tests)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._release()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ManagedInfluxd:
        return self.start()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class RunningInfluxd:
    """An influxd that another dsmr-ts process started for the same data dir: used, never stopped."""

    def __init__(self, pid: int, url: str):
        self.pid = pid
        self.url = url

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, under another user
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Not ours to stop."""


def use_or_start(
    binary: Path, data_dir: Path, host: str, port: int, timeout: float = 60.0
) -> ManagedInfluxd | RunningInfluxd:
    """The influxd for data_dir: the one already running there (started by `dsmr-ts run` or any
    other dsmr-ts command), or a new one. InfluxdError when the running one answers elsewhere or
    not at all."""
    data_dir = Path(data_dir)
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if not influxd_running(data_dir):
            try:
                return ManagedInfluxd(binary, data_dir, host=host, port=port).start(timeout)
            except InfluxdError as exc:
                if str(exc).startswith("an influxd already runs") and time.monotonic() < deadline:
                    continue  # another command started one just now: use it
                raise
        running = read_pid_file(data_dir)
        if running and running.get("url") not in (None, url):
            raise InfluxdError(
                f"the influxd for {data_dir} ({_describe(running)}) answers at {running['url']},"
                f" but influxdb.url is {url}"
            )
        if running and is_healthy(url):
            log.info("using the influxd already running for %s (%s)", data_dir, _describe(running))
            return RunningInfluxd(int(running["pid"]), url)
        if time.monotonic() > deadline:  # it is starting, or hangs
            raise InfluxdError(f"an influxd runs for {data_dir} ({_describe(running)}) but does not answer at {url}")
        time.sleep(0.2)


def read_pid_file(data_dir: Path) -> dict | None:
    try:
        return json.loads((Path(data_dir) / PID_FILE).read_text())
    except (OSError, ValueError):
        return None


def _describe(running: dict | None) -> str:
    return f"pid {running['pid']}" if running and "pid" in running else "pid unknown"


def _try_lock(data_dir: Path) -> int | None:
    """The data dir's lock as an open descriptor, or None when another process holds it."""
    fd = os.open(data_dir / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def influxd_running(data_dir: Path) -> bool:
    """True when an influxd runs for data_dir (its lock is taken)."""
    if not (Path(data_dir) / LOCK_FILE).exists():
        return False
    fd = _try_lock(Path(data_dir))
    if fd is None:
        return True
    os.close(fd)
    return False


def _write_private_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


class InfluxdService:
    """The store's process as `dsmr-ts run` supervises it (see dsmr_ts.supervisor): an influxd of
    our own, or the one already running for the data dir; when that one is gone, ours."""

    def __init__(self, binary: Path, data_dir: Path, host: str, port: int):
        self.binary = binary
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.current: ManagedInfluxd | RunningInfluxd | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        if isinstance(self.current, ManagedInfluxd):
            self.current._release()  # the data dir's lock of the one that ended
        self.current = use_or_start(self.binary, self.data_dir, self.host, self.port)

    def exit_status(self) -> int | None:
        current = self.current
        if isinstance(current, ManagedInfluxd):
            status = current.process.poll() if current.process else None
            if status is not None:
                # It died (a crash, kill -9): our copy of its lock would keep the next start
                # thinking an influxd still runs for the data dir.
                current._release()
            return status
        if isinstance(current, RunningInfluxd) and not current.alive():
            return -9  # not ours: how it ended is unknown; it is gone
        return None

    def stop(self) -> None:
        if self.current:
            self.current.stop()

    def describe_exit(self) -> str:
        if isinstance(self.current, ManagedInfluxd):
            errors = [line for line in self.current.log_tail(50).splitlines() if "lvl=error" in line]
            return errors[-1][-200:] if errors else ""
        return ""
