"""`dsmr-ts run`: start the children in order and keep them running.

A child that exits unexpectedly (influxd, the gunicorn master, the reader) is restarted after a
backoff (1 s, doubling to 30 s; back to 1 s once it has run for a minute), with one log line for
the exit and one for the restart, while the other children keep running. Only Ctrl-C/SIGTERM
stops everything, or a child that fails at once (within FAILED_AT_ONCE of its start) five times
in a row: then one line says which child and why, and everything stops.
"""

from __future__ import annotations

import collections
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Protocol

log = logging.getLogger("dsmr_ts.run")

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
HEALTHY_AFTER = 60.0  # seconds of running that reset the backoff
FAILED_AT_ONCE = 10.0  # an exit this soon after a start counts towards giving up
GIVE_UP_AFTER = 5  # failures at once in a row


class SupervisorError(Exception):
    """Everything stopped; str() says which child and why, in one line."""


class Process(Protocol):
    """What the supervisor needs of a child."""

    def start(self) -> None: ...

    def exit_status(self) -> int | None:
        """None while it runs, else how it ended."""

    def stop(self) -> None: ...

    def describe_exit(self) -> str:
        """A short reason for the last exit (e.g. the tail of a log), or ''."""


class Command:
    """A child process of our own (gunicorn, the reader), in its own session so that Ctrl-C in a
    terminal reaches only us and we stop the children in order.

    Its output goes on to our stderr line by line, and its last lines are kept: when it ends, the
    reason is its last error line, not a traceback that scrolled away long ago."""

    def __init__(self, argv: list[str], env: dict[str, str], stop_timeout: float = 30.0, keep_lines: int = 50):
        self.argv = argv
        self.env = env
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._relay: threading.Thread | None = None

    def start(self) -> None:
        self._tail.clear()
        self.process = subprocess.Popen(
            self.argv, env=self.env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._relay = threading.Thread(
            target=self._pass_on, args=(self.process.stdout,), daemon=True, name=f"output of pid {self.process.pid}"
        )
        self._relay.start()

    def _pass_on(self, output: IO[bytes]) -> None:
        for raw in output:
            try:
                sys.stderr.buffer.write(raw)
                sys.stderr.flush()
            except (OSError, ValueError):  # our stderr is gone: keep draining, or the child would block
                pass
            self._tail.append(raw.decode("utf-8", "replace").rstrip())
        output.close()

    def exit_status(self) -> int | None:
        return self.process.poll() if self.process else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self) -> None:
        child = self.process
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0f s; killing it", child.pid, self.stop_timeout)
            child.kill()
            child.wait()

    def describe_exit(self) -> str:
        """The child's last error line (once its output has been read to the end)."""
        if self._relay is not None:
            self._relay.join(timeout=5)
        return last_error_line(list(self._tail))


_ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b|\b(ERROR|CRITICAL|FATAL)\b|lvl=error|^error:", re.IGNORECASE)


def last_error_line(lines: list[str], width: int = 300) -> str:
    """The last line that says what went wrong (an exception, an error log line), else the last line."""
    lines = [line.strip(" []") for line in lines if line.strip(" []")]
    found = next((line for line in reversed(lines) if _ERROR_LINE.search(line)), lines[-1] if lines else "")
    return found[-width:]


@dataclass
class Child:
    name: str
    process: Process
    started: float = 0.0
    running: bool = False
    restart_at: float | None = None
    backoff: float = FIRST_BACKOFF
    failures_at_once: int = 0
    last_reason: str = field(default="")


def describe_status(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


class Supervisor:
    """Starts `children` in order (after_start runs after each one, e.g. setup after influxd),
    then keeps them running until `stop` is set."""

    def __init__(
        self,
        children: list[Child],
        stop: threading.Event,
        after_start: dict[str, Callable[[], object]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        watchdogs: list[Callable[[], None]] | None = None,
    ):
        self.children = children
        self.stop_event = stop
        self.after_start = after_start or {}
        self.clock = clock
        self.watchdogs = watchdogs or []  # called on every round of watch() (each rate-limits itself)

    def start_all(self) -> None:
        for child in self.children:
            if self.stop_event.is_set():
                return
            self._start(child)
            hook = self.after_start.get(child.name)
            if hook:
                hook()

    def _start(self, child: Child) -> None:
        child.process.start()
        child.started = self.clock()
        child.running = True
        child.restart_at = None

    def watch(self, interval: float = 0.25) -> None:
        """Until stop is set: notice exits, restart with backoff. Raises SupervisorError on giving up."""
        while not self.stop_event.wait(interval):
            self.check()
            for watchdog in self.watchdogs:
                watchdog()

    def restart(self, name: str, reason: str) -> None:
        """Stop a running child now and start it again at the next check (a watchdog's decision)."""
        child = next(child for child in self.children if child.name == name)
        if not child.running:
            return
        log.warning("restarting %s: %s", name, reason)
        child.process.stop()
        child.running = False
        child.last_reason = reason
        child.restart_at = self.clock()

    def check(self) -> None:
        now = self.clock()
        for child in self.children:
            if child.running:
                status = child.process.exit_status()
                if status is None:
                    if now - child.started >= HEALTHY_AFTER:
                        child.backoff, child.failures_at_once = FIRST_BACKOFF, 0
                    continue
                self._exited(child, status, now)
            if child.restart_at is not None and now >= child.restart_at:
                log.info("restarting %s (after %s)", child.name, child.last_reason)
                try:
                    self._start(child)
                except Exception as exc:
                    self._exited(child, None, self.clock(), reason=f"could not start: {exc}")

    def _exited(self, child: Child, status: int | None, now: float, reason: str = "") -> None:
        child.running = False
        reason = reason or describe_status(status if status is not None else -1)
        detail = child.process.describe_exit()
        child.last_reason = reason
        if now - child.started < FAILED_AT_ONCE:
            child.failures_at_once += 1
        else:
            child.failures_at_once = 0
        if child.failures_at_once >= GIVE_UP_AFTER:
            raise SupervisorError(
                f"{child.name} failed {GIVE_UP_AFTER} times in a row right after starting"
                f" (last: {reason}){': ' + detail if detail else ''}; stopping everything"
            )
        log.warning(
            "%s %s; restarting it in %.0f s%s", child.name, reason, child.backoff, f" ({detail})" if detail else ""
        )
        child.restart_at = now + child.backoff
        child.backoff = min(MAX_BACKOFF, child.backoff * 2)

    def stop_all(self) -> None:
        """Stop in reverse order of starting (the API and reader before the store they use)."""
        for child in reversed(self.children):
            child.restart_at = None
            try:
                child.process.stop()
            except Exception:
                log.exception("stopping %s failed", child.name)
            child.running = False


def stop_event() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so the main loop can stop children in order."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop
