"""How values look on the wire: decimal strings, UTC 'Z' datetimes, field order, ids."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

# Reading fields in the order the documentation shows, then the ones DSMR-reader v5 added.
# (name, decimal places; 0 = integer, None = datetime)
READING_OUTPUT: tuple[tuple[str, int | None], ...] = (
    ("electricity_delivered_1", 3),
    ("electricity_returned_1", 3),
    ("electricity_delivered_2", 3),
    ("electricity_returned_2", 3),
    ("electricity_currently_delivered", 3),
    ("electricity_currently_returned", 3),
    ("phase_currently_delivered_l1", 3),
    ("phase_currently_delivered_l2", 3),
    ("phase_currently_delivered_l3", 3),
    ("extra_device_timestamp", None),
    ("extra_device_delivered", 3),
    ("phase_currently_returned_l1", 3),
    ("phase_currently_returned_l2", 3),
    ("phase_currently_returned_l3", 3),
    ("phase_voltage_l1", 1),
    ("phase_voltage_l2", 1),
    ("phase_voltage_l3", 1),
    ("phase_power_current_l1", 0),
    ("phase_power_current_l2", 0),
    ("phase_power_current_l3", 0),
)


def exact(value: float) -> Decimal:
    """A stored value as the decimal it was written as, for arithmetic that is then rounded
    (0.75 x 0.30 must be 0.225 and round to 0.23, not 0.22499... and 0.22)."""
    return Decimal(repr(float(value)))


CENT = Decimal("0.01")


def rounded(value: Decimal, places: int) -> Decimal:
    """Half-up to `places` decimals, like DSMR-reader's DecimalField; never a negative zero
    (-0.001 of a cost is 0.00, not -0.00)."""
    result = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return abs(result) if result.is_zero() else result


def decimal_string(value: float | None, places: int) -> str | None:
    """1.5 -> '1.500'; None stays None."""
    if value is None:
        return None
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


def reading_json(timestamp: dt.datetime, values: dict[str, Any], tz: dt.tzinfo | None = None) -> dict[str, Any]:
    """A stored reading as the API shows it. id = Unix seconds of its timestamp."""
    out: dict[str, Any] = {"id": int(timestamp.timestamp()), "timestamp": datetime_string(timestamp, tz)}
    for name, places in READING_OUTPUT:
        value = values.get(name)
        if places is None:
            out[name] = (
                datetime_string(dt.datetime.fromtimestamp(int(value), dt.timezone.utc), tz) if value is not None else None
            )
        elif places == 0:
            out[name] = int(value) if value is not None else None
        else:
            out[name] = decimal_string(value, places)
    return out
