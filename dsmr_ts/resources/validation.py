"""Input values: decimals, integers, datetimes and meter ids, with DSMR-reader's (DRF's) error
messages, and for each check the JSON Schema of exactly what it accepts: the OpenAPI document is
built from these (resources/openapi.py), so a client, a fuzzer and the validators agree.

Each check returns the value or raises FieldError(message); collect_errors() turns a set of
checks into the 400 body {"field": ["message"], ...}. An optional field sent empty ("") or null
counts as absent, as DRF's do for nullable fields.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Callable

from dsmr_ts.datetimes import FieldError, parse_datetime

__all__ = [
    "DATETIME_SCHEMA",
    "DecimalSpec",
    "Field",
    "FieldError",
    "IntegerSpec",
    "collect_errors",
    "field_schema",
    "meter_id",
    "parse_datetime",
]

REQUIRED = "This field is required."
NOT_NULL = "This field may not be null."

# --- datetimes: the forms dsmr_ts.datetimes reads ------------------------------------------------------

_YEAR = r"[1-9]\d{3}"
# Months with their days (February to the 28th: a 29th of a common year is no date; naive leap
# days are read all the same), so that every value the pattern admits is a date.
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)|02-(?:0[1-9]|1\d|2[0-8]))"
)
_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,6})?)?"
_OFFSET = r"(?:Z|[+-](?:[01]\d|2[0-3])(?::?[0-5]\d)?)"
LOCAL_DATETIME_SCHEMA = {
    "type": "string",
    "pattern": rf"^{_YEAR}-{_MONTH_DAY}[T ]{_TIME}{_OFFSET}?$",
    "description": "ISO 8601 as people write it: a space for the T, seconds and offset optional (naive: local time)",
}
DATETIME_SCHEMA = {"anyOf": [{"type": "string", "format": "date-time"}, LOCAL_DATETIME_SCHEMA]}
DATE_SCHEMA = {"type": "string", "format": "date"}
# A filter: a datetime, a bare date (its local midnight), or empty (no filter).
FILTER_DATETIME_SCHEMA = {"anyOf": [*DATETIME_SCHEMA["anyOf"], DATE_SCHEMA, {"const": ""}]}
FILTER_DATE_SCHEMA = {"anyOf": [DATE_SCHEMA, {"const": ""}]}
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}")
# The energy page's day, month and year: within the years the store holds (1970..2199), or empty.
_STORE_YEAR = r"(?:19[7-9]\d|2[01]\d\d)"
PAGE_DAY_SCHEMA = {"anyOf": [{"type": "string", "pattern": rf"^{_STORE_YEAR}-{_MONTH_DAY}$"}, {"const": ""}]}
PAGE_MONTH_SCHEMA = {"anyOf": [{"type": "string", "pattern": rf"^{_STORE_YEAR}-(?:0[1-9]|1[0-2])$"}, {"const": ""}]}
PAGE_YEAR_SCHEMA = {"anyOf": [{"type": "string", "pattern": rf"^{_STORE_YEAR}$"}, {"const": ""}]}


def parse_date(value: Any) -> dt.date:
    """YYYY-MM-DD, a date of the calendar; FieldError otherwise."""
    if not isinstance(value, str) or not _DATE_TEXT.fullmatch(value):
        raise FieldError("Date has wrong format. Use one of these formats instead: YYYY-MM-DD.")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise FieldError("Date has wrong format. Use one of these formats instead: YYYY-MM-DD.") from None


# --- numbers ----------------------------------------------------------------------------------------


_NUMBER_TEXT = re.compile(r" *[+-]?\d+(\.\d*)? *")
_WHOLE_TEXT = re.compile(r" *\+?\d+(\.0*)? *")


def _finite(number: Decimal, message: str) -> Decimal:
    if not number.is_finite():
        raise FieldError(message)
    return number


@dataclass(frozen=True)
class DecimalSpec:
    """DRF's DecimalField(max_digits, decimal_places): a JSON number, or text of digits."""

    max_digits: int
    places: int

    @property
    def pattern(self) -> str:
        fraction = rf"(\.\d{{0,{self.places}}})?" if self.places else ""
        return rf"^ *[+-]?0*\d{{1,{self.max_digits - self.places}}}{fraction} *$"

    @property
    def limit(self) -> Decimal:
        """JSON numbers below this (in size) round to a value of the field's size."""
        return Decimal(10 ** (self.max_digits - self.places)) - Decimal(5).scaleb(-self.places - 1)

    @property
    def schema(self) -> dict[str, Any]:
        limit = float(self.limit)
        return {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": -limit, "exclusiveMaximum": limit},
                {"type": "string", "pattern": self.pattern},
            ],
            "description": f"text: at most {self.max_digits} digits, {self.places} after the point; a JSON number"
            f" is a binary float, rounded half-up to {self.places} decimals",
        }

    def __call__(self, value: Any) -> float:
        message = "A valid number is required."
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise FieldError(message)
        if isinstance(value, str):
            # Text of digits; how many of them is checked below, with DRF's messages (together the
            # same as `pattern`).
            if not _NUMBER_TEXT.fullmatch(value):
                raise FieldError(message)
            number = Decimal(value.strip())
        else:
            number = _finite(Decimal(repr(value)), message)
            if abs(number) >= self.limit:
                raise FieldError(
                    f"Ensure that there are no more than {self.max_digits - self.places} digits before the decimal"
                    " point."
                )
            # A JSON number is a binary float (0.009 may arrive as 0.009000000000000001): its value
            # to the field's decimals, half-up.
            number = number.quantize(Decimal(1).scaleb(-self.places), rounding=ROUND_HALF_UP)
        # Same order and messages as Django REST framework's DecimalField.validate_precision.
        _, digits, exponent = number.as_tuple()
        assert isinstance(exponent, int)  # a finite number's exponent (not 'n' or 'F')
        if exponent >= 0:
            total = whole = len(digits) + exponent
            places = 0
        elif len(digits) > -exponent:
            total, places = len(digits), -exponent
            whole = total - places
        else:
            total = places = -exponent
            whole = 0
        if total > self.max_digits:
            raise FieldError(f"Ensure that there are no more than {self.max_digits} digits in total.")
        if places > self.places:
            raise FieldError(f"Ensure that there are no more than {self.places} decimal places.")
        if whole > self.max_digits - self.places:
            raise FieldError(
                f"Ensure that there are no more than {self.max_digits - self.places} digits before the decimal point."
            )
        return float(number)


@dataclass(frozen=True)
class IntegerSpec:
    """DRF's IntegerField(min_value, max_value): a JSON integer, or text of digits (5, 5.0).
    maximum is all nines (999), so that the text pattern's digit count states the bound."""

    minimum: int
    maximum: int

    def __post_init__(self) -> None:
        assert set(str(self.maximum)) == {"9"} and self.minimum >= 0, "bounds the pattern can state"

    @property
    def pattern(self) -> str:
        return rf"^ *\+?0*\d{{1,{len(str(self.maximum))}}}(\.0*)? *$"

    @property
    def schema(self) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "integer", "minimum": self.minimum, "maximum": self.maximum},
                {"type": "string", "pattern": self.pattern},
            ]
        }

    def __call__(self, value: Any) -> int:
        message = "A valid integer is required."
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise FieldError(message)
        if isinstance(value, str):
            if not _WHOLE_TEXT.fullmatch(value):  # the range is checked below (together: `pattern`)
                raise FieldError(message)
            number = Decimal(value.strip())
        else:
            number = _finite(Decimal(repr(value)), message)
        if number != number.to_integral_value():
            raise FieldError(message)
        result = int(number)
        if result < self.minimum:
            raise FieldError(f"Ensure this value is greater than or equal to {self.minimum}.")
        if result > self.maximum:
            raise FieldError(f"Ensure this value is less than or equal to {self.maximum}.")
        return result


# --- meter ids ----------------------------------------------------------------------------------------

# A meter id becomes an InfluxDB tag: 1 to 64 characters, no control characters, spaces around it
# trimmed (as DRF trims text).
_VISIBLE = r"[^\x00-\x20\x7f-\x9f]"
_NOT_CONTROL = r"[^\x00-\x1f\x7f-\x9f]"
METER_PATTERN = rf"^ *{_VISIBLE}(?:{_NOT_CONTROL}*{_VISIBLE})? *$"
METER_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": METER_PATTERN}


def meter_id(value: Any) -> str:
    """A meter id given by a client (METER_SCHEMA)."""
    if not isinstance(value, str) or len(value) > 64 or not re.fullmatch(METER_PATTERN, value):
        raise FieldError("Enter a meter id of 1 to 64 printable characters.")
    return value.strip(" ")


# --- fields of a body ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A body field: its check, and the JSON Schema of what that check accepts."""

    name: str
    check: Callable[[Any], Any]
    required: bool = False
    schema: dict[str, Any] = field(default_factory=dict)


def field_schema(spec: Field, form: bool = False) -> dict[str, Any]:
    """The JSON Schema of a body field: what its check takes, and for an optional field also ""
    and (in JSON; a form has no null) null, which count as absent."""
    schema = spec.schema or getattr(spec.check, "schema", None) or {}
    if spec.required:
        return schema
    return {"anyOf": [schema, {"const": ""}, *([] if form else [{"type": "null"}])]}


def collect_errors(data: dict[str, Any], fields: list[Field]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Validate every field; returns (clean values, errors). Absent optional fields stay absent."""
    clean: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for spec in fields:
        raw = data.get(spec.name)
        if spec.name not in data or (raw == "" and not spec.required):
            if spec.required:
                errors[spec.name] = [REQUIRED]
            continue
        if raw is None:
            if spec.required:
                errors[spec.name] = [NOT_NULL]
            continue
        try:
            clean[spec.name] = spec.check(raw)
        except FieldError as exc:
            errors[spec.name] = [str(exc)]
    return clean, errors
