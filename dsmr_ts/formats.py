"""How values look on the wire: decimal strings, UTC 'Z' datetimes, field order (the field table's), ids."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Mapping, Sequence, overload

from dsmr_ts.fields import SCHEMA, Kind, ReadingField, ReadingSchema


def exact(value: float) -> Decimal:
    """A stored value as the decimal it was written as, for arithmetic that is then rounded
    (0.75 x 0.30 must be 0.225 and round to 0.23, not 0.22499... and 0.22)."""
    return Decimal(repr(float(value)))


def rounded(value: Decimal, places: int) -> Decimal:
    """Half-up to `places` decimals, like DSMR-reader's DecimalField; never a negative zero
    (-0.001 of a cost is 0.00, not -0.00)."""
    result = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return abs(result) if result.is_zero() else result


@overload
def decimal_string(value: float, places: int) -> str: ...
@overload
def decimal_string(value: None, places: int) -> None: ...
def decimal_string(value: float | None, places: int) -> str | None:
    """1.5 -> '1.500'; None stays None. Half-up from the value as written (0.0005 -> '0.001')."""
    if value is None:
        return None
    # Fast path (pages format tens of thousands of these): unless the value sits on a tie at this
    # precision, every rounding agrees with half-up; only ties go through Decimal.
    scaled = value * _SCALES[places]
    if abs(scaled - math.floor(scaled) - 0.5) > 1e-6:
        text = _FORMATS[places] % value
        return text[1:] if text[0] == "-" and float(text) == 0 else text
    return str(rounded(exact(value), places))


_SCALES = [10**places for places in range(10)]
_FORMATS = [f"%.{places}f" for places in range(10)]


def money(value: Decimal) -> str:
    """An amount of money: 2 decimals, half-up."""
    return str(rounded(value, 2))


def unit_price(value: Decimal) -> str:
    """A price per kWh: 5 decimals, half-up (market prices are given to 0.01 EUR/MWh)."""
    return str(rounded(value, 5))


@overload
def datetime_string(moment: dt.datetime, tz: dt.tzinfo | None = None) -> str: ...
@overload
def datetime_string(moment: None, tz: dt.tzinfo | None = None) -> None: ...
def datetime_string(moment: dt.datetime | None, tz: dt.tzinfo | None = None) -> str | None:
    """UTC with 'Z' (as documented), or in `tz` with its offset when configured so."""
    if moment is None:
        return None
    if tz is None:  # isoformat's first 19 characters are strftime's %Y-%m-%dT%H:%M:%S, at half its cost
        return moment.astimezone(dt.timezone.utc).isoformat()[:19] + "Z"
    return moment.astimezone(tz).isoformat(timespec="seconds")


def field_json(spec: ReadingField, value: Any, tz: dt.tzinfo | None = None) -> Any:
    """One reading field as the API shows it (null when absent)."""
    if value is None:
        return None
    if spec.kind is Kind.DATETIME:
        return datetime_string(
            value if isinstance(value, dt.datetime) else dt.datetime.fromtimestamp(int(value), dt.timezone.utc), tz
        )
    if spec.kind is Kind.INTEGER:
        return int(value)
    return decimal_string(value, spec.places)


def reading_json(
    timestamp: dt.datetime, values: dict[str, Any], tz: dt.tzinfo | None = None, schema: ReadingSchema = SCHEMA
) -> dict[str, Any]:
    """A stored reading as the API shows it, its fields in the table's order. id = Unix seconds."""
    out: dict[str, Any] = {"id": int(timestamp.timestamp()), "timestamp": datetime_string(timestamp, tz)}
    for spec in schema.api_fields:
        value = values.get(spec.name)
        # Decimals inline: the common case of a page of a thousand readings.
        out[spec.name] = (
            decimal_string(value, spec.places)
            if spec.kind is Kind.DECIMAL and value is not None
            else field_json(spec, value, tz)
        )
    return out


def readings_text(
    times: Sequence[int],
    columns: Mapping[str, Sequence[Any]],
    tz: dt.tzinfo | None = None,
    schema: ReadingSchema = SCHEMA,
) -> list[str]:
    """Readings (times in Unix s, field -> values, None where absent; datetimes as Unix s) as JSON
    text, one str each: json.dumps(reading_json(...)) of each, the same text, made a column at a
    time (a page of a thousand readings spent most of its time formatting them one by one)."""
    shown = [("id", [str(t) for t in times]), ("timestamp", datetime_column(times, tz))]
    for spec in schema.api_fields:
        column = columns.get(spec.name) or [None] * len(times)
        if spec.kind is Kind.DECIMAL:
            shown.append((spec.name, decimal_column(column, spec.places)))
        elif spec.kind is Kind.DATETIME:
            shown.append((spec.name, datetime_column(column, tz)))
        else:
            shown.append((spec.name, ["null" if value is None else str(int(value)) for value in column]))
    return json_rows(shown)


def json_rows(columns: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """JSON objects as text, one per row, from (key, values as JSON text) columns; json.dumps's
    separators, so the text is what json.dumps of the same dicts gives."""
    template = "{" + ", ".join(json.dumps(key).replace("%", "%%") + ": %s" for key, _ in columns) + "}"
    return [template % row for row in zip(*(values for _, values in columns))]


def decimal_column(column: Sequence[float | None], places: int) -> list[str]:
    """decimal_string of each value as JSON text (quoted, or null), for a whole column. Each value
    is formatted once: a meter's positions, voltages and powers repeat from reading to reading."""
    known: dict[float | None, str] = {None: "null"}  # -0.0 and 0.0 are one key, and one text

    def shown(value: float | None) -> str:
        known[value] = '"' + str(decimal_string(value, places)) + '"'
        return known[value]

    return [known[value] if value in known else shown(value) for value in column]


def datetime_column(column: Sequence[int | None], tz: dt.tzinfo | None) -> list[str]:
    """datetime_string of each Unix time as JSON text (quoted, or null); in UTC the date part is
    made once per day (a page's rows are seconds, minutes or hours apart)."""
    utc = dt.timezone.utc
    days: dict[int, str] = {}
    out = []
    for value in column:
        if value is None:
            out.append("null")
        elif tz is None:
            day, second = divmod(int(value), 86400)
            date = days.get(day)
            if date is None:
                date = days[day] = '"' + dt.datetime.fromtimestamp(day * 86400, utc).date().isoformat() + "T"
            hour, second = divmod(second, 3600)
            minute, second = divmod(second, 60)
            out.append(f'{date}{hour:02d}:{minute:02d}:{second:02d}Z"')
        else:
            out.append('"' + datetime_string(dt.datetime.fromtimestamp(int(value), utc), tz) + '"')
    return out


def gas_used(delivered: float, previous: float | None) -> float:
    """The gas used since the value before (0 for a meter's first): never negative, as a meter
    position that goes down (a replaced meter) uses no gas."""
    return 0.0 if previous is None else max(0.0, float(exact(delivered) - exact(previous)))


def gas_json(read_at: dt.datetime, delivered: float, used: float, tz: dt.tzinfo | None = None) -> dict[str, Any]:
    """A gas value and the gas used since the one before (consumption/gas and its MQTT topics)."""
    return {
        "read_at": datetime_string(read_at, tz),
        "delivered": decimal_string(delivered, 3),
        "currently_delivered": decimal_string(used, 3),
    }


def quarter_peak_json(quarter: dict[str, Any], tz: dt.tzinfo | None = None) -> dict[str, Any]:
    """A completed quarter hour's average power (quarter-hour-peak-electricity and its MQTT topics)."""
    return {
        "read_at_start": datetime_string(quarter["read_at_start"], tz),
        "read_at_end": datetime_string(quarter["read_at_end"], tz),
        "average_delivered": decimal_string(quarter["average_delivered"], 3),
    }
