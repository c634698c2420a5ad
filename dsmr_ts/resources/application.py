"""application/version and application/monitoring (DSMR-reader v5 shapes)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import falcon

from dsmr_ts import __version__
from dsmr_ts.influx.store import Store, StoreUnavailable
from dsmr_ts.reader.spool import has_pending
from dsmr_ts.resources.formats import datetime_string

NO_READINGS_AFTER = dt.timedelta(minutes=60)
STATISTICS_LAG = dt.timedelta(hours=3)  # the hour task runs every hour; three missed runs is a problem


class VersionResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"version": __version__}


class MonitoringResource:
    """{"problems": N, "details": [{"source", "description", "since"}]}: what an operator should look at."""

    def __init__(self, store: Store, spool_dir: Path, output_tz: dt.tzinfo | None):
        self.store = store
        self.spool_dir = spool_dir
        self.output_tz = output_tz

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        problems: list[tuple[str, str, dt.datetime | None]] = []
        try:
            meter = self.store.default_meter()
            latest = self.store.latest_reading(meter)
            if latest is None:
                problems.append(("datalogger", "No readings received yet", None))
            elif now - latest["_time"] > NO_READINGS_AFTER:
                problems.append(("datalogger", "No readings received for over 60 minutes", latest["_time"]))
            else:
                statistics = self.store.latest_statistics_time()
                if statistics is None or now - statistics > STATISTICS_LAG:
                    problems.append(("statistics", "Statistics are lagging behind (are the InfluxDB tasks running?)",
                                     statistics))
        except StoreUnavailable as exc:
            problems.append(("influxdb", f"InfluxDB is unreachable: {exc.summary}", None))
        for spool_file in sorted(self.spool_dir.glob("*.spool")) if self.spool_dir.is_dir() else []:
            if has_pending(self.spool_dir, spool_file.stem):
                since = dt.datetime.fromtimestamp(spool_file.stat().st_ctime, dt.timezone.utc)
                problems.append(("reader", f"Telegrams are waiting in the spool {spool_file.name}", since))
        resp.media = {
            "problems": len(problems),
            "details": [{"source": source, "description": description,
                         "since": datetime_string(since, self.output_tz)} for source, description, since in problems],
        }
