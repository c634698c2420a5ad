"""GET /health: is the service up, does its store answer and accept our token, and (a managed
influxd) is there room on its disk? Public, for load balancers and `dsmr-ts run`."""

from __future__ import annotations

from pathlib import Path

import falcon

from dsmr_ts.disk_watch import disk_full
from dsmr_ts.influx.store import Store
from dsmr_ts.spool_dir import StoreFullMarker


class HealthResource:
    auth_exempt = True

    def __init__(self, store: Store, data_dir: Path | None = None, marker: StoreFullMarker | None = None):
        self.store = store
        self.data_dir = data_dir  # the managed influxd's data (None: not ours to watch)
        self.marker = marker  # set while influxd refuses writes for lack of space

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        state, detail = self.store.health()
        if state == "ok" and self.data_dir is not None and disk_full(self.data_dir, self.marker):
            resp.status = falcon.HTTP_503
            resp.media = {
                "status": "error",
                "influxdb": "ok",
                "detail": f"the disk of InfluxDB's data ({self.data_dir}) is full: readings are refused until"
                " there is room",
            }
        elif state == "ok":
            resp.media = {"status": "ok", "influxdb": "ok"}
        else:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "error", "influxdb": state, "detail": detail}
