"""The WSGI application: create_app(config) wires config, store, middleware and routes."""

from __future__ import annotations

from typing import Any

import falcon

from dsmr_ts.config import Config, load_config
from dsmr_ts.fields import SCHEMA, ReadingSchema
from dsmr_ts.influx.store import Store
from dsmr_ts.ingest import Ingest
from dsmr_ts.resources import errors, web
from dsmr_ts.resources.access import ApiAccessMiddleware, FailedKeys
from dsmr_ts.resources.application import MonitoringResource, VersionResource
from dsmr_ts.resources.consumption import (
    ElectricityConsumptionResource,
    ElectricityLiveResource,
    EnergySupplierPricesResource,
    GasConsumptionResource,
    GasLiveResource,
    QuarterHourPeakResource,
    TodayResource,
)
from dsmr_ts.resources.context import ApiContext
from dsmr_ts.resources.datalogger import ReadingResource, TelegramResource
from dsmr_ts.resources.forms import ChunkedBodyMiddleware
from dsmr_ts.resources.health import HealthResource
from dsmr_ts.resources.meter_statistics import MeterStatisticsResource
from dsmr_ts.resources.openapi import SchemaResource
from dsmr_ts.resources.prices import CheapestPricesResource, PricesResource
from dsmr_ts.resources.prometheus import MetricsResource, RequestMetricsMiddleware
from dsmr_ts.resources.statistics import DayStatisticsResource, HourStatisticsResource
from dsmr_ts.spool_dir import RawRelay, StoreFullMarker


def create_app(
    config: Config | None = None, store: Store | None = None, schema: ReadingSchema | None = None
) -> falcon.App:
    """Build the app. gunicorn calls it with no arguments: the config then comes from
    $DSMR_TS_CONFIG or ./dsmr-ts.yaml. `schema` (the reading field table) defaults to the store's."""
    config = config or load_config()
    store = store or Store.for_config(config, schema=schema or SCHEMA)
    context = ApiContext(
        store=store,
        tz=config.tz,
        output_tz=config.tz if config.api.local_datetimes else None,
        trust_forwarded=config.server.trust_forwarded_headers,
        prices=config.prices,
    )
    spool_dir = config.resolve_path(config.reader.spool_dir)
    relay = RawRelay(spool_dir) if config.mqtt.enabled and "raw" in config.mqtt.publish else None
    ingest = Ingest(store, on_telegram=relay.send if relay else None, store_full=StoreFullMarker(spool_dir))

    middleware: list[Any] = [
        RequestMetricsMiddleware(),
        ApiAccessMiddleware(config.api, config.server.trust_forwarded_headers),
        ChunkedBodyMiddleware(),  # after the key check
    ]
    app = falcon.App(middleware=middleware)
    errors.install(app)
    managed_data = config.resolve_path(config.influxdb.data_dir) if config.influxdb.managed else None
    app.add_route("/health", HealthResource(store, managed_data, StoreFullMarker(spool_dir)))
    app.add_route("/api/v2/schema", SchemaResource(store.schema))
    backup_dir = config.resolve_path(config.backup.dir) if config.backup.enabled else None
    app.add_route("/metrics", MetricsResource(store, spool_dir, config.api.metrics_public, backup_dir))
    app.add_route("/api/v1/datalogger/dsmrreading", TelegramResource(ingest))
    app.add_route("/api/v2/datalogger/dsmrreading", ReadingResource(context, ingest))
    app.add_route("/api/v2/statistics/day", DayStatisticsResource(context))
    app.add_route("/api/v2/statistics/hour", HourStatisticsResource(context))
    # The rest of DSMR-reader v5's v2 routes.
    app.add_route("/api/v2/application/version", VersionResource())
    data_disk = (managed_data, config.influxdb.min_free_percent) if managed_data else None
    monitoring = MonitoringResource(context, spool_dir, config.mqtt.enabled, backup_dir, data_disk)
    app.add_route("/api/v2/application/monitoring", monitoring)
    app.add_route("/api/v2/datalogger/meter-statistics", MeterStatisticsResource(context))
    app.add_route("/api/v2/consumption/electricity-live", ElectricityLiveResource(context))
    app.add_route("/api/v2/consumption/gas-live", GasLiveResource(context))
    app.add_route("/api/v2/consumption/today", TodayResource(context))
    app.add_route("/api/v2/consumption/energy-supplier-prices", EnergySupplierPricesResource(context))
    app.add_route("/api/v2/consumption/electricity", ElectricityConsumptionResource(context))
    app.add_route("/api/v2/consumption/gas", GasConsumptionResource(context))
    app.add_route("/api/v2/consumption/quarter-hour-peak-electricity", QuarterHourPeakResource(context))
    app.add_route("/api/v2/prices", PricesResource(context))
    app.add_route("/api/v2/prices/cheapest", CheapestPricesResource(context))
    if config.web.enabled:
        _add_page(app, config, context, monitoring)
    return app


def _add_page(app: falcon.App, config: Config, context: ApiContext, monitoring: MonitoringResource) -> None:
    """dsmr-ts's energy page at / and its read-only data (resources/web.py). Wrong keys at its
    login are counted on their own, api.wrong_keys_per_minute of them and then 429 (a page guessed
    at does not lock a datalogger out of the API)."""
    access = web.WebAccess(config.web, config.api.key, FailedKeys(config.api.wrong_keys_per_minute))
    app.add_route("/", web.PageResource())
    app.add_static_route("/web/static", str(web.PAGE_FILES))
    app.add_route("/web/login", web.LoginResource(access, config.server.trust_forwarded_headers))
    app.add_route("/web/data/meters", web.MetersResource(context, access))
    app.add_route("/web/data/live", web.LiveResource(context, access))
    app.add_route("/web/data/summary", web.SummaryResource(context, access, monitoring))
    app.add_route("/web/data/power", web.PowerResource(context, access))
    app.add_route("/web/data/days", web.DaysResource(context, access))
    app.add_route("/web/data/months", web.MonthsResource(context, access))
    app.add_route("/web/data/peaks", web.PeaksResource(context, access))
