"""What the store knows about meters and sources: which meters there are, which one a request
means when it names none, their counters (meter statistics, rejected telegrams), and how far an
import from a source got."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from dsmr_ts.fields import SCHEMA, ReadingSchema
from dsmr_ts.influx import lineprotocol
from dsmr_ts.influx.client import InfluxClient, ident, quote
from dsmr_ts.influx.lineprotocol import COUNTED_FIELD
from dsmr_ts.telegram import DEFAULT_METER, SIMULATED_METER


class Meters:
    def __init__(self, client: InfluxClient, schema: ReadingSchema = SCHEMA):
        self.client = client
        self.schema = schema

    def all(self) -> list[str]:
        """Every meter that has readings (from the tag index: no data is read)."""
        (series,) = self.client.influxql([f'SHOW TAG VALUES FROM {ident(lineprotocol.READING)} WITH KEY = "meter"'])
        return sorted(str(row["value"]) for found in series for row in found.rows())

    def default(self) -> str:
        """The meter a request means when it names none: the only one, or the one that reported last
        (the simulated meter only while no real one has readings); 'default' while there are none.
        A meter with a configured name (config `meters`) is that name. Asked of InfluxDB each time
        (one look at the tag index; a second request only with several meters): every API worker
        gives the same answer at the same moment."""
        meters = self.all()
        names = self.client.meter_names
        if names:  # the household's meter has a name: that is the one (the one that reported last of several)
            candidates = sorted(name for name, ids in names.items() if set(ids) & set(meters)) or sorted(names)
        else:
            candidates = [meter for meter in meters if meter != SIMULATED_METER]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            return self._last_reported(candidates)
        return SIMULATED_METER if SIMULATED_METER in meters else DEFAULT_METER

    def write_id(self, meter: str) -> str:
        """The equipment id a reading posted for `meter` is stored under: a name's newest id."""
        return self.client.meter_ids(meter)[-1]

    def _last_reported(self, meters: list[str]) -> str:
        statements = [
            f"SELECT {ident(COUNTED_FIELD)} FROM {ident(lineprotocol.READING)} WHERE {self.client.meter_is(m)}"
            " ORDER BY time DESC LIMIT 1"
            for m in meters
        ]
        latest = []
        for meter, series in zip(meters, self.client.influxql(statements)):
            for found in series:
                for row in found.rows():
                    latest.append((int(row["time"]), meter))
        return max(latest)[1] if latest else meters[0]

    # --- meter statistics ------------------------------------------------------------------------

    def statistics(self, meter: str) -> dict[str, Any]:
        """The newest value of every meter statistic of one meter ({} when none), and `_time`: when
        the newest of them was written."""
        names = [s.name for s in self.schema.statistics]
        source = f"FROM {ident(lineprotocol.METER_STATISTICS)} WHERE {self.client.meter_is(meter)}"
        values, newest = self.client.influxql(
            [
                f"SELECT {', '.join(f'last({ident(n)}) AS {ident(n)}' for n in names)} {source}",
                f"SELECT {', '.join(ident(n) for n in names)} {source} ORDER BY time DESC LIMIT 1",
            ]
        )
        found: dict[str, Any] = {}
        for series in values:
            for row in series.rows():
                found.update({name: row[name] for name in names if row.get(name) is not None})
        for series in newest:
            for row in series.rows():
                found["_time"] = dt.datetime.fromtimestamp(int(row["time"]), dt.timezone.utc)
        return found

    def latest_telegram(self, meter: str) -> str | None:
        """The newest raw telegram of a meter (v1 or the reader), as received; None when none came."""
        (series,) = self.client.influxql(
            [f"SELECT last(telegram) FROM {ident(lineprotocol.LATEST_TELEGRAM)} WHERE {self.client.meter_is(meter)}"]
        )
        found = next((row["last"] for part in series for row in part.rows()), None)
        return json.loads(found) if found else None

    def rejected_count(self) -> int:
        (series,) = self.client.influxql(
            [f"SELECT sum({ident(lineprotocol.REJECTED_FIELD)}) FROM {ident(lineprotocol.METER_STATISTICS)}"]
        )
        return next((int(row["sum"] or 0) for found in series for row in found.rows()), 0)

    # --- import cursors ------------------------------------------------------------------------------

    def import_cursor(self, source: str) -> dt.datetime | None:
        """How far an import from `source` got (its newest reading written)."""
        (series,) = self.client.influxql(
            [f"SELECT last(reached) FROM {self.client.in_stats(lineprotocol.IMPORT)} WHERE source = {quote(source)}"]
        )
        return next(
            (dt.datetime.fromtimestamp(int(row["last"]), dt.timezone.utc) for found in series for row in found.rows()),
            None,
        )

    def save_import_cursor(self, source: str, reached: dt.datetime) -> None:
        self.client.write(lineprotocol.import_cursor_line(source, reached), self.client.settings.stats_bucket)
