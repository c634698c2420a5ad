"""Datetimes as people and clients write them (API filters and bodies, CSV files), and the UTC
hours and local days the statistics are made of."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

DATETIME_FORMAT = "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]"
BAD_DATETIME = f"Datetime has wrong format. Use one of these formats instead: {DATETIME_FORMAT}."

# What a datetime given by a client may look like (the OpenAPI document states the same): RFC 3339
# (an offset or Z; t and z in either case), or ISO 8601 as people write it: a space for the T,
# seconds optional, an offset optional (naive: local time) and written +01, +0100 or +01:00.
# Filters also take a bare date (its midnight).
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
LOCAL_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class FieldError(ValueError):
    """A value a person gave is wrong; str() is the message (Django REST framework's wording)."""


def parse_datetime(value: Any, tz: dt.tzinfo, allow_date: bool = False) -> dt.datetime:
    """A datetime as RFC3339, LOCAL_DATETIME or (allow_date) DATE say; naive ones are read in tz.

    Returns an aware UTC datetime (beyond year 1..9999 in UTC: the earliest or latest one).
    Raises FieldError with DRF's message.
    """
    if not isinstance(value, str) or not (
        RFC3339.fullmatch(value) or LOCAL_DATETIME.fullmatch(value) or (allow_date and DATE.fullmatch(value))
    ):
        raise FieldError(BAD_DATETIME)
    try:
        moment = dt.datetime.fromisoformat(value.upper())
    except ValueError:  # not a date of the calendar (2021-02-30), or hour 24
        raise FieldError(BAD_DATETIME) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    try:
        return moment.astimezone(dt.timezone.utc)
    except OverflowError:  # 9999-12-31T23:00:00-02:00
        return (dt.datetime.max if moment.year > 1 else dt.datetime.min).replace(tzinfo=dt.timezone.utc)


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
