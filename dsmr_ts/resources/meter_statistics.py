"""datalogger/meter-statistics: the meter's own counters from its latest telegram (GET), and
PATCH for remote dataloggers that send them separately (DSMR-reader v5 shape)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import falcon

from dsmr_ts.fields import Kind, MeterStatistic
from dsmr_ts.formats import datetime_string
from dsmr_ts.resources.context import ApiContext
from dsmr_ts.resources.errors import ValidationFailed
from dsmr_ts.resources.forms import read_fields
from dsmr_ts.resources.validation import METER_SCHEMA, Field, FieldError, IntegerSpec, collect_errors, meter_id

COUNTER = IntegerSpec(minimum=0, maximum=999_999_999)
# A DSMR version as the meter writes it ("50", "42"), or as a number: text of 1 to 32 characters.
VERSION_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 32, "pattern": r"\S"},
        {"type": "integer", "minimum": 0, "maximum": 999_999_999},
    ]
}


def _version(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():  # JSON's 50.0 is the integer 50
        value = int(value)
    if isinstance(value, bool) or not (
        (isinstance(value, str) and value.strip() and len(value) <= 32)
        or (isinstance(value, int) and 0 <= value <= 999_999_999)
    ):
        raise FieldError("Enter a version of 1 to 32 characters.")
    return str(value).strip()


def patch_fields(statistics: Iterable[MeterStatistic]) -> list[Field]:
    """What a PATCH may set: the meter statistics of the table, and `meter` (others are refused)."""
    return [
        *(
            Field(s.name, _version, schema=VERSION_SCHEMA) if s.kind is Kind.TEXT else Field(s.name, COUNTER)
            for s in statistics
        ),
        Field("meter", meter_id, schema=METER_SCHEMA),
    ]


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
        fields = patch_fields(self.statistics)
        unknown = set(data) - {spec.name for spec in fields}
        clean, errors = collect_errors(data, fields)
        errors.update({name: ["Not a meter statistic you can set."] for name in sorted(unknown)})
        if errors:
            raise ValidationFailed(errors)
        meter = clean.pop("meter", None) or self.store.meters.default()
        if clean:
            self.store.writer.store_meter_statistics(
                self.store.meters.write_id(meter), dt.datetime.now(dt.timezone.utc), clean
            )
        resp.media = self._body(meter)
