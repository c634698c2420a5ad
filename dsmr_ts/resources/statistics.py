"""GET statistics/day and statistics/hour, shaped as DSMR-reader's documentation shows them, and
POST statistics/day. Costs are computed when a day is read (dsmr_ts/costs.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import falcon

from dsmr_ts.costs import (
    COSTS,
    DAY_POSITIONS,
    ELECTRICITY,
    TEMPERATURES,
    UNPRICED,
    fixed_cost,
    stored_or_computed_costs,
)
from dsmr_ts.datetimes import day_start
from dsmr_ts.formats import datetime_column, decimal_column, json_rows, money
from dsmr_ts.influx.lineprotocol import DAY_MEASUREMENT, GAS_TIME_FIELD, HOUR_MEASUREMENT, READING_TIME_FIELD
from dsmr_ts.influx.store import EARLIEST, LATEST
from dsmr_ts.resources.context import ApiContext
from dsmr_ts.resources.datalogger import filter_datetimes
from dsmr_ts.resources.errors import ValidationFailed, all_valid
from dsmr_ts.resources.forms import read_fields
from dsmr_ts.resources.pagination import links, ordering, page_params, stream_envelope
from dsmr_ts.resources.validation import (
    DecimalSpec,
    Field,
    FieldError,
    collect_errors,
    meter_id,
    parse_date,
)

USAGE_OUTPUT = ELECTRICITY
USAGE = DecimalSpec(max_digits=9, places=3)  # DSMR-reader's DayStatistics columns
COST = DecimalSpec(max_digits=8, places=2)
TEMPERATURE = DecimalSpec(max_digits=4, places=1)
DAY_POST_FIELDS = [
    *(Field(name, USAGE, required=True) for name in USAGE_OUTPUT),
    *(Field(name, COST, required=True) for name in ("electricity1_cost", "electricity2_cost", "total_cost")),
    Field("gas", USAGE),
    Field("gas_cost", COST),
    Field("fixed_cost", COST),
    *(Field(name, TEMPERATURE) for name in TEMPERATURES),
]


class _StatisticsResource:
    measurement = ""
    time_field = ""
    fields: tuple[str, ...] = (*USAGE_OUTPUT, "gas")  # what rows_json shows

    def __init__(self, context: ApiContext):
        self.context = context
        self.tz = context.tz
        self.output_tz = context.output_tz
        self.prices = context.prices

    def bounds(self, req: falcon.Request) -> tuple[dt.datetime | None, dt.datetime | None]:
        raise NotImplementedError

    def rows_json(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]] | list[str]:
        """The page's rows as the API shows them (dicts, or JSON text)."""
        raise NotImplementedError

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        page, (start, stop), meter = all_valid(
            lambda: page_params(req), lambda: self.bounds(req), lambda: self.context.meter(req)
        )
        descending = ordering(req, (self.time_field, f"-{self.time_field}")) == f"-{self.time_field}"
        count, rows = self.context.store.statistics.page(
            self.measurement, meter, start, stop, page.offset, page.limit, descending, self.fields
        )
        next_url, previous_url = links(req, page, count, self.context.trust_forwarded)
        resp.content_type = falcon.MEDIA_JSON
        resp.stream = stream_envelope(count, next_url, previous_url, self.rows_json(rows))


class HourStatisticsResource(_StatisticsResource):
    """GET /api/v2/statistics/hour. id = Unix seconds of hour_start / 3600."""

    measurement = HOUR_MEASUREMENT
    time_field = "hour_start"

    def bounds(self, req: falcon.Request) -> tuple[dt.datetime | None, dt.datetime | None]:
        gte, lte = filter_datetimes(req, "hour_start", self.tz)
        return gte, (lte + dt.timedelta(seconds=1)) if lte else None

    def rows_json(self, rows: list[dict[str, Any]]) -> list[str]:
        """A column at a time (a month is 744 rows): id, hour_start, usage (0 when absent), gas."""
        starts = [int(row["_time"].timestamp()) for row in rows]
        return json_rows(
            [
                ("id", [str(start // 3600) for start in starts]),
                ("hour_start", datetime_column(starts, self.output_tz)),
                *_decimal_columns(rows, USAGE_OUTPUT, absent=0.0),
                *_decimal_columns(rows, ("gas",)),
            ]
        )


class DayStatisticsResource(_StatisticsResource):
    """GET /api/v2/statistics/day. id = the day as the number YYYYMMDD."""

    measurement = DAY_MEASUREMENT
    time_field = "day"
    fields = (*USAGE_OUTPUT, "gas", *COSTS, "fixed_cost", UNPRICED, *TEMPERATURES, *DAY_POSITIONS.values(),
              READING_TIME_FIELD, GAS_TIME_FIELD)  # fmt: skip

    def bounds(self, req: falcon.Request) -> tuple[dt.datetime | None, dt.datetime | None]:
        def day(name: str) -> dt.date | None:
            raw = req.get_param(name)
            if not raw:
                return None
            try:
                return parse_date(raw)
            except FieldError:
                raise ValidationFailed({name: ["Enter a valid date."]}) from None

        first, last = all_valid(lambda: day("day__gte"), lambda: day("day__lte"))
        clamp = lambda d: min(max(d, EARLIEST.date()), LATEST.date())
        start = day_start(clamp(first), self.tz) if first else None
        stop = day_start(clamp(last), self.tz, 1) if last else None
        return start, stop

    def rows_json(self, rows: list[dict[str, Any]]) -> list[str]:
        """Days a column at a time; costs as posted (POST statistics/day), else from the price periods."""
        days = [row["_time"].astimezone(self.tz).date() for row in rows]
        costs = [stored_or_computed_costs(row, day, self.prices) for row, day in zip(rows, days)]

        def cost(name: str) -> list[str]:
            return ["null" if (amount := c[name]) is None else '"' + amount + '"' for c in costs]

        def moment(field: str) -> list[str]:
            return datetime_column(
                [None if (at := row.get(field)) is None else int(at) for row in rows], self.output_tz
            )

        def position(field: str) -> list[str]:
            return decimal_column([row.get(field) for row in rows], 3)

        fixed = ['"' + money(fixed_cost(row, day, self.prices)) + '"' for row, day in zip(rows, days)]

        return json_rows(
            [
                ("id", [str(d.year * 10000 + d.month * 100 + d.day) for d in days]),
                ("day", ['"' + d.isoformat() + '"' for d in days]),
                ("total_cost", cost("total_cost")),
                *_decimal_columns(rows, USAGE_OUTPUT, absent=0.0),
                ("electricity1_cost", cost("electricity1_cost")),
                ("electricity2_cost", cost("electricity2_cost")),
                *_decimal_columns(rows, ("gas",)),
                ("gas_cost", cost("gas_cost")),
                *_decimal_columns(rows, TEMPERATURES, places=1),
                # DSMR-reader v5.10+: the fixed cost, and the meter positions at the day's end.
                ("fixed_cost", fixed),
                ("electricity_reading_timestamp", moment(READING_TIME_FIELD)),
                *[(name, position(stored)) for name, stored in DAY_POSITIONS.items() if name != "gas_reading"],
                ("gas_reading_timestamp", moment(GAS_TIME_FIELD)),
                ("gas_reading", position(DAY_POSITIONS["gas_reading"])),
            ]
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a day row (history brought in by hand or by script); an existing day is a 400."""
        data = read_fields(req)
        clean, errors = collect_errors(data, DAY_POST_FIELDS)
        day = meter = None
        try:  # the meter: a `meter` field (as in a reading POST), else ?meter=, else the default
            given = data.get("meter")
            meter = meter_id(given) if given not in (None, "") else self.context.meter(req)
        except FieldError as exc:
            errors["meter"] = [str(exc)]
        except ValidationFailed as exc:
            errors.update(exc.errors)
        if "day" not in data or data.get("day") in (None, ""):
            errors["day"] = ["This field is required." if "day" not in data else "This field may not be null."]
        else:
            try:
                day = _posted_day(data["day"])
            except FieldError as exc:
                errors["day"] = [str(exc)]
        if errors:
            raise ValidationFailed(errors)
        assert day is not None and meter is not None  # else an error was found above
        clean.setdefault("fixed_cost", 0.0)
        start = day_start(day, self.tz)
        if not self.context.store.statistics.add_day(meter, start, clean):
            raise ValidationFailed({"day": ["day statistics with this day already exists."]})
        resp.status = falcon.HTTP_201
        resp.content_type = falcon.MEDIA_JSON
        resp.text = self.rows_json([{**clean, "_time": start}])[0]


def _decimal_columns(
    rows: list[dict[str, Any]], names: tuple[str, ...], places: int = 3, absent: float | None = None
) -> list[tuple[str, list[str]]]:
    """(name, JSON texts) of decimal fields of statistics rows; `absent` where a row lacks one."""
    return [
        (name, decimal_column([absent if (value := row.get(name)) is None else value for row in rows], places))
        for name in names
    ]


def _posted_day(value: Any) -> dt.date:
    """A posted day (YYYY-MM-DD) within the years the store holds; FieldError otherwise."""
    day = parse_date(value)
    if not EARLIEST.date() < day < LATEST.date():
        raise FieldError(f"Ensure this date is after {EARLIEST.date()} and before {LATEST.date()}.")
    return day
