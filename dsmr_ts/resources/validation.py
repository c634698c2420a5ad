"""Input values: decimals, integers and datetimes, with DSMR-reader's (DRF's) error messages.

Each check returns the value or raises FieldError(message); collect_errors() turns a set of
checks into the 400 body {"field": ["message"], ...}.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from dsmr_ts.datetimes import FieldError, parse_datetime

__all__ = ["DecimalSpec", "Field", "FieldError", "IntegerSpec", "collect_errors", "meter_id", "parse_datetime"]

REQUIRED = "This field is required."
NOT_NULL = "This field may not be null."


def _decimal(value: Any, message: str) -> Decimal:
    """A JSON number or form text as a finite Decimal (true/false are not numbers); else FieldError."""
    if isinstance(value, bool):
        raise FieldError(message)
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise FieldError(message) from None
    if not number.is_finite():
        raise FieldError(message)
    return number


@dataclass(frozen=True)
class DecimalSpec:
    max_digits: int
    places: int

    def __call__(self, value: Any) -> float:
        number = _decimal(value, "A valid number is required.")
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
    minimum: int
    maximum: int

    def __call__(self, value: Any) -> int:
        number = _decimal(value, "A valid integer is required.")
        if number != number.to_integral_value():
            raise FieldError("A valid integer is required.")
        result = int(number)
        if result < self.minimum:
            raise FieldError(f"Ensure this value is greater than or equal to {self.minimum}.")
        if result > self.maximum:
            raise FieldError(f"Ensure this value is less than or equal to {self.maximum}.")
        return result


def meter_id(value: Any) -> str:
    """A meter id given by a client: it becomes an InfluxDB tag, so printable text only."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64 or not value.isprintable():
        raise FieldError("Enter a meter id of 1 to 64 printable characters.")
    return value.strip()


@dataclass(frozen=True)
class Field:
    name: str
    check: Callable[[Any], Any]
    required: bool = False


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
