"""Retrying something that failed (InfluxDB, a forward target, the MQTT broker) without hammering
it or the log: exponential delay up to MAX_BACKOFF, one log line when it fails, one when it works again."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("dsmr_ts")

MAX_BACKOFF = 30.0


class Backoff:
    """Exponential retry delay, and one log line per outage (not per attempt)."""

    def __init__(self, what: str, logger: logging.Logger | None = None):
        self.what = what
        self.log = logger or log
        self.delay = 0.0
        self.next_try = 0.0
        self.down_since: float | None = None

    def ready(self) -> bool:
        return time.monotonic() >= self.next_try

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self.log.warning("%s failed: %s; retrying with backoff", self.what, reason)
        self.delay = min(MAX_BACKOFF, max(1.0, self.delay * 2))
        self.next_try = now + self.delay

    def succeeded(self) -> None:
        if self.down_since is not None:
            self.log.info("%s works again after %.0f s", self.what, time.monotonic() - self.down_since)
        self.down_since, self.delay, self.next_try = None, 0.0, 0.0
