"""GET /health: is the service up, and does its store answer and accept our token? Public, for
load balancers and `dsmr-ts run`."""

from __future__ import annotations

import falcon

from dsmr_ts.influx.store import Store


class HealthResource:
    auth_exempt = True

    def __init__(self, store: Store):
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        state, detail = self.store.health()
        if state == "ok":
            resp.media = {"status": "ok", "influxdb": "ok"}
        else:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "error", "influxdb": state, "detail": detail}
