"""datalogger/meter-statistics: the meter's own counters from its latest telegram (GET), and
PATCH for remote dataloggers that send them separately (DSMR-reader v5 shape)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import falcon

from dsmr_ts.influx.store import Store
from dsmr_ts.resources.errors import ValidationFailed
from dsmr_ts.resources.formats import datetime_string
from dsmr_ts.resources.forms import read_fields
from dsmr_ts.resources.validation import Field, FieldError, IntegerSpec, collect_errors, meter_id
from dsmr_ts.telegram import STATISTICS_FIELDS

COUNTER = IntegerSpec(minimum=0, maximum=2**31 - 1)
# The writable fields, from the telegram parser's table (spec as data): the version is text.
FIELDS = list(dict.fromkeys(name for name, _ in STATISTICS_FIELDS.values()))


def _version(value: Any) -> str:
    if not isinstance(value, (str, int)) or not str(value).strip() or len(str(value)) > 32:
        raise FieldError("Enter a version of 1 to 32 characters.")
    return str(value).strip()


class MeterStatisticsResource:
    def __init__(self, store: Store, output_tz: dt.tzinfo | None):
        self.store = store
        self.output_tz = output_tz

    def _body(self, meter: str) -> dict[str, Any]:
        latest = self.store.latest_meter_statistics(meter)
        body: dict[str, Any] = {"id": 1, "timestamp": datetime_string(latest.get("_time"), self.output_tz)}
        for name in FIELDS:
            body[name] = latest.get(name)
        body["rejected_telegrams"] = self.store.rejected_count()
        body["latest_telegram"] = None  # telegrams are not kept; the readings are
        return body

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._body(req.get_param("meter") or self.store.default_meter())

    def on_patch(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = read_fields(req)
        unknown = set(data) - set(FIELDS) - {"meter"}
        specs = [Field(name, _version if name == "dsmr_version" else COUNTER) for name in FIELDS]
        clean, errors = collect_errors(data, [*specs, Field("meter", meter_id)])
        errors.update({name: ["Not a meter statistic you can set."] for name in sorted(unknown)})
        if errors:
            raise ValidationFailed(errors)
        meter = clean.pop("meter", None) or self.store.default_meter()
        if clean:
            self.store.write_meter_statistics(meter, dt.datetime.now(dt.timezone.utc), clean)
        resp.media = self._body(meter)
