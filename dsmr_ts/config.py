"""YAML configuration: load, environment overrides, validation, and persisted secrets.

The schema is the dataclasses below: a YAML key that is not a field is an error,
and every value is checked against its field's type. Errors are ConfigError with a
single line naming the file, the key and what is wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import functools
import json
import os
import re
import secrets
import string
import tempfile
import types
import typing
import urllib.parse
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "DSMR_TS_"
# The documented config a first start writes: config/dsmr-ts.example.yaml, in the package as a
# symlink to it (an installed package holds a copy).
EXAMPLE_PATH = Path(__file__).parent / "dsmr-ts.example.yaml"
KEY_ALPHABET = string.ascii_uppercase + string.digits
KEY_LENGTH = 64
DSMR_VERSIONS = ("2.2", "3", "4", "5", "fluvius", "smarty", "iskra_ie", "eon_hu", "sweden", "q3d")


class ConfigError(Exception):
    """A configuration problem a person can fix; str() is one line."""


@dataclass
class ApiConfig:
    enabled: bool = False
    key: str = ""
    # Datetimes out in UTC with Z (as documented); true: in `timezone` with its offset (as DSMR-reader v5).
    local_datetimes: bool = False
    # GET /metrics without the key (for a Prometheus on a trusted network).
    metrics_public: bool = False
    # Wrong keys a client may send within a minute before it is locked out for the rest of that
    # minute (429); 0: never. Raise it when many clients share one address (a proxy not trusted).
    wrong_keys_per_minute: int = 10


@dataclass
class ServerConfig:
    bind: str = "127.0.0.1:7777"
    workers: int = 2
    trust_forwarded_headers: bool = False
    # gunicorn's control socket (gunicornc), kept with this install's data so two never share one.
    control_socket: str = "./data/gunicorn.ctl"
    # One log line per request (gunicorn's access log). Off: at thousands of telegrams a second it
    # costs CPU and says little that /metrics does not (nginx logs requests anyway).
    access_log: bool = False


@dataclass
class InfluxConfig:
    managed: bool = True
    data_dir: str = "./data/influxdb"
    # Less free space than this on data_dir's disk is a monitoring problem (managed influxd only):
    # on a full disk influxd refuses writes (answered 503, the reader spools).
    min_free_percent: float = 5.0
    url: str = "http://127.0.0.1:8086"
    org: str = "dsmr"
    bucket: str = "dsmr"
    stats_bucket: str = "dsmr_stats"
    # Used by the API and the reader: read/write on the two buckets only (created by setup).
    token: str = ""
    # The all-access operator token, for `dsmr-ts setup` alone: kept in admin_token_file (0600),
    # never in this file, which every API worker reads. admin_token (or DSMR_TS_INFLUXDB_ADMIN_TOKEN)
    # hands setup one of your own; setup then moves it from this file into admin_token_file.
    admin_token: str = ""
    admin_token_file: str = "./data/influxdb-admin-token"
    # Grafana's token: read-only on the two buckets, created by setup.
    grafana_token_file: str = "./data/grafana-influxdb-token"


@dataclass
class ForwardTarget:
    url: str = ""
    key: str = ""
    key_file: str = ""  # or the key in a file of its own (0600), e.g. a docker or systemd secret


@dataclass
class ReaderConfig:
    enabled: bool = True
    port: str | None = None
    dsmr_version: str = "5"
    forward: list[ForwardTarget] = field(default_factory=list)
    # Overrides of the serial settings that dsmr_version picks (baudrate, bytesize, parity, ...).
    serial: dict[str, Any] = field(default_factory=dict)
    spool_dir: str = "./data/spool"
    spool_max_bytes: int = 256 * 1024 * 1024
    # Encrypted telegrams (Luxembourg's Smarty): the meter's key from the grid operator (32 hex
    # characters); the authentication key only when the operator gives one (else the spec's).
    decryption_key: str = ""
    authentication_key: str = ""


@dataclass
class WebConfig:
    # dsmr-ts's own energy page at / (read-only; there whether or not api.enabled is on).
    enabled: bool = True
    # Ask for the API key once (kept in an HttpOnly cookie); the page's data answers 403 without it.
    require_key: bool = False


@dataclass
class BackupConfig:
    # Every day at `time` (local, HH:MM) `dsmr-ts run` makes a backup in `dir` (dsmr-ts backup's)
    # and keeps the newest `keep`; `command` (optional) runs with the new backup's path as its last
    # argument, to copy it off the machine (e.g. rsync -a, or rclone copy ... with a remote).
    enabled: bool = True
    dir: str = "./data/backups"
    time: str = "03:30"
    keep: int = 7
    command: str = ""


@dataclass
class PriceFetchConfig:
    # Every day from `time` (local, HH:MM) `dsmr-ts run` fetches the day-ahead prices from `url`
    # (ENTSO-E's API, or any URL answering a format `dsmr-ts prices import` reads), hourly until
    # tomorrow's are stored. In the URL: {start} and {end} (UTC, yyyyMMddHHmm: today's local start
    # to two days later) and {token} (the contents of token_file; it never appears in a log).
    enabled: bool = False
    url: str = ""
    token_file: str = ""
    area: str = ""  # default: the area the document names, else the dynamic contract's
    time: str = "13:30"  # ENTSO-E publishes tomorrow's prices around 13:00 CET


MQTT_SOURCES = (
    "raw",
    "json",
    "reading",
    "day",
    "period",
    "meter_stats",
    "gas",
    "quarter_hour_peaks",
    "prices",
    "discovery",
)
MQTT_TLS = ("off", "verify", "insecure")


@dataclass
class MqttConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = ""
    # off; verify (the broker's certificate against ca_file, or the system's CAs); insecure (no check).
    tls: str = "off"
    ca_file: str = ""
    client_id: str = ""  # default: dsmr-ts-<host name>
    qos: int = 2
    prefix: str = "dsmr"
    # What HA's dsmr_reader integration reads; add raw, json and discovery as you like.
    publish: list[str] = field(
        default_factory=lambda: ["reading", "day", "period", "meter_stats", "gas", "quarter_hour_peaks", "prices"]
    )
    discovery_prefix: str = "homeassistant"
    local_datetimes: bool = False  # datetimes in payloads: UTC (as DSMR-reader) or in `timezone`
    # Messages wait on disk while the broker is away; over this many the older messages of a topic go first.
    outbox_max_messages: int = 100_000


@dataclass
class DynamicContract:
    """A dynamic contract: the market price of each interval (15 or 60 minutes) plus the supplier's
    markup and the energy tax, with VAT on top; returned energy at the market price plus its own
    markup (or, with netting, at the delivered all-in price of the same interval)."""

    area: str = ""  # whose market prices: the area given when prices are imported or posted
    markup: float = 0.0  # EUR/kWh on delivered energy, before VAT
    energy_tax: float = 0.0  # EUR/kWh, before VAT
    vat: float = 21.0  # percent
    export_markup: float = 0.0  # EUR/kWh added to the market price for returned energy
    netting: bool = False


@dataclass
class PricePeriod:
    start: dt.date = dt.date(2000, 1, 1)
    # A dynamic contract prices electricity per interval; the fixed electricity prices below are then unused.
    dynamic: DynamicContract | None = None
    electricity_delivered_1: float = 0.0
    electricity_delivered_2: float = 0.0
    electricity_returned_1: float = 0.0
    electricity_returned_2: float = 0.0
    gas: float = 0.0
    fixed_daily_cost: float = 0.0
    # EUR per kW per year on the month's highest quarter-hour average of delivered power (Belgium).
    capacity_tariff: float = 0.0


@dataclass
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    timezone: str = "Europe/Amsterdam"
    influxdb: InfluxConfig = field(default_factory=InfluxConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    web: WebConfig = field(default_factory=WebConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    price_fetch: PriceFetchConfig = field(default_factory=PriceFetchConfig)
    prices: list[PricePeriod] = field(default_factory=list)
    # A name for a meter and its replacements: the equipment ids, oldest first (`meter=NAME` reads them all).
    meters: dict[str, list[str]] = field(default_factory=dict)
    # Where the config came from; relative paths in it are relative to its folder.
    path: Path | None = field(default=None, compare=False)

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def resolve_path(self, value: str) -> Path:
        base = self.path.parent if self.path else Path.cwd()
        return (base / value).resolve()


# Fields that are part of the file format (path is runtime-only).
_SECTIONS = {f.name: f for f in dataclasses.fields(Config) if f.name != "path"}


def default_config_path() -> Path:
    return Path(os.environ.get("DSMR_TS_CONFIG") or "dsmr-ts.yaml")


def load_config(path: str | os.PathLike | None = None, *, create: bool = True) -> Config:
    """Read the YAML config, apply env overrides, validate.

    With create=True a missing file is created from the example, and a missing API key
    is generated and written into the file (comments and other keys are kept).
    """
    path = Path(path) if path is not None else default_config_path()
    if create:
        _ensure_file_with_key(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    if _holds_secrets(raw):
        check_private(path, "the config (it holds the API key and tokens)")
    _apply_env_overrides(raw, os.environ)
    mqtt = raw.get("mqtt")
    if isinstance(mqtt, dict) and isinstance(mqtt.get("tls"), bool):  # YAML reads tls: off / on as booleans
        mqtt["tls"] = "verify" if mqtt["tls"] else "off"
    problems = _Problems(raw, str(path))
    config = _build(Config, raw, problems, "")
    config.path = path.resolve()
    _check_semantics(config, problems)
    problems.raise_first()
    return config


def _apply_env_overrides(raw: dict, environ: os._Environ | dict) -> None:
    """DSMR_TS_<SECTION>_<KEY>=value (YAML-typed), DSMR_TS_TIMEZONE for top-level scalars."""
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "DSMR_TS_CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value  # not YAML: the text as it is (a key may contain ': ')
        if rest in _SECTIONS and not _is_section(rest):
            raw[rest] = parsed
            continue
        for section in _SECTIONS:
            if _is_section(section) and rest.startswith(section + "_"):
                sub = raw.get(section)
                if not isinstance(sub, dict):
                    sub = raw[section] = {}
                sub[rest[len(section) + 1 :]] = parsed
                break


def _is_section(name: str) -> bool:
    return dataclasses.is_dataclass(_hints(Config)[name])


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class _Problems:
    """Every mistake found, each at the position of its key in the file, so that the one reported
    is the first in file order: the same one every run, whatever order the checks run in."""

    def __init__(self, raw: dict, file: str):
        self.file = file
        self.positions = {path: index for index, path in enumerate(_key_paths(raw))}
        self.found: list[tuple[int, str]] = []

    def add(self, key: str, message: str) -> None:
        self.found.append((self._position(key), f"{self.file}: {key}: {message}"))

    def _position(self, key: str) -> int:
        while key:  # the key itself, else the nearest enclosing key that is in the file
            if key in self.positions:
                return self.positions[key]
            key = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", key) if re.search(r"[.\[]", key) else ""
        return len(self.positions)

    def raise_first(self) -> None:
        if self.found:
            raise ConfigError(min(self.found, key=lambda found: found[0])[1])


def _key_paths(raw: Any, prefix: str = "") -> list[str]:
    """Key paths in document order: 'server', 'server.bind', 'prices', 'prices[0]', 'prices[0].start'."""
    paths: list[str] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths += [path, *_key_paths(value, path)]
    elif isinstance(raw, list):
        for index, value in enumerate(raw):
            path = f"{prefix}[{index}]"
            paths += [path, *_key_paths(value, path)]
    return paths


class _Invalid(Exception):
    """A value that could not be read (already recorded in _Problems)."""


def _build(cls: type, raw: Any, problems: _Problems, prefix: str) -> Any:
    if not isinstance(raw, dict):
        problems.add(prefix.rstrip("."), f"expected a mapping, got {_show(raw)}")
        raise _Invalid
    known = [f.name for f in dataclasses.fields(cls) if f.name != "path"]
    values = {}
    for key, value in raw.items():  # file order
        if key not in known:
            problems.add(f"{prefix}{key}", f"unknown key (known: {', '.join(sorted(known))})")
            continue
        try:
            values[key] = _coerce(_hints(cls)[key], value, problems, f"{prefix}{key}")
        except _Invalid:
            continue  # the default stays; the problem is reported
    return cls(**values)


def _coerce(hint: Any, value: Any, problems: _Problems, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, problems, key + ".")
    if origin is list:
        if value is None:
            return []
        if not isinstance(value, list):
            return _invalid(problems, key, f"expected a list, got {_show(value)}")
        (item,) = typing.get_args(hint)
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_coerce(item, v, problems, f"{key}[{i}]"))
            except _Invalid:
                pass
        return items
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            return _invalid(problems, key, f"expected a mapping, got {_show(value)}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        return _invalid(problems, key, f"expected true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return _invalid(problems, key, f"expected a whole number, got {_show(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return _invalid(problems, key, f"expected a number, got {_show(value)}")
    if hint is dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        return _invalid(problems, key, f"expected a date like 2024-01-01, got {_show(value)}")
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        return _invalid(problems, key, f"expected text, got {_show(value)}")
    raise AssertionError(f"unsupported config type {hint!r}")  # a bug in the schema, not in the file


def _invalid(problems: _Problems, key: str, message: str) -> Any:
    problems.add(key, message)
    raise _Invalid


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


AREA = re.compile(r"[A-Z0-9][A-Z0-9_-]{0,31}")  # NL, BE, DE-LU, or an ENTSO-E EIC code


def _check_price_period(period: PricePeriod, key: str, problems: _Problems) -> None:
    if period.capacity_tariff < 0:
        problems.add(f"{key}.capacity_tariff", f"must be 0 or more (EUR per kW per year), got {period.capacity_tariff}")
    contract = period.dynamic
    if contract is None:
        return
    if not AREA.fullmatch(contract.area):
        problems.add(
            f"{key}.dynamic.area", f"name the market area of the prices (e.g. NL or BE), got {contract.area!r}"
        )
    if not 0 <= contract.vat <= 100:
        problems.add(f"{key}.dynamic.vat", f"expected a percentage from 0 to 100, got {contract.vat}")
    fixed = [name for name in FIXED_ELECTRICITY_PRICES if getattr(period, name)]
    if fixed:
        problems.add(
            f"{key}.{fixed[0]}", "a dynamic period prices electricity from the market prices; remove the fixed price"
        )


def _check_price_fetch(config: Config, problems: _Problems) -> None:
    fetch = config.price_fetch
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", fetch.time):
        problems.add("price_fetch.time", f"expected a local time HH:MM (e.g. 13:30), got {fetch.time!r}")
    if fetch.area and not AREA.fullmatch(fetch.area):
        problems.add("price_fetch.area", f"name the market area of the prices (e.g. NL or BE), got {fetch.area!r}")
    if not fetch.enabled:
        return
    if not re.match(r"https?://[^/]+", fetch.url):
        problems.add("price_fetch.url", f"expected an http:// or https:// URL, got {fetch.url!r}")
    if "{token}" in fetch.url and not fetch.token_file:
        problems.add("price_fetch.token_file", "the URL asks for {token}: name the file that holds it")


FIXED_ELECTRICITY_PRICES = (
    "electricity_delivered_1",
    "electricity_delivered_2",
    "electricity_returned_1",
    "electricity_returned_2",
)


def _check_semantics(config: Config, problems: _Problems) -> None:
    """Checks that go beyond types; each adds a problem (see _Problems for which one is reported)."""
    try:
        _ = config.tz
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.add("timezone", f"unknown time zone {config.timezone!r} (e.g. Europe/Amsterdam)")
    if config.api.key and not re.fullmatch(r"[\x21-\x7e]{32,256}", config.api.key):
        problems.add(
            "api.key",
            f"use 32 to 256 printable characters without spaces (got {len(config.api.key)}):"
            " a short key can be guessed; delete the line and a 64-character one is made",
        )
    if config.api.wrong_keys_per_minute < 0:
        problems.add(
            "api.wrong_keys_per_minute", f"must be 0 (never lock out) or more, got {config.api.wrong_keys_per_minute}"
        )
    if config.server.workers < 1:
        problems.add("server.workers", f"must be at least 1, got {config.server.workers}")
    bind_problem = _bind_problem(config.server.bind) or _same_port_as_influxd(config)
    if bind_problem:
        problems.add("server.bind", bind_problem)
    url_problem = _url_problem(config.influxdb.url, config.influxdb.managed)
    if url_problem:
        problems.add("influxdb.url", url_problem)
    if config.influxdb.managed:
        _check_writable_dir(config, "influxdb.data_dir", config.influxdb.data_dir, problems)
    if config.reader.enabled:
        _check_writable_dir(config, "reader.spool_dir", config.reader.spool_dir, problems)
    if config.reader.spool_max_bytes < 1024:
        problems.add("reader.spool_max_bytes", f"must be at least 1024, got {config.reader.spool_max_bytes}")
    if config.reader.dsmr_version not in DSMR_VERSIONS:
        problems.add(
            "reader.dsmr_version", f"expected one of {', '.join(DSMR_VERSIONS)}, got {config.reader.dsmr_version!r}"
        )
    for name in ("decryption_key", "authentication_key"):
        value = getattr(config.reader, name)
        if value and not re.fullmatch(r"[0-9A-Fa-f]{32}", value):
            problems.add(
                f"reader.{name}", f"expected 32 hexadecimal characters (16 bytes), got {len(value)} characters"
            )
    if config.reader.authentication_key and not config.reader.decryption_key:
        problems.add("reader.authentication_key", "is used only with reader.decryption_key; set that too")
    for i, target in enumerate(config.reader.forward):
        if target.key_file and not target.key:
            try:
                target.key = read_secret_file(config.resolve_path(target.key_file), "a forward target's key")
            except ConfigError as exc:
                problems.add(f"reader.forward[{i}].key_file", str(exc).split(": ", 1)[1])
            else:
                if not target.key:
                    problems.add(
                        f"reader.forward[{i}].key_file", f"{config.resolve_path(target.key_file)} is empty or missing"
                    )
        target_problem = _url_problem(target.url, managed=False)
        if target_problem:
            problems.add(f"reader.forward[{i}].url", target_problem)
    _check_mqtt(config, problems)
    _check_meters(config, problems)
    _check_price_fetch(config, problems)
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", config.backup.time):
        problems.add("backup.time", f"expected a local time HH:MM (e.g. 03:30), got {config.backup.time!r}")
    if not 0 <= config.influxdb.min_free_percent <= 100:
        problems.add("influxdb.min_free_percent", f"expected 0 to 100, got {config.influxdb.min_free_percent}")
    if config.backup.keep < 1:
        problems.add("backup.keep", f"must be at least 1 (the newest backups kept), got {config.backup.keep}")
    for i, priced in enumerate(config.prices):
        _check_price_period(priced, f"prices[{i}]", problems)
    for i in range(1, len(config.prices)):
        previous, period = config.prices[i - 1].start, config.prices[i].start
        if period == previous:
            problems.add(
                f"prices[{i}].start",
                f"{period} is also the start of prices[{i - 1}]; each period starts on its own day",
            )
        elif period < previous:
            problems.add(
                f"prices[{i}].start",
                f"{period} comes before prices[{i - 1}].start ({previous}); list the periods oldest first",
            )


def _check_meters(config: Config, problems: _Problems) -> None:
    """meters: NAME: [equipment ids, oldest first]; a name or id is printable text of 1 to 64
    characters (it becomes an InfluxDB tag), and an id belongs to one name."""
    owner: dict[str, str] = {}
    for name, ids in config.meters.items():
        key = f"meters.{name}"
        if not _printable_id(name):
            problems.add(key, "a meter name must be 1 to 64 printable characters")
        if not isinstance(ids, list) or not ids:
            problems.add(key, "expected a list of equipment ids, oldest first (e.g. [E0011111111111111])")
            continue
        for i, one in enumerate(ids):
            if not isinstance(one, str) or not _printable_id(one):
                problems.add(f"{key}[{i}]", f"expected an equipment id of 1 to 64 printable characters, got {one!r}")
            elif one in owner:
                problems.add(f"{key}[{i}]", f"{one} is also a meter of {owner[one]}; an id belongs to one name")
            else:
                owner[one] = name
    for name in config.meters:
        if name in owner and owner[name] != name:
            problems.add(f"meters.{name}", f"{name} is also an equipment id of {owner[name]}")


def _printable_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable() and value.strip() == value


def _check_mqtt(config: Config, problems: _Problems) -> None:
    mqtt = config.mqtt
    if not 1 <= mqtt.port <= 65535:
        problems.add("mqtt.port", _port_problem(mqtt.port))
    if not re.fullmatch(r"[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]", mqtt.host or ""):
        problems.add("mqtt.host", f"expected a host name or address, got {mqtt.host!r}")
    if mqtt.tls not in MQTT_TLS:
        problems.add("mqtt.tls", f"expected one of {', '.join(MQTT_TLS)}, got {mqtt.tls!r}")
    if mqtt.ca_file and not config.resolve_path(mqtt.ca_file).is_file():
        problems.add("mqtt.ca_file", f"no such file: {config.resolve_path(mqtt.ca_file)}")
    if mqtt.qos not in (0, 1, 2):
        problems.add("mqtt.qos", f"expected 0, 1 or 2, got {mqtt.qos}")
    for name, prefix in (("mqtt.prefix", mqtt.prefix), ("mqtt.discovery_prefix", mqtt.discovery_prefix)):
        if not prefix or any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/"):
            problems.add(name, f"expected a topic like dsmr (no +, #, or / at either end), got {prefix!r}")
    for i, source in enumerate(mqtt.publish):
        if source not in MQTT_SOURCES:
            problems.add(f"mqtt.publish[{i}]", f"expected one of {', '.join(MQTT_SOURCES)}, got {source!r}")
    if mqtt.outbox_max_messages < 100:
        problems.add("mqtt.outbox_max_messages", f"must be at least 100, got {mqtt.outbox_max_messages}")
    if mqtt.enabled and not config.reader.enabled:  # the outbox lives beside the spools
        _check_writable_dir(config, "reader.spool_dir", config.reader.spool_dir, problems)


def _bind_problem(bind: str) -> str:
    if bind.startswith("unix:"):
        return "" if len(bind) > len("unix:") else "expected unix:PATH"
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]*):(\d{1,5})", bind)
    if not match:
        return f"expected host:port (e.g. 127.0.0.1:7777) or unix:PATH, got {bind!r}"
    port = int(match.group(2))
    return "" if 1 <= port <= 65535 else _port_problem(port)


_LOCAL_HOSTS = ("", "0.0.0.0", "::", "[::]", "127.0.0.1", "localhost", "::1", "[::1]")


def _same_port_as_influxd(config: Config) -> str:
    """The API cannot listen where influxd does (it would answer influxd's /health, and then fail)."""
    bind = config.server.bind
    if bind.startswith("unix:"):
        return ""
    host, port = bind.rsplit(":", 1)
    url = urllib.parse.urlsplit(config.influxdb.url)
    try:
        influx_port = url.port or (443 if url.scheme == "https" else 8086)
    except ValueError:
        return ""  # influxdb.url reports its own problem
    local = host in _LOCAL_HOSTS and (url.hostname or "") in (*_LOCAL_HOSTS, "127.0.0.1")
    if int(port) == influx_port and (local or host == url.hostname):
        return f"{bind} is influxdb.url's port ({config.influxdb.url}); the API needs a port of its own"
    return ""


def _port_problem(port: int) -> str:
    return f"the port must be 1 to 65535, got {port}"


def _url_problem(url: str, managed: bool) -> str:
    """An http(s) URL with a host and, if given, a valid port."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http:// or https:// URL with a host, got {url!r}"
    try:
        port = parts.port
    except ValueError:
        return f"the port must be 1 to 65535 in {url!r}"
    if port == 0:
        return f"the port must be 1 to 65535 in {url!r}"
    if managed and (parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1")):
        return (
            f"with influxdb.managed: true dsmr-ts starts influxd itself on this machine:"
            f" use http://127.0.0.1:PORT, got {url!r}"
        )
    return ""


def _check_writable_dir(config: Config, key: str, value: str, problems: _Problems) -> None:
    """The folder exists and is writable, or can be created (its nearest existing parent is writable)."""
    path = config.resolve_path(value)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        problems.add(key, f"{existing} is not a folder")
        return
    # os.access says yes to root everywhere (/proc, a read-only mount): try it, and leave nothing behind.
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".dsmr-ts-probe-").cleanup()
    except OSError as exc:
        problems.add(
            key,
            f"{'cannot write to' if existing == path else 'cannot create'} {path}"
            f" ({existing} refused it: {exc.strerror.lower() if exc.strerror else 'not writable'})",
        )


# --- secret files ----------------------------------------------------------------------------------


SECRET_KEYS = {
    "api": ("key",),
    "influxdb": ("token", "admin_token"),
    "mqtt": ("password",),
    "reader": ("decryption_key", "authentication_key"),
}


def without_secrets(path: Path) -> str:
    """The config file's text with every secret blanked (for a backup: the settings, not the keys)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for name, keys in SECRET_KEYS.items():
        section = raw.get(name)
        if isinstance(section, dict):
            section.update({key: "" for key in keys if section.get(key)})
    reader = raw.get("reader")
    for target in (reader.get("forward") or []) if isinstance(reader, dict) else []:
        if isinstance(target, dict) and target.get("key"):
            target["key"] = ""
    return "# dsmr-ts config from a backup; secrets blanked (api.key, tokens, passwords, keys)\n" + yaml.safe_dump(
        raw, sort_keys=False
    )


def _holds_secrets(raw: dict) -> bool:
    sections = [(name, raw.get(name)) for name in SECRET_KEYS]
    found = any(
        isinstance(section, dict) and any(section.get(key) for key in SECRET_KEYS[name]) for name, section in sections
    )
    forward = (raw.get("reader") or {}).get("forward") if isinstance(raw.get("reader"), dict) else None
    return found or any(isinstance(target, dict) and target.get("key") for target in forward or [])


def check_private(path: Path, what: str) -> None:
    """Refuse a secret file that every user on the machine can read (as ssh does with keys)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return
    if mode & 0o007:
        raise ConfigError(f"{path}: {what} is readable by every user (mode {mode:04o}); run: chmod 600 {path}")


def read_secret_file(path: Path, what: str) -> str:
    """A token or key kept in a file of its own ('' when there is none)."""
    check_private(path, what)
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None


def write_secret_file(path: Path, value: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, value + "\n", mode)


# --- persisting generated values -------------------------------------------------------------


def generate_api_key() -> str:
    return "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_LENGTH))


def _ensure_file_with_key(path: Path) -> None:
    """Create the file from the example if missing; generate api.key if it is empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        if not path.exists():
            template = EXAMPLE_PATH.read_text(encoding="utf-8") if EXAMPLE_PATH.exists() else ""
            _write_private(path, template)
        if os.environ.get("DSMR_TS_API_KEY"):
            return
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            return  # load_config reports it with a clear message
        if not isinstance(raw, dict):
            return  # likewise
        api = raw.get("api")
        if api is None or (isinstance(api, dict) and not api.get("key")):
            _set_in_file(path, "api", "key", generate_api_key())


def save_setting(path: Path, section: str, key: str, value: str) -> None:
    """Write one `section.key` scalar into the file, keeping comments and everything else."""
    with _locked(path):
        _set_in_file(path, section, key, value)


class _locked:
    """An exclusive lock beside the config file, so concurrent starts generate one key."""

    def __init__(self, path: Path):
        self.lock_path = path.with_name(path.name + ".lock")

    def __enter__(self) -> None:
        self.fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _set_in_file(path: Path, section: str, key: str, value: str) -> None:
    text = path.read_text(encoding="utf-8")
    new_text = set_yaml_scalar(text, section, key, value)
    check = yaml.safe_load(new_text) or {}
    if str((check.get(section) or {}).get(key)) != value:
        raise ConfigError(f"{path}: could not write {section}.{key} into the file; set it by hand")
    _write_private(path, new_text)


def set_yaml_scalar(text: str, section: str, key: str, value: str) -> str:
    """Set `section.key` in block-style YAML text by editing only that line.

    Adds the key (or the section) when missing; a flow-style section line is rewritten
    as a block. The value is written as a JSON string, which YAML reads back verbatim.
    """
    quoted = json.dumps(value)
    lines = text.splitlines(keepends=True)
    head = re.compile(rf"^{re.escape(section)}:\s*(#.*)?$")
    for i, line in enumerate(lines):
        if head.match(line.rstrip("\r\n")):
            return "".join(_set_in_block(lines, i, key, quoted))
        if re.match(rf"^{re.escape(section)}:\s*\{{", line):
            mapping = yaml.safe_load(line)[section] or {}
            mapping[key] = value
            lines[i] = yaml.safe_dump({section: mapping}, default_flow_style=False, sort_keys=False)
            return "".join(lines)
    if text and not text.endswith("\n"):
        text += "\n"
    return f"{text}{section}:\n  {key}: {quoted}\n"


def _set_in_block(lines: list[str], head: int, key: str, quoted: str) -> list[str]:
    indent = "  "
    end = head + 1
    while end < len(lines):
        line = lines[end]
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not line[0].isspace():
            break
        end += 1
    for i in range(head + 1, end):
        match = re.match(r"^(\s+)([A-Za-z0-9_]+):(\s*)([^#\n]*?)(\s+#.*)?(\r?\n)?$", lines[i])
        if not match:
            continue
        indent = match.group(1)
        if match.group(2) == key:
            comment = match.group(5) or ""
            lines[i] = f"{indent}{key}: {quoted}{comment}{match.group(6) or chr(10)}"
            return lines
    lines.insert(head + 1, f"{indent}{key}: {quoted}\n")
    return lines


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Atomically replace the file, readable by its owner only (it holds secrets)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
