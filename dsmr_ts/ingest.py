"""The one path by which readings get stored: v1 telegrams, v2 readings, the serial reader."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from typing import Callable, Iterable, Iterator

from dsmr_ts import metrics
from dsmr_ts.influx.client import out_of_space
from dsmr_ts.influx.store import Store, StoreUnavailable
from dsmr_ts.spool_dir import StoreFullMarker
from dsmr_ts.telegram import ParseError, Reading, Telegram, check_not_in_future, parse_telegram

log = logging.getLogger(__name__)

IGNORED_LOG_EVERY = 3600.0  # seconds: a meter with a broken gas clock says so once an hour, not per telegram


class Ingest:
    def __init__(
        self,
        store: Store,
        on_telegram: Callable[[str], None] | None = None,
        store_full: StoreFullMarker | None = None,
    ):
        """on_telegram: called with each stored telegram's text (MQTT's `raw` source); store_full:
        set when influxd refuses a write for lack of space, cleared by a write it takes."""
        self.store = store
        self.store_full = store_full
        self.schema = store.schema
        self.on_telegram = on_telegram
        self._ignored_logged: dict[str, float] = {}  # meter -> when its ignored values were last logged

    def parse(self, text: str | bytes, now: dt.datetime | None = None) -> Telegram:
        """A telegram that may be stored. ParseError: rejected, and the rejection is counted."""
        try:
            telegram = parse_telegram(text, now=now, schema=self.schema)
            check_not_in_future(telegram.reading, now=now)
        except ParseError as exc:
            metrics.REJECTED.inc()
            log.info("telegram rejected: %s", exc)
            try:
                self.store.writer.count_rejected()
            except StoreUnavailable as unavailable:  # the rejection is what the caller must hear
                log.warning("rejected telegram not counted: %s", unavailable)
            raise
        if telegram.ignored:
            self._log_ignored(telegram.reading.meter, telegram.ignored)
        return telegram

    def _log_ignored(self, meter: str, reasons: tuple[str, ...]) -> None:
        now = time.monotonic()
        if now - self._ignored_logged.get(meter, -IGNORED_LOG_EVERY) >= IGNORED_LOG_EVERY:
            if len(self._ignored_logged) > 1000:  # meter ids come from clients: stay bounded
                self._ignored_logged.clear()
            self._ignored_logged[meter] = now
            log.info("telegram of meter %s stored without: %s (said once an hour)", meter, "; ".join(reasons))

    def telegram(self, text: str | bytes, now: dt.datetime | None = None) -> Telegram:
        """Parse and store a raw telegram. ParseError: nothing stored, the rejection is counted."""
        telegram = self.parse(text, now)
        with metrics.INGEST_SECONDS.time(), self._watching_space():
            self.store.writer.store_telegrams([telegram])
        metrics.ACCEPTED.inc()
        if self.on_telegram:
            self.on_telegram(text if isinstance(text, str) else text.decode("latin-1"))
        return telegram

    def telegrams(self, items: Iterable[tuple[str, dt.datetime]]) -> tuple[int, int]:
        """Many (telegram, received) at once, in one write (a spool replay): (stored, rejected).
        StoreUnavailable: none of them is stored."""
        parsed, rejected = [], 0
        for text, received in items:
            try:
                parsed.append(self.parse(text, received))
            except ParseError:
                rejected += 1
        if parsed:
            with self._watching_space():
                self.store.writer.store_telegrams(parsed)
            metrics.ACCEPTED.inc(len(parsed))
        return len(parsed), rejected

    def reading(self, reading: Reading) -> Reading:
        """Store a reading given as values (v2 POST); it replaces one at the same meter+timestamp."""
        with metrics.INGEST_SECONDS.time(), self._watching_space():
            self.store.writer.store_reading(reading)
        return reading

    @contextlib.contextmanager
    def _watching_space(self) -> Iterator[None]:
        """A write: a refusal for lack of space sets the marker, a write taken clears it (once held)."""
        try:
            yield
        except StoreUnavailable as exc:
            if self.store_full is not None and out_of_space(exc):
                self.store_full.set()
            raise
        if self.store_full is not None:
            self.store_full.clear_when_held()
