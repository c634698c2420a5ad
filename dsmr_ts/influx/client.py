"""The connection to influxd: line-protocol writes and InfluxQL reads over plain keep-alive HTTP
(the hot paths), Flux through influxdb-client (statistics), and one error type for all of them.

Why InfluxQL for reads: the API pages through readings, and InfluxQL's LIMIT/OFFSET stop reading
at the page, where Flux reads the whole range before `limit`; its rows also come back pivoted
(one row per reading). Figures: benchmarks/README.md. InfluxDB 2 serves it on
/query through the buckets' automatic DBRP mappings (database = bucket name). Flux stays what
computes statistics (the InfluxDB tasks and their Python twin).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import logging
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Iterator

import msgpack
from influxdb_client import InfluxDBClient
from influxdb_client.client.exceptions import InfluxDBError
from urllib3.exceptions import HTTPError

from dsmr_ts.config import InfluxConfig

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """InfluxDB could not be reached or refused the request (the caller answers 503).

    `summary` is short and fit for a client; str() adds InfluxDB's own message for the log."""

    def __init__(self, summary: str, detail: str = ""):
        super().__init__(f"{summary}: {detail}" if detail else summary)
        self.summary = summary


def out_of_space(exc: StoreUnavailable) -> bool:
    """Whether influxd refused for lack of disk space: ENOSPC itself, or a shard (or its series
    file) it could not open or grow, which it then refuses until it restarts."""
    text = str(exc).lower()
    return "no space left" in text or "previously failed" in text


# InfluxDB times are int64 nanoseconds (1677..2262) and its integers int64. No reading is outside
# 1970..2200, so clamping a client's extreme date or offset there changes no answer, and keeps
# `day__gte=0854-04-07` or `offset=10**22` from becoming an InfluxDB error.
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc)
_INT_LIMIT = 2**62


def clamp(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return min(max(value, EARLIEST), LATEST)
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, -_INT_LIMIT), _INT_LIMIT)
    return value


def ns(moment: dt.datetime) -> int:
    """A time as InfluxQL wants it in a WHERE clause: integer nanoseconds (exact to the microsecond)."""
    return (clamp(moment) - EARLIEST) // dt.timedelta(microseconds=1) * 1000


def quote(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ident(name: str) -> str:
    """An InfluxQL identifier (bucket, measurement, field)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Series:
    """One InfluxQL result series: columns and rows (time in Unix seconds)."""

    def __init__(self, raw: dict):
        self.columns: list[str] = raw.get("columns", [])
        self.values: list[list[Any]] = raw.get("values", [])
        self.tags: dict[str, str] = raw.get("tags", {})

    def rows(self) -> Iterator[dict[str, Any]]:
        for values in self.values:
            yield dict(zip(self.columns, values))


class InfluxClient:
    """One per process; thread-safe (each thread keeps its own keep-alive HTTP connection).

    `meters` (config `meters`): a name for a meter and its replacements, equipment ids oldest
    first. Readings are stored under their equipment id; a query for the name reads all of them."""

    def __init__(
        self, settings: InfluxConfig, timeout_ms: int = 30_000, meters: Mapping[str, Sequence[str]] | None = None
    ):
        self.settings = settings
        self.meter_names = {name: tuple(ids) for name, ids in (meters or {}).items() if ids}
        self.timeout = timeout_ms / 1000
        url = urllib.parse.urlsplit(settings.url)
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname or "127.0.0.1", url.port or (443 if self._https else 8086)
        self._prefix = url.path.rstrip("/")
        self._local = threading.local()
        self._flux_client: InfluxDBClient | None = None
        self._lock = threading.Lock()

    # --- meters --------------------------------------------------------------------------------------

    def meter_ids(self, meter: str) -> tuple[str, ...]:
        """The equipment ids a meter stands for, oldest first: a configured name's, else itself."""
        return self.meter_names.get(meter, (meter,))

    def meter_is(self, meter: str) -> str:
        """InfluxQL condition: the points of a meter (all the ids of a configured name)."""
        ids = self.meter_ids(meter)
        if len(ids) == 1:
            return f"meter = {quote(ids[0])}"
        return "(" + " OR ".join(f"meter = {quote(one)}" for one in ids) + ")"

    def meter_between(self, meter: str, start: dt.datetime, stop: dt.datetime) -> str:
        """The WHERE clause of a meter's points in [start, stop)."""
        return f"WHERE {self.meter_is(meter)} AND time >= {ns(start)} AND time < {ns(stop)}"

    # --- plain HTTP --------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = self._local.connection = cls(self._host, self._port, timeout=self.timeout)
        return connection

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """(status, body); StoreUnavailable when influxd cannot be reached. A kept-alive connection
        that influxd closed meanwhile is reopened once."""
        headers = {"Authorization": f"Token {self.settings.token}", **(headers or {})}
        for attempt in (1, 2):
            connection = self._connection()
            try:
                connection.request(method, self._prefix + path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop_connection()
                if attempt == 2:
                    raise StoreUnavailable(f"InfluxDB unreachable ({exc.__class__.__name__})") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                raise StoreUnavailable(f"InfluxDB unreachable ({exc.__class__.__name__})") from None
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def exchange(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 3600
    ) -> Iterator[http.client.HTTPResponse]:
        """One request on a connection of its own, its response read by the caller as it streams
        (a backup's shards, a restore's uploads: too large to hold in memory). StoreUnavailable
        when influxd cannot be reached."""
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = cls(self._host, self._port, timeout=timeout)
        headers = {"Authorization": f"Token {self.settings.token}", **(headers or {})}
        try:
            try:
                connection.request(method, self._prefix + path, body=body, headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise StoreUnavailable(f"InfluxDB unreachable ({exc.__class__.__name__})") from None
            yield response
        finally:
            connection.close()

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def write(self, body: str | bytes, bucket: str | None = None) -> None:
        """One synchronous write (204: every point is in the WAL). A parse error stores nothing."""
        if isinstance(body, str):
            body = body.encode()
        query = urllib.parse.urlencode(
            {"org": self.settings.org, "bucket": bucket or self.settings.bucket, "precision": "ns"}
        )
        status, answer = self.request(
            "POST", f"/api/v2/write?{query}", body, {"Content-Type": "text/plain; charset=utf-8"}
        )
        if status != 204:
            raise StoreUnavailable(f"InfluxDB answered HTTP {status}", _message(answer))

    def influxql(self, statements: list[str], bucket: str | None = None) -> list[list[Series]]:
        """Run InfluxQL statements in one request; one list of series per statement."""
        query = urllib.parse.urlencode({"db": bucket or self.settings.bucket, "q": ";".join(statements), "epoch": "s"})
        # MessagePack, not JSON: cheaper for influxd to encode and for Python to parse (the v1
        # compatibility API documents both; figures in benchmarks/README.md).
        status, answer = self.request("GET", f"/query?{query}", headers={"Accept": "application/x-msgpack"})
        if status != 200:
            raise StoreUnavailable(f"InfluxDB answered HTTP {status}", _message(answer))
        decoded = json.loads(answer) if answer[:1] == b"{" else msgpack.unpackb(answer)
        if "error" in decoded:
            raise StoreUnavailable("InfluxDB refused a query", str(decoded["error"]))
        results = decoded.get("results", [])
        out: list[list[Series]] = []
        for result in results:
            if "error" in result:
                raise StoreUnavailable("InfluxDB refused a query", str(result["error"]))
            out.append([Series(series) for series in result.get("series", [])])
        if len(out) != len(statements):
            raise StoreUnavailable("InfluxDB answered a query only in part")
        return out

    def in_stats(self, measurement: str) -> str:
        """An InfluxQL measurement in the statistics bucket (queries run against the readings bucket)."""
        return f'{ident(self.settings.stats_bucket)}."autogen".{ident(measurement)}'

    def ok(self) -> tuple[str, str]:
        """("ok" | "unreachable" | "unauthorized", what an operator should know)."""
        try:
            status, _ = self.request("GET", "/ping")
            if status != 204:
                return "unreachable", f"InfluxDB answered HTTP {status} to /ping"
            query = urllib.parse.urlencode({"name": self.settings.bucket})
            status, _ = self.request("GET", f"/api/v2/buckets?{query}")
        except StoreUnavailable:
            return "unreachable", f"InfluxDB does not answer at {self.settings.url}"
        if status in (401, 403):
            return "unauthorized", f"InfluxDB refused influxdb.token (HTTP {status}); run `dsmr-ts setup` to replace it"
        if status != 200:
            return "unreachable", f"InfluxDB answered HTTP {status}"
        return "ok", ""

    # --- Flux (influxdb-client) ------------------------------------------------------------------

    @property
    def flux_client(self) -> InfluxDBClient:
        with self._lock:
            if self._flux_client is None:
                self._flux_client = InfluxDBClient(
                    url=self.settings.url,
                    token=self.settings.token,
                    org=self.settings.org,
                    timeout=int(self.timeout * 1000),
                )
            return self._flux_client

    def flux(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run Flux with `bucket`, `stats` and the params as extern variables; rows as plain dicts."""
        with store_errors():
            tables = self.flux_client.query_api().query(query, org=self.settings.org, params=self._params(params or {}))
        return [record.values for table in tables for record in table.records]

    def _params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "bucket": self.settings.bucket,
            "stats": self.settings.stats_bucket,
            **{name: clamp(value) for name, value in params.items()},
        }

    def close(self) -> None:
        self._drop_connection()
        if self._flux_client is not None:
            self._flux_client.close()


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """influxdb-client and network failures become StoreUnavailable (secret-free: no token, no key)."""
    try:
        yield
    except (InfluxDBError, HTTPError, OSError) as exc:
        status = getattr(exc, "status", None) or getattr(getattr(exc, "response", None), "status", None)
        if not status:
            raise StoreUnavailable(f"InfluxDB unreachable ({exc.__class__.__name__})") from None
        raise StoreUnavailable(f"InfluxDB answered HTTP {status}", _message(getattr(exc, "body", None))) from None


def _message(body: bytes | str | None) -> str:
    """InfluxDB's own error text from an error response, if any."""
    try:
        return str(json.loads(body)["message"]) if body else ""
    except (ValueError, KeyError, TypeError):
        return ""
