"""What every resource needs, passed in once by create_app (Falcon's dependency style)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import falcon

from dsmr_ts.config import PricePeriod
from dsmr_ts.influx.store import Store
from dsmr_ts.resources.errors import ValidationFailed
from dsmr_ts.resources.validation import FieldError, meter_id


@dataclass(frozen=True)
class ApiContext:
    store: Store
    tz: dt.tzinfo  # naive datetimes in requests, and the local days of the statistics
    output_tz: dt.tzinfo | None = None  # datetimes out: None = UTC with Z; else this zone's offset
    trust_forwarded: bool = False  # next/previous links from X-Forwarded-Proto/Host
    prices: list[PricePeriod] = field(default_factory=list)

    def meter(self, req: falcon.Request) -> str:
        """The meter a request means: ?meter= (400 when it cannot be a meter id: those are printable
        text), else the store's default meter."""
        given = req.get_param("meter")
        if not given:
            return self.store.meters.default()
        try:
            return meter_id(given)
        except FieldError as exc:
            raise ValidationFailed({"meter": [str(exc)]}) from None
