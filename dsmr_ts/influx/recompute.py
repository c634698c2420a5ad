"""Recomputing statistics from the readings with the Flux of statistics_flux.py: a range of hours
(and the days they touch), all of history a week at a time (`dsmr-ts regenerate`, imports), and
the first build of the count index at setup.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dsmr_ts.datetimes import HOUR, day_start, floor_hour, local_midnight
from dsmr_ts.fields import SCHEMA, ReadingSchema
from dsmr_ts.influx.client import InfluxClient, ns
from dsmr_ts.influx.count_index import INDEX_VERSION, CountIndex
from dsmr_ts.influx.hour_costs import HourCosts
from dsmr_ts.influx.lineprotocol import DAY_MEASUREMENT, HOUR_MEASUREMENT, QUARTER_MEASUREMENT
from dsmr_ts.influx.statistics_flux import day_flux, flux_script, hour_flux, quarter_flux

log = logging.getLogger(__name__)


class Recompute:
    """The statistics of one store, computed again from its readings (idempotent: the same rows
    are written over)."""

    def __init__(
        self,
        client: InfluxClient,
        index: CountIndex,
        timezone: str = "Europe/Amsterdam",
        schema: ReadingSchema = SCHEMA,
        clock: Callable[[], dt.datetime] | None = None,
        costs: HourCosts | None = None,
    ):
        self.client = client
        self.costs = costs
        self.index = index
        self.settings = client.settings
        self.timezone = timezone
        self.tz = zoneinfo.ZoneInfo(timezone)
        self.schema = schema
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))

    def recompute(self, start: dt.datetime, stop: dt.datetime, meter: str | None = None) -> None:
        """Hour statistics, their costs and quarter-hour peaks of [start, stop) (whole UTC hours),
        then every local day they touch."""
        meter_filter = "r.meter == meter" if meter else "true"
        params: dict[str, Any] = {"meter": meter} if meter else {}
        self.client.flux(
            hour_flux("start", "stop", self.settings.bucket, self.settings.stats_bucket, meter_filter, self.schema),
            {**params, "start": start, "stop": stop},
        )
        self.client.flux(
            quarter_flux("start", "stop", self.settings.bucket, self.settings.stats_bucket, meter_filter, self.schema),
            {**params, "start": start, "stop": stop},
        )
        self.costs_and_days(start, stop, meter)

    def costs_and_days(self, start: dt.datetime, stop: dt.datetime, meter: str | None = None) -> None:
        """The costs of the hour rows of [start, stop), then the local days they touch (which sum
        the hours' usage and costs)."""
        if self.costs is not None:
            self.costs.recompute(start, stop, meter)
        meter_filter = "r.meter == meter" if meter else "true"
        params: dict[str, Any] = {"meter": meter} if meter else {}
        days = (local_midnight(start, self.tz), local_midnight(stop - dt.timedelta(seconds=1), self.tz, 1))
        self.client.flux(
            day_flux("start", "stop", self.settings.stats_bucket, self.timezone, meter_filter, self.schema),
            {**params, "start": days[0], "stop": days[1]},
        )
        if self.costs is not None:
            self.costs.fixed_days(*days, meter)

    def regenerate(
        self,
        start: dt.datetime,
        stop: dt.datetime,
        chunk_days: int = 7,
        progress: Callable[[int], None] | None = None,
        contiguous: bool | None = None,
    ) -> None:
        """Recompute [start, stop) a chunk of local days at a time, oldest first; when it started
        at or before the watermark (or before the first reading, on a store without one), the
        index is complete up to `stop` afterwards and the watermark says so."""
        began = self.clock()
        if contiguous is None:
            watermark = self.index.watermark()
            first = self.index.first_reading_time()
            contiguous = (watermark is not None and start <= watermark) or (
                watermark is None and (first is None or start <= first)
            )
        chunk_start = start
        while chunk_start < stop:
            chunk_stop = min(local_midnight(chunk_start, self.tz, chunk_days), stop)
            self.recompute(chunk_start, chunk_stop)
            if progress:
                progress(max(1, round((chunk_stop - chunk_start) / dt.timedelta(days=1))))
            chunk_start = chunk_stop
        self.index.mark_repaired_before(began, start, stop)
        if contiguous:
            self.index.advance_watermark(min(floor_hour(stop), floor_hour(began)))
            first = self.index.first_reading_time()
            if first is None or start <= first:
                # Everything was recomputed after every mark made before it began: the repair
                # job need not look at those again.
                self.index.save_repair_cursor(max(began, self.index.repair_cursor() or began))

    def reprice(self, chunk_days: int = 31) -> bool:
        """Setup: when the price periods changed since the stored costs were computed (or this
        version never computed them), compute the hour and day costs again from the first day the
        change touches. True if it did so."""
        if self.costs is None:
            return False
        changed, since = self.costs.changed_since()
        if not changed:
            return False
        first = self.index.first_reading_time()
        if first is not None:
            start = local_midnight(first, self.tz)
            if since is not None:
                start = max(start, day_start(since, self.tz))
            stop = floor_hour(self.clock()) + HOUR
            began = time.monotonic()
            chunk_start = start
            while chunk_start < stop:
                chunk_stop = min(local_midnight(chunk_start, self.tz, chunk_days), stop)
                self.costs_and_days(chunk_start, chunk_stop)
                chunk_start = chunk_stop
            log.info(
                "prices changed: costs recomputed from %s (%.1f s)",
                start.astimezone(self.tz).date(),
                time.monotonic() - began,
            )
        self.costs.save_periods()
        return True

    def start_index(self) -> bool:
        """Setup: a store without a watermark gets one. With no readings yet the index is complete
        now; with readings (an older install, or one whose hour rows lack what this version counts)
        everything is regenerated first. True if it did so."""
        watermark = self.index.watermark()
        if watermark is not None and self.index.index_version() >= INDEX_VERSION:
            return False
        first = self.index.first_reading_time()
        now = self.clock()
        if first is None:
            self.index.advance_watermark(floor_hour(now))
            self.index.save_index_version()
            return False
        log.info(
            "building the statistics and the count index from %s (once; the API counts raw until then)", first.date()
        )
        self.regenerate(local_midnight(first, self.tz), floor_hour(now) + HOUR, contiguous=True)
        self.index.save_index_version()
        return True

    # --- checking what is stored ----------------------------------------------------------------

    def analyze(
        self,
        start: dt.datetime,
        stop: dt.datetime,
        meter: str | None = None,
        chunk_days: int = 7,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[Difference]:
        """Recompute hours, days and quarter-hour peaks of [start, stop) (whole local days) without
        writing, and yield every stored value that differs from its recomputation (or is missing).
        Stored rows that the readings do not make (history imported without its readings) are
        not compared."""
        ids: list[str | None] = list(self.client.meter_ids(meter)) if meter else [None]
        chunk_start = start
        while chunk_start < stop:
            chunk_stop = min(local_midnight(chunk_start, self.tz, chunk_days), stop)
            for one in ids:
                yield from self._differences(chunk_start, chunk_stop, one)
            if progress:
                progress(max(1, round((chunk_stop - chunk_start) / dt.timedelta(days=1))))
            chunk_start = chunk_stop

    def _differences(self, start: dt.datetime, stop: dt.datetime, meter: str | None) -> Iterator[Difference]:
        meter_filter = "r.meter == meter" if meter else "true"
        settings, schema = self.settings, self.schema
        script = flux_script(
            hour_flux("start", "stop", settings.bucket, settings.stats_bucket, meter_filter, schema, write=False),
            day_flux("start", "stop", settings.stats_bucket, self.timezone, meter_filter, schema, write=False,
                     hours="hourRows"),
            quarter_flux("start", "stop", settings.bucket, settings.stats_bucket, meter_filter, schema, write=False),
        )  # fmt: skip
        computed: dict[tuple[str, str, int, str], float] = {}
        for row in self.client.flux(script, {**({"meter": meter} if meter else {}), "start": start, "stop": stop}):
            moment = int(row["_time"].timestamp())
            computed[(row["_measurement"], row["meter"], moment, row["_field"])] = float(row["_value"])
        if not computed:
            return
        stored = self._stored(start, stop, meter)
        for (measurement, row_meter, moment, field), value in sorted(computed.items()):
            old = stored.get((measurement, row_meter, moment, field))
            if old is None or abs(old - value) > 1e-6 * max(1.0, abs(value)):
                when = dt.datetime.fromtimestamp(moment, dt.timezone.utc)
                yield Difference(measurement, row_meter, when, field, old, value)

    def _stored(
        self, start: dt.datetime, stop: dt.datetime, meter: str | None
    ) -> dict[tuple[str, str, int, str], float]:
        where = f"WHERE {self.client.meter_is(meter)} AND" if meter else "WHERE"
        measurements = (HOUR_MEASUREMENT, DAY_MEASUREMENT, QUARTER_MEASUREMENT)
        results = self.client.influxql(
            [
                f"SELECT * FROM {self.client.in_stats(name)} {where} time >= {ns(start)} AND time < {ns(stop)}"
                " GROUP BY meter"
                for name in measurements
            ]
        )
        found: dict[tuple[str, str, int, str], float] = {}
        for name, series in zip(measurements, results):
            for part in series:
                for row in part.rows():
                    for field, value in row.items():
                        if field != "time" and value is not None and not isinstance(value, str):
                            found[(name, part.tags.get("meter", ""), int(row["time"]), field)] = float(value)
        return found


@dataclass(frozen=True)
class Difference:
    """A stored statistic that its recomputation does not give (stored None: missing)."""

    measurement: str
    meter: str
    time: dt.datetime
    field: str
    stored: float | None
    computed: float
