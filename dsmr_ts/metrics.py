"""Prometheus metrics recorded by the API and the ingest path (rendered by resources/prometheus.py).

Under gunicorn every worker is its own process: gunicorn_conf.py points PROMETHEUS_MULTIPROC_DIR
at a fresh directory before the workers start, and prometheus-client then keeps each worker's
values in files there, summed when /metrics is read.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("dsmr_ts_http_requests", "HTTP requests answered", ["route", "method", "status"])
INGEST_SECONDS = Histogram(
    "dsmr_ts_ingest_seconds",
    "Time to store one reading in InfluxDB (v1 telegram or v2 reading)",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
TELEGRAMS = Counter("dsmr_ts_telegrams", "Telegrams received, by result", ["result"])
ACCEPTED, REJECTED = TELEGRAMS.labels("accepted"), TELEGRAMS.labels("rejected")  # looked up once, not per request
MQTT_RAW_DROPPED = Counter(
    "dsmr_ts_mqtt_raw_dropped", "Raw telegrams not relayed to the MQTT publisher (reader not running)"
)
