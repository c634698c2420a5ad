"""Datetimes as people and clients write them (API filters and bodies, CSV files), and the UTC
hours and local days the statistics are made of."""

from __future__ import annotations

import datetime as dt
from typing import Any

DATETIME_FORMAT = "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]"
BAD_DATETIME = f"Datetime has wrong format. Use one of these formats instead: {DATETIME_FORMAT}."


class FieldError(ValueError):
    """A value a person gave is wrong; str() is the message (Django REST framework's wording)."""


def parse_datetime(value: Any, tz: dt.tzinfo, allow_date: bool = False) -> dt.datetime:
    """ISO 8601 with offset ('+02', '+02:00'), 'Z', or naive (read in tz); a space may replace 'T'.

    Returns an aware UTC datetime. Raises FieldError with DRF's message.
    """
    if not isinstance(value, str) or not value.strip():
        raise FieldError(BAD_DATETIME)
    text = value.strip()
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FieldError(BAD_DATETIME) from None
    if len(text) <= 10 and not allow_date:  # a bare date is not a datetime (filters accept it: midnight)
        raise FieldError(BAD_DATETIME)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.astimezone(dt.timezone.utc)


# --- hours and local days ------------------------------------------------------------------------

HOUR = dt.timedelta(hours=1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def floor_hour(moment: dt.datetime) -> dt.datetime:
    """The start of the hour a moment is in (hours are the same in UTC and the zones served)."""
    return moment.replace(minute=0, second=0, microsecond=0)


def local_midnight(moment: dt.datetime, tz: dt.tzinfo, days: int = 0) -> dt.datetime:
    """Local midnight (as UTC) of the local day containing moment, moved by `days` local days."""
    return day_start(moment.astimezone(tz).date(), tz, days)


def day_start(day: dt.date, tz: dt.tzinfo, days: int = 0) -> dt.datetime:
    """Local midnight (as UTC) of a local date, moved by `days` days."""
    day += dt.timedelta(days=days)
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(dt.timezone.utc)
