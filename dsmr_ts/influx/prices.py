"""Day-ahead market prices in the store: measurement `price` in the statistics bucket, tags `area`
and `resolution` (PT15M, PT60M), one point per interval at its start with fields price (EUR/kWh),
seconds (900 or 3600) and written (ms: when it was stored).

An interval may be corrected, also at another resolution (an hourly price replaced by four
quarters, or back): for every quarter hour the most recently written interval covering it holds.
Storing the same prices again writes nothing, and changed prices mark the hours they price for
the repair job (housekeeping.py), which recomputes their statistics and costs like late readings.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dsmr_ts.datetimes import HOUR, floor_hour
from dsmr_ts.formats import exact
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.client import InfluxClient, ident, ns, quote
from dsmr_ts.influx.lineprotocol import HOUR_MEASUREMENT, PRICE_MEASUREMENT
from dsmr_ts.price_formats import quarter_starts
from dsmr_ts.tariffs import QUARTER, MarketPrice

_READ_MARGIN = HOUR  # an hourly price starting before a range still covers its first quarters


@dataclass(frozen=True)
class StoredPrices:
    stored: int  # intervals written (new or changed)
    unchanged: int
    hours_marked: int  # hours with statistics whose costs the repair job recomputes


class PriceStore:
    def __init__(self, client: InfluxClient, clock: Callable[[], dt.datetime] | None = None):
        self.client = client
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))

    def read(self, area: str, start: dt.datetime, stop: dt.datetime) -> list[MarketPrice]:
        """The prices in force that start in [start, stop): the stored intervals, and where a later
        correction replaced part of one, the quarter hours of it still in force."""
        owner = self._quarters(area, start - _READ_MARGIN, stop + _READ_MARGIN)
        by_interval: dict[MarketPrice, list[dt.datetime]] = {}
        for quarter, interval in sorted(owner.items()):
            by_interval.setdefault(interval, []).append(quarter)
        kept: list[MarketPrice] = []
        for interval, quarters in by_interval.items():
            if len(quarters) * 900 == interval.seconds:
                kept += [interval] if start <= interval.start < stop else []
            else:
                kept += [MarketPrice(q, 900, interval.price) for q in quarters if start <= q < stop]
        return sorted(kept, key=lambda price: price.start)

    def _quarters(self, area: str, start: dt.datetime, stop: dt.datetime) -> dict[dt.datetime, MarketPrice]:
        """Quarter start -> the interval in force there (the one written last)."""
        (series,) = self.client.influxql(
            [
                f"SELECT price, seconds, written FROM {self.client.in_stats(PRICE_MEASUREMENT)}"
                f" WHERE area = {quote(area)} AND time >= {ns(start)} AND time < {ns(stop)}"
            ]
        )
        points = [
            (int(row["written"] or 0), MarketPrice(_time(row["time"]), int(row["seconds"]), exact(row["price"])))
            for found in series
            for row in found.rows()
            if row.get("price") is not None and row.get("seconds")
        ]
        owner: dict[dt.datetime, tuple[int, MarketPrice]] = {}
        for written, interval in points:
            for quarter in quarter_starts(interval):
                if quarter not in owner or written >= owner[quarter][0]:
                    owner[quarter] = (written, interval)
        return {quarter: interval for quarter, (_, interval) in owner.items()}

    def at(self, area: str, moment: dt.datetime) -> MarketPrice | None:
        quarter = moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)
        return self._quarters(area, quarter - _READ_MARGIN, quarter + QUARTER).get(quarter)

    def areas(self) -> list[str]:
        (series,) = self.client.influxql(
            [f"SHOW TAG VALUES FROM {ident(PRICE_MEASUREMENT)} WITH KEY = area"], self.client.settings.stats_bucket
        )
        return sorted(row["value"] for found in series for row in found.rows())

    def store(self, area: str, prices: Sequence[MarketPrice]) -> StoredPrices:
        """Store prices (checked already); only new or changed intervals are written."""
        if not prices:
            return StoredPrices(0, 0, 0)
        first, last = min(p.start for p in prices), max(p.stop for p in prices)
        before = self._quarters(area, first - _READ_MARGIN, last)
        changed = [price for price in prices if any(before.get(quarter) != price for quarter in quarter_starts(price))]
        if not changed:
            return StoredPrices(0, len(prices), 0)
        now = self.clock()
        written = int(now.timestamp() * 1000)
        self.client.write(
            "\n".join(
                lineprotocol.price_line(area, price.start, price.seconds, float(price.price), written)
                for price in changed
            ),
            self.client.settings.stats_bucket,
        )
        marked = self._mark_hours(changed, now)
        return StoredPrices(len(changed), len(prices) - len(changed), marked)

    def _mark_hours(self, changed: Sequence[MarketPrice], now: dt.datetime) -> int:
        """Mark the ended hours that changed prices cover and that have statistics, per meter, for
        the repair job: their costs were computed with the prices known then (or without)."""
        hours = {floor_hour(quarter) for price in changed for quarter in quarter_starts(price)}
        ended = sorted(hour for hour in hours if hour + HOUR <= now)
        if not ended:
            return 0
        (series,) = self.client.influxql(
            [
                f"SELECT count(electricity1) FROM {self.client.in_stats(HOUR_MEASUREMENT)}"
                f" WHERE time >= {ns(ended[0])} AND time < {ns(ended[-1] + HOUR)} GROUP BY time(1h), meter"
            ]
        )
        wanted = set(ended)
        pairs = [
            (found.tags["meter"], int(_time(row["time"]).timestamp()))
            for found in series
            for row in found.rows()
            if row.get("count") and _time(row["time"]) in wanted
        ]
        if pairs:
            self.client.write("\n".join(lineprotocol.repair_lines(pairs, now)), self.client.settings.bucket)
        return len({hour for _, hour in pairs})


def _time(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc)
