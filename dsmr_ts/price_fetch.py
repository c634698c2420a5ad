"""The daily fetch of day-ahead prices (config `price_fetch`): a job of `dsmr-ts run` from the
configured time, hourly until tomorrow's prices are stored, and `dsmr-ts prices fetch` once.

The URL may hold {start} and {end} (UTC, yyyyMMddHHmm: today's local start to two days later, as
ENTSO-E's API takes them) and {token} (read from token_file). The token never reaches a log or an
error message: what is shown of the URL has it replaced by ***.
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.error
import urllib.request

from dsmr_ts import __version__
from dsmr_ts.config import Config, ConfigError, read_secret_file
from dsmr_ts.datetimes import day_start
from dsmr_ts.influx.client import StoreUnavailable
from dsmr_ts.influx.prices import StoredPrices
from dsmr_ts.influx.store import Store
from dsmr_ts.price_formats import PriceFormatError, check_price, parse_prices

log = logging.getLogger(__name__)
MAX_BYTES = 10 * 1024 * 1024  # a few days of prices are tens of kB


class PriceFetchError(Exception):
    pass


class PriceFetch:
    def __init__(self, config: Config, store: Store, clock: dt.datetime | None = None):
        self.config = config
        self.settings = config.price_fetch
        self.store = store
        self._now = clock

    def now(self) -> dt.datetime:
        return self._now or dt.datetime.now(dt.timezone.utc)

    def url(self, token: str) -> str:
        today = self.now().astimezone(self.config.tz).date()
        start, end = day_start(today, self.config.tz), day_start(today, self.config.tz, 2)
        return self.settings.url.format(
            start=start.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M"),
            end=end.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M"),
            token=token,
        )

    def fetch(self) -> tuple[str, StoredPrices]:
        """Fetch and store the prices once: (area, what was stored). PriceFetchError says why not."""
        token = ""
        if self.settings.token_file:
            try:
                token = read_secret_file(self.config.resolve_path(self.settings.token_file), "the price fetch token")
            except ConfigError as exc:
                raise PriceFetchError(str(exc)) from None
            if not token:
                raise PriceFetchError(f"{self.settings.token_file} is empty or missing")
        url = self.url(token)
        shown = url.replace(token, "***") if token else url
        request = urllib.request.Request(url, headers={"User-Agent": f"dsmr-ts/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                data = response.read(MAX_BYTES + 1)
        except urllib.error.HTTPError as exc:
            body = exc.read(MAX_BYTES)
            try:  # ENTSO-E explains a refusal in an Acknowledgement document
                parse_prices(body, self.config.tz)
            except PriceFormatError as refusal:
                raise PriceFetchError(f"{shown} answered HTTP {exc.code}: {refusal}") from None
            raise PriceFetchError(f"{shown} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise PriceFetchError(f"{shown}: {str(cause).replace(token, '***') if token else cause}") from None
        if len(data) > MAX_BYTES:
            raise PriceFetchError(f"{shown} answered more than {MAX_BYTES // 1024 // 1024} MB")
        try:
            named, prices = parse_prices(data, self.config.tz)
            for number, price in enumerate(prices, 1):
                check_price(price, f"price {number}")
        except (PriceFormatError, UnicodeDecodeError) as exc:
            raise PriceFetchError(f"{shown}: {exc}") from None
        area = self.settings.area or named or self._contract_area()
        if not area:
            raise PriceFetchError(f"{shown}: the answer does not name its market area; set price_fetch.area")
        try:
            return area, self.store.prices.store(area, prices)
        except StoreUnavailable as exc:
            raise PriceFetchError(f"storing the prices: {exc}") from None

    def _contract_area(self) -> str:
        areas = [period.dynamic.area for period in self.config.prices if period.dynamic]
        return areas[-1] if areas else ""

    def tomorrow_priced(self) -> bool:
        """Whether the last quarter hour of tomorrow (local) has a price already."""
        area = self.settings.area or self._contract_area()
        if not area:
            return False
        today = self.now().astimezone(self.config.tz).date()
        last_quarter = day_start(today, self.config.tz, 2) - dt.timedelta(minutes=15)
        return self.store.prices.at(area, last_quarter) is not None

    def run(self) -> None:
        """The scheduled job: one line in the log, whatever happens; never raises."""
        try:
            if self.tomorrow_priced():
                return
            area, stored = self.fetch()
        except (PriceFetchError, StoreUnavailable) as exc:
            log.warning("price fetch failed (next try in an hour): %s", exc)
            return
        log.info("price fetch: %s, %d prices stored, %d unchanged", area, stored.stored, stored.unchanged)
