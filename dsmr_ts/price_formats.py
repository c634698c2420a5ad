"""Day-ahead market prices from the files people have: ENTSO-E's transparency platform XML
(Publication_MarketDocument, EUR/MWh), EnergyZero's JSON and a plain CSV (`start,price`, EUR/kWh).
The format is recognised from the content. Every parser gives MarketPrice intervals in EUR/kWh
(UTC starts, 900 or 3600 seconds), or raises PriceFormatError saying what is wrong and where.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from dsmr_ts.tariffs import QUARTER, MarketPrice

RESOLUTIONS = {"PT15M": 900, "PT60M": 3600, "PT1H": 3600}
# ENTSO-E's bidding zone codes (EIC) of the areas dsmr-ts's meters are in.
AREAS_BY_EIC = {"10YNL----------L": "NL", "10YBE----------2": "BE", "10Y1001A1001A82H": "DE-LU"}
MAX_PRICE = Decimal(100)  # EUR/kWh: day-ahead prices are capped far below this (4 EUR/kWh in 2026)


class PriceFormatError(ValueError):
    pass


def parse_prices(data: bytes, tz: dt.tzinfo) -> tuple[str | None, list[MarketPrice]]:
    """(the area the document names, if any; its prices), whatever the format."""
    text = data.decode("utf-8-sig", errors="strict") if data else ""
    stripped = text.lstrip()
    if stripped.startswith("<"):
        return parse_entsoe(text)
    if stripped.startswith("{"):
        return "NL", parse_energyzero(text)
    if stripped:
        return None, parse_csv(text, tz)
    raise PriceFormatError("the file is empty")


def _local(element: ElementTree.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _child(element: ElementTree.Element, name: str) -> ElementTree.Element | None:
    return next((child for child in element if _local(child) == name), None)


def _text(element: ElementTree.Element, path: str, where: str) -> str:
    found: ElementTree.Element | None = element
    for name in path.split("/"):
        found = _child(found, name) if found is not None else None
    if found is None or not (found.text or "").strip():
        raise PriceFormatError(f"{where}: no {path}")
    return (found.text or "").strip()


def _utc(value: str, where: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise PriceFormatError(f"{where}: {value!r} is not a date and time") from None
    if moment.tzinfo is None:
        raise PriceFormatError(f"{where}: {value!r} has no time zone")
    return moment.astimezone(dt.timezone.utc)


def _decimal(value: object, where: str) -> Decimal:
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise PriceFormatError(f"{where}: {value!r} is not a number") from None
    if not number.is_finite():
        raise PriceFormatError(f"{where}: {value!r} is not a number")
    return number


def parse_entsoe(text: str) -> tuple[str | None, list[MarketPrice]]:
    """ENTSO-E day-ahead prices (document type A44): per TimeSeries and Period, points at
    positions from 1 of the period's resolution; with curve type A03 a position repeating the
    previous price is left out and is filled with it here."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise PriceFormatError(f"not well-formed XML: {exc}") from None
    if _local(root) != "Publication_MarketDocument":
        if _local(root) == "Acknowledgement_MarketDocument":
            reason = _child(root, "Reason")
            said = _text(reason, "text", "Acknowledgement") if reason is not None else "no reason given"
            raise PriceFormatError(f"ENTSO-E answered with no prices: {said}")
        raise PriceFormatError(f"expected an ENTSO-E Publication_MarketDocument, got {_local(root)}")
    area: str | None = None
    found: list[MarketPrice] = []
    series_list = [child for child in root if _local(child) == "TimeSeries"]
    if not series_list:
        raise PriceFormatError("the document holds no TimeSeries")
    for number, series in enumerate(series_list, 1):
        where = f"TimeSeries {number}"
        currency = _child(series, "currency_Unit.name")
        unit = _child(series, "price_Measure_Unit.name")
        if currency is not None and (currency.text or "").strip() != "EUR":
            raise PriceFormatError(f"{where}: prices in {currency.text}, expected EUR")
        if unit is not None and (unit.text or "").strip() != "MWH":
            raise PriceFormatError(f"{where}: prices per {unit.text}, expected MWH")
        domain = _child(series, "in_Domain.mRID")
        if domain is not None and domain.text:
            area = AREAS_BY_EIC.get(domain.text.strip(), domain.text.strip())
        curve = _child(series, "curveType")
        fill = curve is None or (curve.text or "").strip() == "A03"
        for period in (child for child in series if _local(child) == "Period"):
            found += _entsoe_period(period, fill, where)
    return area, finest(found)


def _entsoe_period(period: ElementTree.Element, fill: bool, where: str) -> list[MarketPrice]:
    start = _utc(_text(period, "timeInterval/start", where), where)
    end = _utc(_text(period, "timeInterval/end", where), where)
    resolution = _text(period, "resolution", where)
    if resolution not in RESOLUTIONS:
        raise PriceFormatError(f"{where}: resolution {resolution} (expected PT15M or PT60M)")
    seconds = RESOLUTIONS[resolution]
    positions = int((end - start).total_seconds()) // seconds
    given: dict[int, Decimal] = {}
    for point in (child for child in period if _local(child) == "Point"):
        position_text = _text(point, "position", where)
        if not position_text.isdigit() or not 1 <= int(position_text) <= positions:
            raise PriceFormatError(f"{where}: position {position_text} outside 1..{positions}")
        given[int(position_text)] = _decimal(_text(point, "price.amount", where), where) / 1000
    if 1 not in given:
        raise PriceFormatError(f"{where}: the period has no price at position 1")
    prices: list[MarketPrice] = []
    last = given[1]
    for position in range(1, positions + 1):
        if position in given:
            last = given[position]
        elif not fill:
            continue  # another curve type: a missing position has no price
        prices.append(MarketPrice(start + dt.timedelta(seconds=seconds * (position - 1)), seconds, last))
    return prices


def parse_energyzero(text: str) -> list[MarketPrice]:
    """EnergyZero's energyprices JSON: {"Prices": [{"price": EUR/kWh, "readingDate": UTC}, ...]}."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PriceFormatError(f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
    items = document.get("Prices") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items:
        raise PriceFormatError('expected EnergyZero\'s JSON with a list "Prices"')
    points = []
    for i, item in enumerate(items):
        where = f"Prices[{i}]"
        if not isinstance(item, dict) or "readingDate" not in item or "price" not in item:
            raise PriceFormatError(f"{where}: expected readingDate and price")
        points.append((_utc(str(item["readingDate"]), where), _decimal(item["price"], where)))
    return intervals(points)


def parse_csv(text: str, tz: dt.tzinfo) -> list[MarketPrice]:
    """CSV with a header `start,price`: the interval's start (ISO 8601; without an offset it is
    read in the configured time zone) and its price in EUR/kWh."""
    rows = csv.reader(io.StringIO(text))
    header = [name.strip().lower() for name in next(rows, [])]
    if header[:2] != ["start", "price"]:
        raise PriceFormatError(f"line 1: expected the header start,price, got {','.join(header)!r}")
    points = []
    for line_number, row in enumerate(rows, 2):
        if not row or not "".join(row).strip():
            continue
        where = f"line {line_number}"
        if len(row) < 2:
            raise PriceFormatError(f"{where}: expected start,price")
        try:
            moment = dt.datetime.fromisoformat(row[0].strip())
        except ValueError:
            raise PriceFormatError(f"{where}: {row[0]!r} is not a date and time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=tz)
        points.append((moment.astimezone(dt.timezone.utc), _decimal(row[1], where)))
    if not points:
        raise PriceFormatError("the file has no prices")
    return intervals(points)


def intervals(points: Iterable[tuple[dt.datetime, Decimal]]) -> list[MarketPrice]:
    """Prices given only by their starts: the interval is the smallest step between two starts
    (15 or 60 minutes; an hour when there is one price)."""
    ordered = sorted(points)
    steps = {int((b[0] - a[0]).total_seconds()) for a, b in itertools.pairwise(ordered)}
    if 0 in steps:
        raise PriceFormatError("a start is given twice")
    seconds = min(steps) if steps else 3600
    if seconds not in (900, 3600) or any(step % seconds for step in steps):
        raise PriceFormatError(f"expected prices every 15 or 60 minutes, found a step of {seconds // 60} minutes")
    return [MarketPrice(start, seconds, price) for start, price in ordered]


def finest(prices: list[MarketPrice]) -> list[MarketPrice]:
    """Where a document prices the same time at two resolutions (ENTSO-E publishes both during the
    move to 15 minutes), keep the finer one."""
    taken: set[dt.datetime] = set()
    kept = []
    for price in sorted(prices, key=lambda p: (p.seconds, p.start)):
        quarters = quarter_starts(price)
        if taken.isdisjoint(quarters):
            taken.update(quarters)
            kept.append(price)
    return sorted(kept, key=lambda p: p.start)


def quarter_starts(price: MarketPrice) -> list[dt.datetime]:
    return [price.start + QUARTER * i for i in range(price.seconds // 900)]


def check_price(price: MarketPrice, where: str) -> None:
    """A price must start on a quarter hour (the unit costs are computed in) and be a sane amount."""
    if price.start.minute % 15 or price.start.second or price.start.microsecond:
        raise PriceFormatError(f"{where}: {price.start:%Y-%m-%dT%H:%M:%SZ} does not start on a quarter hour")
    if abs(price.price) >= MAX_PRICE:
        raise PriceFormatError(f"{where}: {price.price} EUR/kWh is not a day-ahead price (EUR/MWh given as EUR/kWh?)")
