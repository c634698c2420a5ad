"""The one path by which readings get stored: v1 telegrams, v2 readings, the serial reader."""

from __future__ import annotations

import datetime as dt
import logging

from dsmr_ts import metrics
from dsmr_ts.influx.store import Store, StoreUnavailable
from dsmr_ts.telegram import ParseError, Reading, Telegram, check_not_in_future, parse_telegram

log = logging.getLogger(__name__)


class Ingest:
    def __init__(self, store: Store):
        self.store = store

    def telegram(self, text: str | bytes, now: dt.datetime | None = None) -> Telegram:
        """Parse and store a raw telegram. ParseError: nothing stored, the rejection is counted."""
        try:
            telegram = parse_telegram(text, now=now)
            check_not_in_future(telegram.reading, now=now)
        except ParseError as exc:
            metrics.TELEGRAMS.labels("rejected").inc()
            log.info("telegram rejected: %s", exc)
            try:
                self.store.count_rejected()
            except StoreUnavailable as unavailable:  # the rejection is what the caller must hear
                log.warning("rejected telegram not counted: %s", unavailable)
            raise
        with metrics.INGEST_SECONDS.time():
            self.store.write_telegram(telegram)
        metrics.TELEGRAMS.labels("accepted").inc()
        return telegram

    def reading(self, reading: Reading) -> Reading:
        """Store a reading given as values (v2 POST); it replaces one at the same meter+timestamp."""
        with metrics.INGEST_SECONDS.time():
            self.store.replace_reading(reading)
        return reading
