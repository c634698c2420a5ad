"""What every resource needs, passed in once by create_app (Falcon's dependency style)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import falcon

from dsmr_ts.config import PricePeriod
from dsmr_ts.costs import price_for
from dsmr_ts.influx.store import Store
from dsmr_ts.resources.errors import ValidationFailed
from dsmr_ts.resources.validation import FieldError, meter_id
from dsmr_ts.tariffs import MarketPrice


@dataclass(frozen=True)
class ApiContext:
    store: Store
    tz: dt.tzinfo  # naive datetimes in requests, and the local days of the statistics
    output_tz: dt.tzinfo | None = None  # datetimes out: None = UTC with Z; else this zone's offset
    trust_forwarded: bool = False  # next/previous links from X-Forwarded-Proto/Host
    prices: list[PricePeriod] = field(default_factory=list)

    def live_price(self, now: dt.datetime) -> tuple[PricePeriod | None, MarketPrice | None]:
        """The price period in force now, and under a dynamic contract the current market price."""
        period = price_for(now.astimezone(self.tz).date(), self.prices)
        if period is None or period.dynamic is None:
            return period, None
        return period, self.store.prices.at(period.dynamic.area, now)

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
