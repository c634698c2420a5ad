"""datalogger/dsmrreading: v1 raw telegrams in, v2 readings in (and out, see readings.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import falcon

from dsmr_ts.fields import SCHEMA, Kind, Post, ReadingField, ReadingSchema
from dsmr_ts.formats import reading_json, readings_text
from dsmr_ts.influx.store import EARLIEST, LATEST
from dsmr_ts.ingest import Ingest
from dsmr_ts.resources.context import ApiContext
from dsmr_ts.resources.errors import ValidationFailed, all_valid
from dsmr_ts.resources.forms import read_fields
from dsmr_ts.resources.pagination import links, ordering, page_params, stream_envelope
from dsmr_ts.resources.validation import (
    DATETIME_SCHEMA,
    METER_SCHEMA,
    DecimalSpec,
    Field,
    FieldError,
    IntegerSpec,
    collect_errors,
    meter_id,
    parse_datetime,
)
from dsmr_ts.telegram import MAX_DEVICE_DISTANCE, MAX_FUTURE, ParseError, Reading


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


def _datetime_check(tz: dt.tzinfo):
    def check(value: Any) -> dt.datetime:
        moment = parse_datetime(value, tz).replace(microsecond=0)  # readings are per whole second
        if moment < EARLIEST:  # InfluxDB keeps nothing before 1970 here (and nothing so old is a reading)
            raise FieldError("Ensure this datetime is not before 1970-01-01T00:00:00Z.")
        return moment

    return check


def field_check(spec: ReadingField, tz: dt.tzinfo):
    """How a v2 POST value of this field is checked, from its row in the field table."""
    if spec.kind is Kind.DATETIME:
        return _datetime_check(tz)
    if spec.kind is Kind.INTEGER:
        return IntegerSpec(
            minimum=spec.minimum if spec.minimum is not None else 0,
            maximum=spec.maximum if spec.maximum is not None else 999_999_999,
        )
    return DecimalSpec(max_digits=spec.max_digits, places=spec.places)


def reading_fields(tz: dt.tzinfo, schema: ReadingSchema = SCHEMA) -> list[Field]:
    """The v2 POST fields: timestamp, the table's fields a POST may set (required as documented),
    and dsmr-ts' `meter`."""
    return [
        Field("timestamp", _datetime_check(tz), required=True, schema=DATETIME_SCHEMA),
        *(
            Field(
                spec.name,
                field_check(spec, tz),
                required=spec.post is Post.REQUIRED,
                schema=DATETIME_SCHEMA if spec.kind is Kind.DATETIME else {},
            )
            for spec in schema.post_fields
        ),
        Field("meter", meter_id, schema=METER_SCHEMA),
    ]


def reading_from_fields(
    data: dict[str, Any], tz: dt.tzinfo, default_meter: str, schema: ReadingSchema = SCHEMA
) -> Reading:
    """Validated v2 fields -> Reading; falcon.HTTPBadRequest with {"field": [message]} otherwise."""
    clean, errors = collect_errors(data, reading_fields(tz, schema))
    timestamp = clean.get("timestamp")
    if timestamp and timestamp - dt.datetime.now(dt.timezone.utc) > MAX_FUTURE:
        errors["timestamp"] = ["Ensure this datetime is not more than 24 hours in the future."]
    for value_name, time_name in schema.mbus_pairs:  # a meter position and its time go together
        if (value_name in clean) != (time_name in clean):
            missing = value_name if time_name in clean else time_name
            errors.setdefault(
                missing, [f"Required together with {time_name if missing == value_name else value_name}."]
            )
        when = clean.get(time_name)
        if timestamp and when and abs(when - timestamp) > MAX_DEVICE_DISTANCE:
            # A device clock far off (a gas value stamped years ago) is not history to store.
            errors.setdefault(time_name, ["Ensure this datetime is within 24 hours of timestamp."])
    if errors:
        raise ValidationFailed(errors)
    return Reading(timestamp=clean.pop("timestamp"), meter=clean.pop("meter", default_meter), values=clean)


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

    def __init__(self, context: ApiContext, ingest: Ingest):
        self.context = context
        self.ingest = ingest
        self.store = context.store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        tz, output_tz, schema = self.context.tz, self.context.output_tz, self.store.schema
        page, (gte, lte), meter = all_valid(
            lambda: page_params(req), lambda: filter_datetimes(req, "timestamp", tz), lambda: self.context.meter(req)
        )
        descending = ordering(req, ("timestamp", "-timestamp")) == "-timestamp"  # else ascending
        count, rows = self.store.readings.raw_page(meter, gte, lte, page.offset, page.limit, descending)
        next_url, previous_url = links(req, page, count, self.context.trust_forwarded)
        results = readings_text(*self.store.readings.columns(rows), output_tz, schema)
        resp.content_type = falcon.MEDIA_JSON
        resp.stream = stream_envelope(count, next_url, previous_url, results)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = read_fields(req)
        default_meter = "" if data.get("meter") else self.store.meters.default()
        reading = reading_from_fields(data, self.context.tz, default_meter, self.store.schema)
        reading.meter = self.store.meters.write_id(reading.meter)  # a named meter: its current equipment
        reading = self.ingest.reading(reading)
        resp.status = falcon.HTTP_201
        resp.media = reading_json(reading.timestamp, reading.values, self.context.output_tz, self.store.schema)
