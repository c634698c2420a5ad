"""dsmr-ts's own energy page (GET /) and the read-only data it shows (GET /web/data/...).

Served by the API process beside the API, read-only, whether or not api.enabled is on: the page is
not the write API. With web.require_key the page asks for the API key once (POST /web/login) and
keeps a cookie derived from it (HttpOnly, SameSite=Strict: never the key itself, never readable by
the page's script, never in a URL); the data answers 403 without it (or without the key in
X-AUTHKEY). The page, its script and its style are files of the package and nothing is asked of
another origin: its Content-Security-Policy of 'self' says so to the browser.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from decimal import Decimal
from importlib import resources
from typing import Any

import falcon

from dsmr_ts import costs
from dsmr_ts.config import WebConfig
from dsmr_ts.datetimes import day_start, local_midnight
from dsmr_ts.formats import datetime_string, decimal_string, exact, money, unit_price
from dsmr_ts.influx.lineprotocol import DAY_MEASUREMENT
from dsmr_ts.resources.access import FailedKeys, key_matches, presented_keys
from dsmr_ts.resources.application import MonitoringResource
from dsmr_ts.resources.consumption import TARIFF_NAMES
from dsmr_ts.resources.context import ApiContext
from dsmr_ts.resources.errors import ValidationFailed
from dsmr_ts.resources.forms import read_fields
from dsmr_ts.resources.validation import FieldError, parse_date
from dsmr_ts.tariffs import capacity_cost, delivered_price

PAGE_FILES = resources.files("dsmr_ts") / "web"
COOKIE = "dsmr_ts_page"
STALE_AFTER = dt.timedelta(minutes=1)  # no reading for a minute: the live numbers are shown as stale
QUARTER = dt.timedelta(minutes=15)
# Everything from this origin only: no inline script or style, nothing fetched elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def page_cookie(key: str) -> str:
    """The cookie that stands for the key: an HMAC of it, so the key itself never travels again."""
    return hmac.new(key.encode(), b"dsmr-ts energy page", hashlib.sha256).hexdigest()


class WebAccess:
    """Who may read the page's data: anyone (web.require_key false), else a client with the
    page's cookie or the key in a header. Wrong keys count towards the API's lock-out too."""

    def __init__(self, settings: WebConfig, key: str, failed: FailedKeys):
        self.settings = settings
        self.key = key
        self.failed = failed

    def check(self, req: falcon.Request) -> None:
        if not self.settings.require_key:
            return
        cookie = req.cookies.get(COOKIE)
        if cookie and hmac.compare_digest(cookie, page_cookie(self.key)):
            return
        if any([key_matches(key, self.key) for key in presented_keys(req)]):
            return
        raise falcon.HTTPForbidden(description="This page needs the API key.")


class PageResource:
    """GET /: the page (GET /web/static/... serves its script and style)."""

    auth_exempt = True  # the page is not the API: web.require_key decides (for its data)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.set_header("Content-Security-Policy", CSP)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.set_header("Cache-Control", "no-cache")
        resp.text = (PAGE_FILES / "index.html").read_text(encoding="utf-8")


class LoginResource:
    """POST /web/login: the API key, once; answers with the page's cookie (204), or 403."""

    auth_exempt = True

    def __init__(self, access: WebAccess, trust_forwarded: bool):
        self.access = access
        self.trust_forwarded = trust_forwarded

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        client = req.access_route[0] if self.trust_forwarded and req.access_route else req.remote_addr
        wait = self.access.failed.retry_after(client)
        if wait:
            resp.set_header("Retry-After", str(wait))
            raise falcon.HTTPTooManyRequests(description=f"Too many wrong keys; try again in {wait} s")
        given = read_fields(req).get("key")
        if not isinstance(given, str) or not key_matches(given, self.access.key):
            if given:
                self.access.failed.failed(client)
            raise falcon.HTTPForbidden(description="Invalid auth key")
        resp.set_cookie(
            COOKIE,
            page_cookie(self.access.key),
            http_only=True,
            same_site="Strict",
            secure=req.scheme == "https",
            path="/",
            max_age=400 * 86400,
        )
        resp.status = falcon.HTTP_204


class _DataResource:
    auth_exempt = True  # the page's data is not the API: WebAccess decides

    def __init__(self, context: ApiContext, access: WebAccess):
        self.context = context
        self.store = context.store
        self.tz = context.tz
        self.access = access

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.access.check(req)
        resp.set_header("Cache-Control", "no-store")
        resp.media = self.data(req, self.context.meter(req))

    def data(self, req: falcon.Request, meter: str) -> dict[str, Any]:
        raise NotImplementedError

    def _date(self, req: falcon.Request, name: str, default: dt.date) -> dt.date:
        """?day=YYYY-MM-DD or ?month=YYYY-MM (its first day) within 1970..2199; empty: `default`."""
        raw = req.get_param(name)
        if not raw:
            return default
        try:
            found = parse_date(raw if name == "day" else raw + "-01")
        except FieldError:
            found = None
        if found is None or not 1970 <= found.year <= 2199:
            raise ValidationFailed({name: ["Enter a valid date from 1970 to 2199."]})
        return found

    def _today(self) -> dt.date:
        return dt.datetime.now(self.tz).date()

    def _days(self, meter: str, first: dt.date, last: dt.date) -> list[dict[str, Any]]:
        """The day statistics of [first, last] with their costs (as statistics/day shows them)."""
        fields = (*costs.USAGE, *costs.COSTS, "fixed_cost", costs.UNPRICED)
        _, rows = self.store.statistics.page(
            DAY_MEASUREMENT, meter, day_start(first, self.tz), day_start(last, self.tz, 1), 0, 400, False, fields
        )
        days = []
        for row in rows:
            day = row["_time"].astimezone(self.tz).date()
            days.append(
                {
                    "day": day,
                    **{name: row.get(name) for name in costs.USAGE},
                    **costs.stored_or_computed_costs(row, day, self.context.prices),
                }
            )
        return days


class MetersResource(_DataResource):
    """GET /web/data/meters: the meter picker (configured names stand for their ids), the default
    meter and the time zone the page shows."""

    def data(self, req: falcon.Request, meter: str) -> dict[str, Any]:
        named = {one for ids in self.store.client.meter_names.values() for one in ids}
        meters = sorted({*self.store.client.meter_names, *(m for m in self.store.meters.all() if m not in named)})
        return {"meters": meters, "default": self.store.meters.default(), "timezone": str(self.tz)}


class LiveResource(_DataResource):
    """GET /web/data/live: power now (per phase when the meter sends it), the tariff and what power
    costs per hour, the running quarter hour's average and the month's highest quarter."""

    def data(self, req: falcon.Request, meter: str) -> dict[str, Any]:
        now = dt.datetime.now(dt.timezone.utc)
        latest = self.store.readings.latest(meter)
        if latest is None:
            return {"meter": meter, "timestamp": None, "stale": True}
        delivered = latest.get("electricity_currently_delivered") or 0.0
        returned = latest.get("electricity_currently_returned") or 0.0
        tariff = self.store.meters.statistics(meter).get("electricity_tariff")
        price, market = self.context.live_price(now)
        phases = {
            f"{way}_l{n}": round(value * 1000)
            for way in ("delivered", "returned")
            for n in (1, 2, 3)
            if (value := latest.get(f"phase_currently_{way}_l{n}")) is not None
        }
        month_start = day_start(now.astimezone(self.tz).date().replace(day=1), self.tz)
        _, peaks = self.store.statistics.quarters(meter, month_start, None, 0, 1, by_average=True, descending=True)
        return {
            "meter": meter,
            "timestamp": datetime_string(min(latest["_time"], now)),
            "stale": now - latest["_time"] > STALE_AFTER,
            "delivered": round(delivered * 1000),  # W
            "returned": round(returned * 1000),
            "phases": phases,
            "tariff": TARIFF_NAMES.get(tariff) if isinstance(tariff, int) else None,
            "cost_per_hour": costs.cost_per_hour(delivered, returned, tariff, price, market),
            "price": unit_price(delivered_price(price.dynamic, market.price))
            if price and price.dynamic and market
            else None,
            "quarter_average": self._quarter_average(meter, latest, now),
            "month_peak": {
                "average": decimal_string(peaks[0]["average_delivered"], 3),
                "start": datetime_string(peaks[0]["read_at_start"]),
            }
            if peaks
            else None,
            # Belgium's capacity tariff on the month's highest quarter so far (null without one).
            "capacity_cost": money(
                capacity_cost(exact(peaks[0]["average_delivered"]) if peaks else None, exact(price.capacity_tariff))
            )
            if price and price.capacity_tariff
            else None,
        }

    def _quarter_average(self, meter: str, latest: dict[str, Any], now: dt.datetime) -> str | None:
        """The running quarter hour's average power so far (kW), as its peak will be computed."""
        start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
        first = self.store.readings.latest(meter, after=start, first=True)
        if first is None or latest["_time"] <= first["_time"]:
            return None
        seconds = (latest["_time"] - first["_time"]).total_seconds()
        used = sum(
            exact(latest.get(f) or 0.0) - exact(first.get(f) or 0.0)
            for f in ("electricity_delivered_1", "electricity_delivered_2")
        )
        return decimal_string(float(max(used, Decimal(0)) * 3600 / Decimal(seconds)), 3)


class SummaryResource(_DataResource):
    """GET /web/data/summary: today (live) beside yesterday, this month and this year, and the
    problems monitoring reports."""

    def __init__(self, context: ApiContext, access: WebAccess, monitoring: MonitoringResource):
        super().__init__(context, access)
        self.monitoring = monitoring

    def data(self, req: falcon.Request, meter: str) -> dict[str, Any]:
        now = dt.datetime.now(dt.timezone.utc)
        today_date = now.astimezone(self.tz).date()
        live = self.store.totals.today(meter, now, self.tz, self.context.prices)
        yesterday = self._days(meter, today_date - dt.timedelta(days=1), today_date - dt.timedelta(days=1))
        month = self.store.totals.period(meter, today_date.replace(day=1), live, self.tz, self.context.prices)
        year = self.store.totals.period(meter, today_date.replace(month=1, day=1), live, self.tz, self.context.prices)
        return {
            "meter": meter,
            "day": today_date.isoformat(),
            "today": _usage_json(live.usage, live.costs) if live else None,
            "water_today": self._water_today(meter, now),
            "yesterday": _usage_json(yesterday[0], yesterday[0]) if yesterday else None,
            "month": _sums_json(month),
            "year": _sums_json(year),
            "problems": [
                {"source": source, "description": text, "since": datetime_string(since)}
                for source, text, since in self.monitoring.problems(meter)
            ],
        }

    def _water_today(self, meter: str, now: dt.datetime) -> str | None:
        latest = self.store.readings.latest(meter)
        before = self.store.readings.latest(meter, before=local_midnight(now, self.tz))
        if not latest or not before or latest.get("water_delivered") is None or before.get("water_delivered") is None:
            return None
        return decimal_string(max(0.0, latest["water_delivered"] - before["water_delivered"]), 3)


class PowerResource(_DataResource):
    """GET /web/data/power?day=YYYY-MM-DD: a local day of mean power per minute (kW)."""

    def data(self, req: falcon.Request, meter: str) -> dict[str, Any]:
        day = self._date(req, "day", self._today())
        minutes = self.store.readings.minute_power(meter, day_start(day, self.tz), day_start(day, self.tz, 1))
        return {
            "meter": meter,
            "day": day.isoformat(),
            "minutes": [[t, round(d, 3), round(r, 3)] for t, d, r in minutes],
        }


class DaysResource(_DataResource):
    """GET /web/data/days?month=YYYY-MM: the days of a month (usage, return, gas, costs)."""

    def data(self, req: falcon.Request, meter: str) -> dict[str, Any]:
        first = self._date(req, "month", self._today()).replace(day=1)
        last = (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
        days = self._days(meter, first, last)
        return {
            "meter": meter,
            "month": first.isoformat()[:7],
            "days": [{"day": d["day"].isoformat(), **_usage_json(d, d)} for d in days],
        }


class MonthsResource(_DataResource):
    """GET /web/data/months?year=YYYY: the months of a year, summed from their days."""

    def data(self, req: falcon.Request, meter: str) -> dict[str, Any]:
        raw = req.get_param("year")
        year = self._today().year
        if raw:
            if not (re.fullmatch(r"[0-9]{4}", raw) and 1970 <= int(raw) <= 2199):
                raise ValidationFailed({"year": ["Enter a year from 1970 to 2199."]})
            year = int(raw)
        months: dict[int, dict[str, Decimal]] = {}
        for day in self._days(meter, dt.date(year, 1, 1), dt.date(year, 12, 31)):
            sums = months.setdefault(day["day"].month, {name: Decimal(0) for name in (*costs.USAGE, "total_cost")})
            for name in sums:
                sums[name] += exact(float(day[name] or 0))
        return {
            "meter": meter,
            "year": year,
            "months": [{"month": f"{year}-{month:02d}", **_sums_json(sums)} for month, sums in sorted(months.items())],
        }


class PeaksResource(_DataResource):
    """GET /web/data/peaks?month=YYYY-MM: the quarter-hour peaks of a month (kW), in time order."""

    def data(self, req: falcon.Request, meter: str) -> dict[str, Any]:
        first = self._date(req, "month", self._today()).replace(day=1)
        following = (first + dt.timedelta(days=32)).replace(day=1)
        start, stop = day_start(first, self.tz), day_start(following, self.tz)
        _, rows = self.store.statistics.quarters(meter, start, stop - dt.timedelta(seconds=1), 0, 3100, False, False)
        return {
            "meter": meter,
            "month": first.isoformat()[:7],
            "quarters": [[int(r["_time"].timestamp()), round(r["average_delivered"], 3)] for r in rows],
        }


def _usage_json(usage: dict[str, Any], day_costs: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = {name: decimal_string(float(usage.get(name) or 0), 3) for name in costs.USAGE}
    shown.update({name: day_costs.get(name) for name in costs.COSTS})
    return shown


def _sums_json(sums: dict[str, Decimal]) -> dict[str, Any]:
    return {
        name: (money(value) if name.endswith("cost") else decimal_string(float(value), 3))
        for name, value in sums.items()
    }
