"""dsmr-ts: a DSMR-reader compatible API over InfluxDB 2."""

__version__ = "0.1.0"
