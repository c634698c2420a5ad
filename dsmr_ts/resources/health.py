"""GET /health: is the service up, and does its store answer? Public, for load balancers."""

from __future__ import annotations

import falcon

from dsmr_ts.influx.store import Store


class HealthResource:
    auth_exempt = True

    def __init__(self, store: Store):
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.store.ping():
            resp.media = {"status": "ok", "influxdb": "ok"}
        else:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "error", "influxdb": "unreachable"}
