"""How values look on the wire: decimal strings, UTC 'Z' datetimes, field order (the field table's), ids."""

from __future__ import annotations

import datetime as dt
import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

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


def decimal_string(value: float | None, places: int) -> str | None:
    """1.5 -> '1.500'; None stays None. Half-up from the value as written (0.0005 -> '0.001')."""
    if value is None:
        return None
    # Fast path (pages format tens of thousands of these): unless the value sits on a tie at this
    # precision, every rounding agrees with half-up; only ties go through Decimal.
    scaled = value * 10**places
    if abs(scaled - math.floor(scaled) - 0.5) > 1e-6:
        text = f"{value:.{places}f}"
        return text[1:] if text[0] == "-" and float(text) == 0 else text
    return str(rounded(exact(value), places))


def money(value: Decimal) -> str:
    """An amount of money: 2 decimals, half-up."""
    return str(rounded(value, 2))


def datetime_string(moment: dt.datetime | None, tz: dt.tzinfo | None = None) -> str | None:
    """UTC with 'Z' (as documented), or in `tz` with its offset when configured so."""
    if moment is None:
        return None
    if tz is None:
        return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.astimezone(tz).isoformat(timespec="seconds")


def field_json(spec: ReadingField, value: Any, tz: dt.tzinfo | None = None) -> Any:
    """One reading field as the API shows it (null when absent)."""
    if value is None:
        return None
    if spec.kind is Kind.DATETIME:
        return datetime_string(value if isinstance(value, dt.datetime)
                               else dt.datetime.fromtimestamp(int(value), dt.timezone.utc), tz)
    if spec.kind is Kind.INTEGER:
        return int(value)
    return decimal_string(value, spec.places)


def reading_json(timestamp: dt.datetime, values: dict[str, Any], tz: dt.tzinfo | None = None,
                 schema: ReadingSchema = SCHEMA) -> dict[str, Any]:
    """A stored reading as the API shows it, its fields in the table's order. id = Unix seconds."""
    out: dict[str, Any] = {"id": int(timestamp.timestamp()), "timestamp": datetime_string(timestamp, tz)}
    for spec in schema.api_fields:
        value = values.get(spec.name)
        # Decimals inline: the common case of a page of a thousand readings.
        out[spec.name] = (decimal_string(value, spec.places) if spec.kind is Kind.DECIMAL and value is not None
                          else field_json(spec, value, tz))
    return out


def gas_json(read_at: dt.datetime, delivered: float, used: float, tz: dt.tzinfo | None = None) -> dict[str, Any]:
    """A gas value and the gas used since the one before (consumption/gas and its MQTT topics)."""
    return {"read_at": datetime_string(read_at, tz), "delivered": decimal_string(delivered, 3),
            "currently_delivered": decimal_string(used, 3)}


def quarter_peak_json(quarter: dict[str, Any], tz: dt.tzinfo | None = None) -> dict[str, Any]:
    """A completed quarter hour's average power (quarter-hour-peak-electricity and its MQTT topics)."""
    return {"read_at_start": datetime_string(quarter["read_at_start"], tz),
            "read_at_end": datetime_string(quarter["read_at_end"], tz),
            "average_delivered": decimal_string(quarter["average_delivered"], 3)}
