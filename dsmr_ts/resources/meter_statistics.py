"""datalogger/meter-statistics: the meter's own counters from its latest telegram (GET), and
PATCH for remote dataloggers that send them separately (DSMR-reader v5 shape)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import falcon

from dsmr_ts.fields import Kind
from dsmr_ts.formats import datetime_string
from dsmr_ts.resources.context import ApiContext
from dsmr_ts.resources.errors import ValidationFailed
from dsmr_ts.resources.forms import read_fields
from dsmr_ts.resources.validation import Field, FieldError, IntegerSpec, collect_errors, meter_id

COUNTER = IntegerSpec(minimum=0, maximum=2**31 - 1)


def _version(value: Any) -> str:
    if not isinstance(value, (str, int)) or not str(value).strip() or len(str(value)) > 32:
        raise FieldError("Enter a version of 1 to 32 characters.")
    return str(value).strip()


class MeterStatisticsResource:
    def __init__(self, context: ApiContext):
        self.context = context
        self.store = context.store
        # The writable fields, from the meter statistics table (spec as data).
        self.statistics = context.store.schema.statistics

    def _body(self, meter: str) -> dict[str, Any]:
        latest = self.store.meters.statistics(meter)
        body: dict[str, Any] = {"id": 1, "timestamp": datetime_string(latest.get("_time"), self.context.output_tz)}
        for statistic in self.statistics:
            body[statistic.name] = latest.get(statistic.name)
        body["rejected_telegrams"] = self.store.meters.rejected_count()
        body["latest_telegram"] = self.store.meters.latest_telegram(meter)
        return body

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._body(self.context.meter(req))

    def on_patch(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = read_fields(req)
        names = {statistic.name for statistic in self.statistics}
        unknown = set(data) - names - {"meter"}
        specs = [Field(s.name, _version if s.kind is Kind.TEXT else COUNTER) for s in self.statistics]
        clean, errors = collect_errors(data, [*specs, Field("meter", meter_id)])
        errors.update({name: ["Not a meter statistic you can set."] for name in sorted(unknown)})
        if errors:
            raise ValidationFailed(errors)
        meter = clean.pop("meter", None) or self.store.meters.default()
        if clean:
            self.store.writer.store_meter_statistics(
                self.store.meters.write_id(meter), dt.datetime.now(dt.timezone.utc), clean
            )
        resp.media = self._body(meter)
