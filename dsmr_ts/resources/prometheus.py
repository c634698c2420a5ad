"""GET /metrics (Prometheus text format), and the middleware that counts requests."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from dsmr_ts.backup_state import read_state
from dsmr_ts.influx.store import Store, StoreUnavailable
from dsmr_ts.metrics import REQUESTS
from dsmr_ts.spool_dir import outbox_state, spool_states


class RequestMetricsMiddleware:
    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        # The route template, not the URL: made-up URLs must not create new series.
        route = req.uri_template or "unmatched"
        REQUESTS.labels(route, req.method, str(resp.status)[:3]).inc()


class MetricsResource:
    def __init__(self, store: Store, spool_dir: Path, public: bool, backup_dir: Path | None = None):
        self.store = store
        self.spool_dir = spool_dir
        self.backup_dir = backup_dir  # the daily backup's folder (None: backup.enabled is off)
        self.auth_exempt = public  # api.metrics_public; otherwise the API key is needed

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # every gunicorn worker's values, summed
        else:
            registry = REGISTRY
        resp.content_type = CONTENT_TYPE_LATEST
        resp.text = generate_latest(registry).decode() + self._measured_now()

    def _measured_now(self) -> str:
        """Gauges measured at scrape time, from the spool files and InfluxDB."""
        lines = [
            "# HELP dsmr_ts_spool_telegrams Telegrams waiting in a reader spool",
            "# TYPE dsmr_ts_spool_telegrams gauge",
        ]
        lines += [
            f'dsmr_ts_spool_telegrams{{spool="{spool.name}"}} {spool.waiting}' for spool in spool_states(self.spool_dir)
        ]
        outbox = outbox_state(self.spool_dir)
        if outbox is not None:
            lines += [
                "# HELP dsmr_ts_mqtt_outbox_messages MQTT messages waiting for the broker",
                "# TYPE dsmr_ts_mqtt_outbox_messages gauge",
                f"dsmr_ts_mqtt_outbox_messages {outbox.waiting}",
            ]
        backup = read_state(self.backup_dir) if self.backup_dir else None
        if backup is not None:
            lines += [
                "# HELP dsmr_ts_backup_failed 1 when the last daily backup (or its backup.command) failed",
                "# TYPE dsmr_ts_backup_failed gauge",
                f"dsmr_ts_backup_failed {0 if backup.ok else 1}",
            ]
            if backup.last_success:
                lines += [
                    "# HELP dsmr_ts_backup_last_success_timestamp_seconds When the last daily backup succeeded",
                    "# TYPE dsmr_ts_backup_last_success_timestamp_seconds gauge",
                    f"dsmr_ts_backup_last_success_timestamp_seconds {backup.last_success.timestamp():.0f}",
                ]
        try:
            latest = self.store.readings.latest(self.store.meters.default())
        except StoreUnavailable:
            latest = None
        if latest is not None:
            age = (dt.datetime.now(dt.timezone.utc) - latest["_time"]).total_seconds()
            lines += [
                "# HELP dsmr_ts_last_reading_age_seconds Seconds since the newest reading",
                "# TYPE dsmr_ts_last_reading_age_seconds gauge",
                f"dsmr_ts_last_reading_age_seconds {age:.0f}",
            ]
        return "\n".join(lines) + "\n"
