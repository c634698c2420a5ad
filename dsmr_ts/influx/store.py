"""The store: the one object the API, the reader and the commands use to reach InfluxDB.

It only wires the parts of dsmr_ts.influx together, each with one job:
  client.py        the connection (writes, InfluxQL, Flux) and StoreUnavailable
  lineprotocol.py  the points and their line protocol (the only place that writes it)
  writer.py        group-committed writes of the ingest path; bulk writes
  readings.py      counted pages of readings, of their minutes and of gas values (the count
                   index), single readings, export
  statistics.py    hour/day statistics and quarter-hour peaks: tasks, recompute, regenerate,
                   repair, watermark, pages
  meters.py        meters, the default meter, meter statistics, import cursors
Resources and commands call store.<part>.<method> with plain Python values and get plain values
back; Flux and InfluxQL text live in those modules, nowhere else.
"""

from __future__ import annotations

from dsmr_ts.config import InfluxConfig
from dsmr_ts.fields import SCHEMA, ReadingSchema
from dsmr_ts.influx.client import EARLIEST, LATEST, InfluxClient, StoreUnavailable
from dsmr_ts.influx.meters import Meters
from dsmr_ts.influx.readings import GasQueries, MinuteQueries, Proof, ReadingQueries
from dsmr_ts.influx.statistics import Statistics
from dsmr_ts.influx.writer import ReadingWriter

__all__ = ["EARLIEST", "LATEST", "Store", "StoreUnavailable"]


class Store:
    def __init__(
        self,
        settings: InfluxConfig,
        timeout_ms: int = 30_000,
        timezone: str = "Europe/Amsterdam",
        schema: ReadingSchema = SCHEMA,
    ):
        self.settings = settings
        self.schema = schema
        self.client = InfluxClient(settings, timeout_ms)
        self.writer = ReadingWriter(self.client, schema)
        self.statistics = Statistics(self.client, timezone, schema)
        proof = Proof(self.statistics)  # what the count index proves, shared by the three kinds of rows
        self.readings = ReadingQueries(self.client, self.statistics, proof, schema)
        self.minutes = MinuteQueries(self.client, self.statistics, proof, schema)
        self.gas = GasQueries(self.client, self.statistics, proof)
        self.meters = Meters(self.client, schema)

    def health(self) -> tuple[str, str]:
        """("ok" | "unreachable" | "unauthorized", what an operator should know); never raises."""
        return self.client.ok()

    def close(self) -> None:
        self.client.close()
