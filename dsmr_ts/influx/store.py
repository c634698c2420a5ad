"""The store: the one object the API and the reader use to reach InfluxDB.

Resources call its methods with plain Python values and get plain values back; Flux text
and the influxdb-client live here and in the modules next to it, nowhere else.
"""

from __future__ import annotations

import logging

from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS

from dsmr_ts.config import InfluxConfig

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """InfluxDB could not be reached or refused the request (the caller answers 503)."""


class Store:
    def __init__(self, settings: InfluxConfig, timeout_ms: int = 30_000):
        self.settings = settings
        self.client = InfluxDBClient(
            url=settings.url, token=settings.token, org=settings.org, timeout=timeout_ms, enable_gzip=False
        )
        # Synchronous writes: a 201 to a client means the point is in InfluxDB's WAL.
        self.write_api = self.client.write_api(write_options=SYNCHRONOUS)
        self.query_api = self.client.query_api()

    def ping(self) -> bool:
        """True when influxd answers; never raises."""
        try:
            return bool(self.client.ping())
        except Exception:  # noqa: BLE001 - any failure means "not reachable" to a health check
            return False

    def close(self) -> None:
        self.client.close()
