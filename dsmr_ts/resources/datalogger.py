"""datalogger/dsmrreading: v1 raw telegrams in, v2 readings in (and out, see readings.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import falcon

from dsmr_ts.influx import schema
from dsmr_ts.influx.store import EARLIEST, LATEST, Store
from dsmr_ts.ingest import Ingest
from dsmr_ts.resources.errors import ValidationFailed, all_valid
from dsmr_ts.resources.forms import read_fields
from dsmr_ts.resources.formats import reading_json
from dsmr_ts.resources.pagination import links, page_params, stream_envelope
from dsmr_ts.resources.validation import (
    DecimalSpec,
    Field,
    FieldError,
    IntegerSpec,
    collect_errors,
    meter_id,
    parse_datetime,
)
from dsmr_ts.telegram import MAX_FUTURE, ParseError, Reading


class TelegramResource:
    """POST /api/v1/datalogger/dsmrreading: form field `telegram`, 201 with an empty body."""

    def __init__(self, ingest: Ingest):
        self.ingest = ingest

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        telegram = read_fields(req).get("telegram")
        if not isinstance(telegram, str) or not telegram.strip("\x00").strip():
            raise falcon.HTTPBadRequest(description="Invalid data")
        try:
            self.ingest.telegram(telegram.strip("\x00"))
        except ParseError as exc:
            raise falcon.HTTPBadRequest(description=str(exc)) from None
        resp.status = falcon.HTTP_201
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = ""


ENERGY = DecimalSpec(max_digits=9, places=3)
VOLTAGE = DecimalSpec(max_digits=4, places=1)
CURRENT = IntegerSpec(minimum=0, maximum=999)


def reading_fields(tz: dt.tzinfo) -> list[Field]:
    """The v2 POST fields: required as documented, optional ones as DSMR-reader v5 accepts."""
    # Readings are kept per whole second.
    timestamp = lambda value: parse_datetime(value, tz).replace(microsecond=0)  # noqa: E731
    return [
        Field("timestamp", timestamp, required=True),
        Field("electricity_currently_delivered", ENERGY, required=True),
        Field("electricity_currently_returned", ENERGY, required=True),
        Field("electricity_delivered_1", ENERGY, required=True),
        Field("electricity_delivered_2", ENERGY, required=True),
        Field("electricity_returned_1", ENERGY, required=True),
        Field("electricity_returned_2", ENERGY, required=True),
        *(Field(f"phase_currently_delivered_l{n}", ENERGY) for n in (1, 2, 3)),
        *(Field(f"phase_currently_returned_l{n}", ENERGY) for n in (1, 2, 3)),
        *(Field(f"phase_voltage_l{n}", VOLTAGE) for n in (1, 2, 3)),
        *(Field(f"phase_power_current_l{n}", CURRENT) for n in (1, 2, 3)),
        Field("extra_device_timestamp", timestamp),
        Field("extra_device_delivered", ENERGY),
        Field("meter", meter_id),
    ]


def reading_from_fields(data: dict[str, Any], tz: dt.tzinfo, default_meter: str) -> Reading:
    """Validated v2 fields -> Reading; falcon.HTTPBadRequest with {"field": [message]} otherwise."""
    clean, errors = collect_errors(data, reading_fields(tz))
    timestamp = clean.get("timestamp")
    if timestamp and timestamp - dt.datetime.now(dt.timezone.utc) > MAX_FUTURE:
        errors["timestamp"] = ["Ensure this datetime is not more than 24 hours in the future."]
    if ("extra_device_timestamp" in clean) != ("extra_device_delivered" in clean):
        missing = "extra_device_delivered" if "extra_device_timestamp" in clean else "extra_device_timestamp"
        errors.setdefault(missing, ["Required together with the other extra_device field."])
    if errors:
        raise ValidationFailed(errors)
    reading = Reading(
        timestamp=clean.pop("timestamp"),
        meter=clean.pop("meter", default_meter),
        extra_device_timestamp=clean.pop("extra_device_timestamp", None),
        extra_device_delivered=clean.pop("extra_device_delivered", None),
    )
    reading.values = clean
    return reading


def filter_datetimes(req: falcon.Request, field: str, tz: dt.tzinfo) -> tuple[dt.datetime | None, dt.datetime | None]:
    """`<field>__gte` and `<field>__lte` query parameters as UTC datetimes (None when absent)."""

    def bound(name: str) -> dt.datetime | None:
        raw = req.get_param(name)
        try:
            moment = parse_datetime(raw, tz, allow_date=True) if raw else None
        except (FieldError, OverflowError):
            raise ValidationFailed({name: ["Enter a valid date/time."]}) from None
        # Nothing is stored outside these years; an extreme bound means "from the start" / "to the end".
        return min(max(moment, EARLIEST), LATEST) if moment else None

    gte, lte = all_valid(lambda: bound(f"{field}__gte"), lambda: bound(f"{field}__lte"))
    return gte, lte


class ReadingResource:
    """POST (and GET, see readings.py) /api/v2/datalogger/dsmrreading."""

    def __init__(
        self,
        ingest: Ingest,
        store: Store,
        tz: dt.tzinfo,
        output_tz: dt.tzinfo | None = None,
        trust_forwarded: bool = False,
    ):
        self.ingest = ingest
        self.store = store
        self.tz = tz
        self.output_tz = output_tz
        self.trust_forwarded = trust_forwarded

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        page, (gte, lte) = all_valid(lambda: page_params(req), lambda: filter_datetimes(req, "timestamp", self.tz))
        meter = req.get_param("meter") or self.store.default_meter()
        descending = req.get_param("ordering") == "-timestamp"  # anything else: ascending
        count, rows = self.store.readings.page(meter, gte, lte, page.offset, page.limit, descending)
        next_url, previous_url = links(req, page, count, self.trust_forwarded)
        results = (reading_json(row["_time"], row, self.output_tz) for row in rows)
        resp.content_type = falcon.MEDIA_JSON
        resp.stream = stream_envelope(count, next_url, previous_url, results)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = read_fields(req)
        default_meter = "" if data.get("meter") else self.store.default_meter()
        reading = self.ingest.reading(reading_from_fields(data, self.tz, default_meter))
        resp.status = falcon.HTTP_201
        resp.media = reading_json(reading.timestamp, schema.reading_fields(reading), self.output_tz)
