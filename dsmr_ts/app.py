"""The WSGI application: create_app(config) wires config, store, middleware and routes."""

from __future__ import annotations

import falcon

from dsmr_ts.config import Config, load_config
from dsmr_ts.influx.store import Store
from dsmr_ts.resources.health import HealthResource


def create_app(config: Config | None = None, store: Store | None = None) -> falcon.App:
    """Build the app. gunicorn calls it with no arguments: the config comes from
    --config / $DSMR_TS_CONFIG / ./dsmr-ts.yaml."""
    config = config or load_config()
    store = store or Store(config.influxdb)
    app = falcon.App()
    app.add_route("/health", HealthResource(store))
    return app
