"""The store: the one object the API, the reader and the commands use to reach InfluxDB.

It only wires the parts of dsmr_ts.influx together, each with one job:
  client.py            the connection (writes, InfluxQL, Flux) and StoreUnavailable
  lineprotocol.py      the points and their names, and their line protocol (the only place that writes it)
  writer.py            group-committed writes of the ingest path; bulk writes (imports)
  readings.py          counted pages of readings, of their minutes and of gas values; single readings
  count_index.py       the count index's watermark, repair marks and cursor (what proves the counts)
  statistics_flux.py   the Flux of the hour, day and quarter-hour statistics
  tasks.py             the InfluxDB tasks that run it
  recompute.py         the same Flux run from Python: a range, regenerate, the index's first build
  housekeeping.py      the reader's job: the repair of late data, following the hour task
  statistics_pages.py  hour/day statistics and quarter-hour peaks as the API pages them
  totals.py            today's and a period's usage and costs
  prices.py            day-ahead market prices (stored, corrected, read back)
  hour_costs.py        the costs step: each hour row's electricity costs (fixed or dynamic prices)
  meters.py            meters, the default meter, meter statistics, import cursors
Resources and commands call store.<part>.<method> with plain Python values and get plain values
back; Flux and InfluxQL text live in those modules, nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dsmr_ts.config import Config, InfluxConfig, PricePeriod
from dsmr_ts.fields import SCHEMA, ReadingSchema
from dsmr_ts.influx.client import EARLIEST, LATEST, InfluxClient, StoreUnavailable
from dsmr_ts.influx.count_index import CountIndex, Proof
from dsmr_ts.influx.hour_costs import HourCosts
from dsmr_ts.influx.housekeeping import Housekeeping
from dsmr_ts.influx.meters import Meters
from dsmr_ts.influx.prices import PriceStore
from dsmr_ts.influx.readings import GasQueries, MinuteQueries, ReadingQueries
from dsmr_ts.influx.recompute import Recompute
from dsmr_ts.influx.statistics_pages import StatisticsPages
from dsmr_ts.influx.totals import Totals
from dsmr_ts.influx.writer import ReadingWriter

__all__ = ["EARLIEST", "LATEST", "Store", "StoreUnavailable"]


class Store:
    def __init__(
        self,
        settings: InfluxConfig,
        timeout_ms: int = 30_000,
        timezone: str = "Europe/Amsterdam",
        schema: ReadingSchema = SCHEMA,
        meters: Mapping[str, Sequence[str]] | None = None,
        prices: Sequence[PricePeriod] = (),
    ):
        """meters: config `meters` (a name for a meter and its replacements, ids oldest first);
        prices: config `prices` (the price periods the costs step uses)."""
        self.settings = settings
        self.schema = schema
        self.client = InfluxClient(settings, timeout_ms, meters)
        self.writer = ReadingWriter(self.client, schema)
        self.index = CountIndex(self.client)
        self.prices = PriceStore(self.client)
        self.costs = HourCosts(self.client, self.prices, prices, timezone, schema)
        self.compute = Recompute(self.client, self.index, timezone, schema, costs=self.costs)
        self.housekeeping = Housekeeping(self.client, self.index, self.compute)
        self.statistics = StatisticsPages(self.client)
        proof = Proof(self.index)  # what the count index proves, shared by the three kinds of rows
        self.readings = ReadingQueries(self.client, self.index, proof, schema)
        self.minutes = MinuteQueries(self.client, self.index, proof, schema)
        self.gas = GasQueries(self.client, self.index, proof)
        self.meters = Meters(self.client, schema)
        self.totals = Totals(self.readings, self.statistics, schema, self.costs)

    @classmethod
    def for_config(cls, config: Config, timeout_ms: int = 30_000, schema: ReadingSchema = SCHEMA) -> Store:
        """The store as a config describes it (its InfluxDB, time zone, meter names and prices)."""
        return cls(config.influxdb, timeout_ms, config.timezone, schema, config.meters, config.prices)

    def health(self) -> tuple[str, str]:
        """("ok" | "unreachable" | "unauthorized", what an operator should know); never raises."""
        return self.client.ok()

    def close(self) -> None:
        self.client.close()
