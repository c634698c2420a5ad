"""application/version and application/monitoring (DSMR-reader v5 shapes)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import falcon

from dsmr_ts import __version__
from dsmr_ts.backup_state import read_state
from dsmr_ts.disk_watch import disk_full
from dsmr_ts.formats import datetime_string
from dsmr_ts.influx.store import StoreUnavailable
from dsmr_ts.resources.context import ApiContext
from dsmr_ts.spool_dir import StoreFullMarker, outbox_state, spool_states

NO_READINGS_AFTER = dt.timedelta(minutes=60)
STATISTICS_LAG = dt.timedelta(hours=3)  # the hour task runs every hour; two missed runs is a problem
REPAIR_LAG = dt.timedelta(minutes=5)  # the repair job runs every 15 s
MQTT_LAG = dt.timedelta(minutes=5)
POSITION_DROPS_SHOWN = dt.timedelta(days=31)  # how long a meter position that went down stays a problem
UNPRICED_SHOWN = dt.timedelta(days=31)  # how far back quarter hours without a market price are a problem


class VersionResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"version": __version__}


class MonitoringResource:
    """{"problems": N, "details": [{"source", "description", "since"}]}: what an operator should look at."""

    def __init__(
        self,
        context: ApiContext,
        spool_dir: Path,
        mqtt: bool = False,
        backup_dir: Path | None = None,
        data_disk: tuple[Path, float] | None = None,
    ):
        self.context = context
        self.store = context.store
        self.spool_dir = spool_dir
        self.mqtt = mqtt  # mqtt.enabled: messages waiting long for the broker are a problem
        self.backup_dir = backup_dir  # the daily backup's folder (None: backup.enabled is off)
        self.data_disk = data_disk  # (managed influxd's data_dir, min_free_percent); None: not ours to watch

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        problems = self.problems()
        resp.media = {
            "problems": len(problems),
            "details": [
                {"source": source, "description": description, "since": datetime_string(since, self.context.output_tz)}
                for source, description, since in problems
            ],
        }

    def problems(self, meter: str | None = None) -> list[tuple[str, str, dt.datetime | None]]:
        """(source, description, since) of each problem, for the default meter (or `meter`)."""
        now = dt.datetime.now(dt.timezone.utc)
        problems: list[tuple[str, str, dt.datetime | None]] = []
        try:
            meter = meter or self.store.meters.default()
            latest = self.store.readings.latest(meter)
            if latest is None:
                problems.append(("datalogger", "No readings received yet", None))
            elif now - latest["_time"] > NO_READINGS_AFTER:
                problems.append(("datalogger", "No readings received for over 60 minutes", latest["_time"]))
            problems += self._statistics_problems(now, meter)
        except StoreUnavailable as exc:
            problems.append(("influxdb", f"InfluxDB is unreachable: {exc.summary}", None))
        for spool in spool_states(self.spool_dir):
            if spool.waiting:
                problems.append(
                    ("reader", f"Telegrams are waiting in the spool {spool.name}: {spool.waiting}", spool.oldest)
                )
        outbox = outbox_state(self.spool_dir) if self.mqtt else None
        if outbox and outbox.oldest and now - outbox.oldest > MQTT_LAG:
            problems.append(
                ("mqtt", f"{outbox.waiting} MQTT messages wait for the broker (is it reachable?)", outbox.oldest)
            )
        low = self._low_disk()
        if low:
            problems.append(("influxdb", low, None))
        backup = read_state(self.backup_dir) if self.backup_dir else None
        if backup is not None and not backup.ok:
            problems.append(("backup", backup.message, backup.time))
        return problems

    def _low_disk(self) -> str:
        """'' unless the managed influxd's disk has less free space than influxdb.min_free_percent."""
        if self.data_disk is None:
            return ""
        folder, minimum = self.data_disk
        try:
            usage = shutil.disk_usage(folder)
        except OSError:
            return ""  # not made yet (influxd never started): nothing to watch
        free = 100 * usage.free / usage.total if usage.total else 0.0
        if disk_full(folder, StoreFullMarker(self.spool_dir)):
            return (
                f"The disk of InfluxDB's data ({folder}) is full ({usage.free // 2**20} MiB free): readings are"
                " refused (503) and the reader spools them; free some space and `dsmr-ts run` carries on"
            )
        if free >= minimum:
            return ""
        return (
            f"The disk of InfluxDB's data ({folder}) has {free:.1f}% free ({usage.free // 2**20} MiB), less than"
            f" influxdb.min_free_percent ({minimum:g}%): when it is full, readings are refused and the reader spools"
        )

    def _statistics_problems(self, now: dt.datetime, meter: str) -> list[tuple[str, str, dt.datetime | None]]:
        """The hour task keeps the watermark within two hours of now (setup starts it at now, so a
        fresh install has no problem before the first task run); the repair job works off late
        readings within a minute."""
        index = self.store.index
        watermark = index.watermark()
        found: list[tuple[str, str, dt.datetime | None]] = []
        if watermark is None:
            found.append(("statistics", "The statistics index was never built: run `dsmr-ts setup`", None))
        elif now - watermark > STATISTICS_LAG:
            found.append(("statistics", "Statistics are lagging behind (are the InfluxDB tasks running?)", watermark))
        for equipment, hour in self.store.statistics.position_drops(meter, now - POSITION_DROPS_SHOWN):
            found.append(
                (
                    "statistics",
                    f"The meter position of {equipment} went down (no usage counted for that hour): a replaced"
                    " meter? Name its old and new equipment ids together in `meters` (see the README)",
                    hour,
                )
            )
        unpriced, since = self.store.statistics.unpriced_hours(meter, now - UNPRICED_SHOWN)
        if unpriced:
            found.append(
                (
                    "prices",
                    f"{unpriced} quarter hours with usage have no market price, so their costs are unknown:"
                    " import or post the prices (`dsmr-ts prices import`, POST /api/v2/prices)",
                    since,
                )
            )
        period, market = self.context.live_price(now)
        if period is not None and period.dynamic is not None and market is None:
            found.append(
                (
                    "prices",
                    f"No market price of {period.dynamic.area} for now: import or post the day-ahead prices",
                    None,
                )
            )
        waiting = index.repair_backlog()
        if waiting is not None and now - waiting > REPAIR_LAG:
            found.append(
                ("statistics", "Late readings wait for their statistics repair (is `dsmr-ts reader` running?)", waiting)
            )
        return found
