"""Day-ahead market prices over HTTP (a dsmr-ts extension, behind the API key):

- POST /api/v2/prices: {"area", "resolution", "prices": [{"start", "price"}, ...]}: 201 with the
  count stored; every mistake a 400 naming the field, and then nothing is stored.
- GET /api/v2/prices: each interval's market price and, under a dynamic contract, the price of a
  delivered kWh (all-in) and of a returned one, paged like every list.
- GET /api/v2/prices/cheapest?duration=PT2H: the cheapest consecutive window in a range (when to
  run the dishwasher or charge the car), by the all-in price where a dynamic contract applies.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

import falcon

from dsmr_ts.config import AREA, PricePeriod
from dsmr_ts.costs import price_for
from dsmr_ts.datetimes import parse_datetime
from dsmr_ts.formats import datetime_string, unit_price
from dsmr_ts.price_formats import RESOLUTIONS, PriceFormatError, check_price
from dsmr_ts.resources.context import ApiContext
from dsmr_ts.resources.datalogger import filter_datetimes
from dsmr_ts.resources.errors import ValidationFailed, all_valid
from dsmr_ts.resources.forms import read_fields
from dsmr_ts.resources.pagination import links, page_params
from dsmr_ts.resources.validation import NOT_NULL, REQUIRED, DecimalSpec, FieldError
from dsmr_ts.tariffs import MarketPrice, cheapest_window, delivered_price, returned_price

MAX_POSTED = 1000  # intervals per request (ten days of quarter hours, within the 64 KB body); imports take more
DURATION = re.compile(r"PT(?:(\d{1,2})H)?(?:(\d{1,4})M)?")
PRICE = DecimalSpec(max_digits=8, places=6)  # EUR/kWh: below 100 (price_formats.MAX_PRICE)
# A start on a quarter hour (with an offset of whole quarters), in the years the store holds.
PRICE_START_PATTERN = (
    r"^(?:19[7-9]\d|2[01]\d\d)-\d{2}-\d{2}[Tt ]\d{2}:(?:00|15|30|45)(?::00(?:\.0{1,6})?)?"
    r"(?:[Zz]|[+-]\d{2}:?(?:00|15|30|45))?$"
)
RESOLUTION_NAMES = {900: "PT15M", 3600: "PT60M"}
DEFAULT_SPAN = dt.timedelta(days=2)


def posted_prices(data: dict[str, Any], tz: dt.tzinfo) -> tuple[str, list[MarketPrice]]:
    """The area and prices of a POST body; ValidationFailed with every field's reason."""
    errors: dict[str, Any] = {}
    area = data.get("area")
    if area in (None, ""):
        errors["area"] = [REQUIRED if "area" not in data else NOT_NULL]
    elif not isinstance(area, str) or not AREA.fullmatch(area):
        errors["area"] = ["Enter a market area such as NL or BE (capitals, digits, - and _)."]
    resolution = data.get("resolution")
    if resolution not in ("PT15M", "PT60M"):
        errors["resolution"] = [REQUIRED if "resolution" not in data else '"PT15M" or "PT60M".']
    items = data.get("prices")
    if not isinstance(items, list) or not items:
        errors["prices"] = [REQUIRED if "prices" not in data else "Expected a non-empty list of {start, price}."]
    elif len(items) > MAX_POSTED:
        errors["prices"] = [f"At most {MAX_POSTED} prices per request; use `dsmr-ts prices import` for more."]
    if errors:
        raise ValidationFailed(errors)
    seconds = RESOLUTIONS[str(resolution)]
    prices, item_errors = [], []
    assert isinstance(items, list)
    for item in items:
        problems: dict[str, list[str]] = {}
        price = None
        if not isinstance(item, dict):
            item_errors.append({"non_field_errors": ["Expected an object {start, price}."]})
            continue
        try:
            start = parse_datetime(item.get("start"), tz)
            if not re.fullmatch(PRICE_START_PATTERN, item["start"]):
                raise FieldError("Start on a quarter hour (minutes 00, 15, 30 or 45), from 1970 to 2199.")
        except FieldError as exc:
            problems["start"] = [str(exc)]
        try:
            amount = PRICE(item.get("price"))
        except FieldError as exc:
            problems["price"] = [str(exc)]
        if not problems:
            price = MarketPrice(start, seconds, Decimal(repr(amount)))
            try:
                check_price(price, "price")
            except PriceFormatError as exc:
                problems["start" if "start" in str(exc) else "price"] = [str(exc).split(": ", 1)[1]]
        item_errors.append(problems)
        if not problems and price is not None:
            prices.append(price)
    if any(item_errors):
        raise ValidationFailed({"prices": item_errors})
    return str(area), prices


class PricesResource:
    def __init__(self, context: ApiContext):
        self.context = context
        self.store = context.store

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        area, prices = posted_prices(read_fields(req), self.context.tz)
        stored = self.store.prices.store(area, prices)
        resp.status = falcon.HTTP_201
        resp.media = {"area": area, "stored": stored.stored, "unchanged": stored.unchanged}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        page, (start, stop), area = all_valid(
            lambda: page_params(req), lambda: price_range(req, self.context.tz), lambda: self.area(req)
        )
        prices = self.store.prices.read(area, start, stop)
        chosen = prices[page.offset : page.offset + page.limit]
        previous, following = links(req, page, len(prices), self.context.trust_forwarded)
        resp.media = {
            "count": len(prices),
            "next": following,
            "previous": previous,
            "results": [self.price_json(area, price) for price in chosen],
        }

    def area(self, req: falcon.Request) -> str:
        return requested_area(req, self.context)

    def price_json(self, area: str, price: MarketPrice) -> dict[str, Any]:
        period = price_for(price.start.astimezone(self.context.tz).date(), self.context.prices)
        contract = period.dynamic if period is not None and period.dynamic and period.dynamic.area == area else None
        return {
            "start": datetime_string(price.start, self.context.output_tz),
            "end": datetime_string(price.stop, self.context.output_tz),
            "area": area,
            "resolution": RESOLUTION_NAMES[price.seconds],
            "market_price": unit_price(price.price),
            "price": unit_price(delivered_price(contract, price.price)) if contract else None,
            "export_price": unit_price(returned_price(contract, price.price)) if contract else None,
        }


class CheapestPricesResource:
    def __init__(self, context: ApiContext):
        self.context = context

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        seconds, (start, stop), area = all_valid(
            lambda: duration(req), lambda: price_range(req, self.context.tz), lambda: requested_area(req, self.context)
        )
        market = self.context.store.prices.read(area, start, stop)
        all_in = [MarketPrice(p.start, p.seconds, self._price(area, p)) for p in market]
        found = cheapest_window(all_in, seconds)
        if found is None:
            raise falcon.HTTPNotFound(
                description=f"no prices of {area} cover {req.get_param('duration')} without a gap in that range"
            )
        window_start, average = found
        window_stop = window_start + dt.timedelta(seconds=seconds)
        in_window = [p for p in market if window_start <= p.start < window_stop]
        market_average = sum((p.price * p.seconds for p in in_window), Decimal(0)) / sum(p.seconds for p in in_window)
        resp.media = {
            "area": area,
            "start": datetime_string(window_start, self.context.output_tz),
            "end": datetime_string(window_stop, self.context.output_tz),
            "average_price": unit_price(average),
            "average_market_price": unit_price(market_average),
            "all_in": any(self._contract(area, p) for p in in_window),
        }

    def _contract(self, area: str, price: MarketPrice) -> PricePeriod | None:
        period = price_for(price.start.astimezone(self.context.tz).date(), self.context.prices)
        return period if period and period.dynamic and period.dynamic.area == area else None

    def _price(self, area: str, price: MarketPrice) -> Decimal:
        period = self._contract(area, price)
        return delivered_price(period.dynamic, price.price) if period and period.dynamic else price.price


def price_range(req: falcon.Request, tz: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """[start, stop) from start__gte / start__lte (default: from the start of today, two days)."""
    gte, lte = filter_datetimes(req, "start", tz)
    if gte is None:
        gte = (
            dt.datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0).astimezone(dt.timezone.utc)
            if lte is None
            else lte - DEFAULT_SPAN
        )
    stop = lte + dt.timedelta(microseconds=1) if lte is not None else gte + DEFAULT_SPAN
    if stop <= gte:
        raise ValidationFailed({"start__lte": ["Must not come before start__gte."]})
    if stop - gte > dt.timedelta(days=400):
        raise ValidationFailed({"start__lte": ["Ask for at most 400 days at a time."]})
    return gte, stop


def requested_area(req: falcon.Request, context: ApiContext) -> str:
    """?area=, else the area of the dynamic contract in force today, else the only area stored."""
    given = req.get_param("area")
    if given:
        if not AREA.fullmatch(given):
            raise ValidationFailed({"area": ["Enter a market area such as NL or BE (capitals, digits, - and _)."]})
        return given
    period = price_for(dt.datetime.now(context.tz).date(), context.prices)
    if period is not None and period.dynamic is not None:
        return period.dynamic.area
    areas = context.store.prices.areas()
    if len(areas) == 1:
        return areas[0]
    raise ValidationFailed({"area": [REQUIRED if not areas else f"Choose one of {', '.join(areas)}."]})


def duration(req: falcon.Request) -> int:
    """?duration= as ISO 8601 (PT2H, PT90M, PT1H30M): whole quarter hours, up to a day."""
    given = req.get_param("duration") or ""
    found = DURATION.fullmatch(given)
    seconds = (int(found[1] or 0) * 3600 + int(found[2] or 0) * 60) if found and (found[1] or found[2]) else 0
    if not seconds or seconds % 900 or seconds > 86400:
        raise ValidationFailed(
            {"duration": ["Enter a duration of whole quarter hours up to a day, e.g. PT2H or PT45M."]}
        )
    return seconds
