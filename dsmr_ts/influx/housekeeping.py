"""The housekeeping of the statistics, a job of `dsmr-ts reader` (every 15 s): the repair of late
data (hours that a write marked after they ended are recomputed, many late readings of the same
hours in one go) and following the hour task with the count index's watermark (count_index.py).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from dsmr_ts.datetimes import EPOCH, HOUR, floor_hour
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.client import InfluxClient, ident, ns
from dsmr_ts.influx.count_index import REPAIR_SLACK, CountIndex, first_time
from dsmr_ts.influx.lineprotocol import COUNTED_FIELD
from dsmr_ts.influx.recompute import Recompute
from dsmr_ts.influx.tasks import CATCH_UP_DELTA, hour_task_latest_success

log = logging.getLogger(__name__)


class Housekeeping:
    def __init__(
        self,
        client: InfluxClient,
        index: CountIndex,
        compute: Recompute,
        clock: Callable[[], dt.datetime] | None = None,
    ):
        self.client = client
        self.index = index
        self.compute = compute
        self.settings = client.settings
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))

    def repair(self, slack: dt.timedelta = REPAIR_SLACK) -> int:
        """One run of the repair job: the hours marked since the last run (and a little before, for
        writes still in flight then), recomputed per meter in contiguous runs, then marked repaired.
        Returns how many hours it recomputed."""
        began = self.clock()
        cursor = self.index.repair_cursor()
        since = (cursor - slack) if cursor else EPOCH
        (requests,) = self.client.influxql(
            [f'SELECT "hour" FROM {ident(lineprotocol.REPAIR_REQUEST)} WHERE time > {ns(since)} GROUP BY meter']
        )
        hours_by_meter = {found.tags["meter"]: {int(row["hour"]) for row in found.rows()} for found in requests}
        repaired = 0
        for meter, hours in sorted(hours_by_meter.items()):
            pending = self.index.pending_marks(meter, min(hours), max(hours) + 3600)
            pending = {hour: marked for hour, marked in pending.items() if hour in hours}
            if pending:
                repaired += self._repair_hours(meter, pending)
        self.index.save_repair_cursor(began)
        return repaired

    def _repair_hours(self, meter: str, pending: dict[int, int]) -> int:
        current = floor_hour(self.clock())
        hours = sorted(pending)
        runs: list[list[int]] = [[hours[0]]]
        for hour in hours[1:]:
            if hour - runs[-1][-1] <= 3600:
                runs[-1].append(hour)
            else:
                runs.append([hour])
        recomputed = 0
        for run in runs:
            start = dt.datetime.fromtimestamp(run[0], dt.timezone.utc)
            after = dt.datetime.fromtimestamp(run[-1] + 3600, dt.timezone.utc)
            # The next hour with readings takes its baseline from the repaired hours: include it.
            following = self._next_reading_hour(meter, after, current)
            stop = min((following or after) + HOUR, current) if following else min(after, current)
            if stop > start:
                self.compute.recompute(start, stop, meter)
                recomputed += int((stop - start) / HOUR)
        self.client.write(
            "\n".join(lineprotocol.repaired_line(meter, hour, marked) for hour, marked in pending.items()),
            self.settings.bucket,
        )
        log.info(
            "statistics repaired: meter %s, %d hour(s) from %s after late readings",
            meter,
            recomputed,
            dt.datetime.fromtimestamp(hours[0], dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        )
        return recomputed

    def _next_reading_hour(self, meter: str, after: dt.datetime, before: dt.datetime) -> dt.datetime | None:
        if after >= before:
            return None
        (series,) = self.client.influxql(
            [
                f"SELECT {ident(COUNTED_FIELD)} FROM {ident(lineprotocol.READING)} WHERE {self.client.meter_is(meter)}"
                f" AND time >= {ns(after)} AND time < {ns(before)} LIMIT 1"
            ]
        )
        found = first_time(series)
        return floor_hour(found) if found else None

    def follow_hour_task(self) -> dt.datetime | None:
        """Housekeeping: move the watermark to the scheduled time of the hour task's latest
        successful run. That run recomputed every hour from the watermark it read (CATCH_UP at
        most) to its scheduled time, and its rows were all written when it finished; a run that
        could not reach back to the watermark leaves the gap to a regenerate here. Returns the
        watermark (None: there is none yet, setup starts it)."""
        watermark = self.index.watermark()
        if watermark is None:
            return None
        latest = hour_task_latest_success(self.client, watermark)
        if latest is None or latest <= watermark:
            return watermark
        if latest - CATCH_UP_DELTA > watermark:
            log.warning("statistics are %s behind (the hour task did not run): regenerating them", latest - watermark)
            self.compute.regenerate(watermark, latest - CATCH_UP_DELTA + HOUR, contiguous=True)
        self.index.advance_watermark(latest)
        # The run rewrote the hours from the watermark (and always the last two): cost them, and
        # sum them into their days again.
        self.compute.costs_and_days(max(min(watermark, latest - 2 * HOUR), latest - CATCH_UP_DELTA), latest)
        return latest
