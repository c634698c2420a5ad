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
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "DSMR_TS_"
EXAMPLE_PATH = Path(__file__).resolve().parent.parent / "config" / "dsmr-ts.example.yaml"
KEY_ALPHABET = string.ascii_uppercase + string.digits
KEY_LENGTH = 64
DSMR_VERSIONS = ("2.2", "3", "4", "5", "fluvius", "smarty")


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


@dataclass
class ServerConfig:
    bind: str = "127.0.0.1:7777"
    workers: int = 2
    trust_forwarded_headers: bool = False


@dataclass
class InfluxConfig:
    managed: bool = True
    data_dir: str = "./data/influxdb"
    url: str = "http://127.0.0.1:8086"
    org: str = "dsmr"
    bucket: str = "dsmr"
    stats_bucket: str = "dsmr_stats"
    # Used by the API and the reader: read/write on the two buckets only (created by setup).
    token: str = ""
    # All-access operator token, used by `dsmr-ts setup` alone (onboarding creates it).
    admin_token: str = ""


@dataclass
class ForwardTarget:
    url: str = ""
    key: str = ""


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


@dataclass
class PricePeriod:
    start: dt.date = dt.date(2000, 1, 1)
    electricity_delivered_1: float = 0.0
    electricity_delivered_2: float = 0.0
    electricity_returned_1: float = 0.0
    electricity_returned_2: float = 0.0
    gas: float = 0.0
    fixed_daily_cost: float = 0.0


@dataclass
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    timezone: str = "Europe/Amsterdam"
    influxdb: InfluxConfig = field(default_factory=InfluxConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    prices: list[PricePeriod] = field(default_factory=list)
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
    _apply_env_overrides(raw, os.environ)
    config = _build(Config, raw, str(path), "")
    config.path = path.resolve()
    _check_semantics(config, str(path))
    return config


def _apply_env_overrides(raw: dict, environ: os._Environ | dict) -> None:
    """DSMR_TS_<SECTION>_<KEY>=value (YAML-typed), DSMR_TS_TIMEZONE for top-level scalars."""
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "DSMR_TS_CONFIG":
            continue
        rest = name[len(ENV_PREFIX):].lower()
        parsed = yaml.safe_load(value) if value != "" else ""
        if rest in _SECTIONS and not _is_section(rest):
            raw[rest] = parsed
            continue
        for section in _SECTIONS:
            if _is_section(section) and rest.startswith(section + "_"):
                sub = raw.get(section)
                if not isinstance(sub, dict):
                    sub = raw[section] = {}
                sub[rest[len(section) + 1:]] = parsed
                break


def _is_section(name: str) -> bool:
    return dataclasses.is_dataclass(_hints(Config)[name])


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, raw: Any, file: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: {prefix.rstrip('.')}: expected a mapping, got {_show(raw)}")
    known = {f.name for f in dataclasses.fields(cls) if f.name != "path"}
    for key in raw:
        if key not in known:
            hint = f" (known: {', '.join(sorted(known))})"
            raise ConfigError(f"{file}: {prefix}{key}: unknown key{hint}")
    values = {}
    for name in known:
        if name in raw:
            values[name] = _coerce(_hints(cls)[name], raw[name], file, prefix + name)
    return cls(**values)


def _coerce(hint: Any, value: Any, file: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, file, key + ".")
    if origin is list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{file}: {key}: expected a list, got {_show(value)}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: {key}: expected a mapping, got {_show(value)}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{file}: {key}: expected true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{file}: {key}: expected a whole number, got {_show(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{file}: {key}: expected a number, got {_show(value)}")
    if hint is dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise ConfigError(f"{file}: {key}: expected a date like 2024-01-01, got {_show(value)}")
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{file}: {key}: expected text, got {_show(value)}")
    raise AssertionError(f"unsupported config type {hint!r}")  # a bug in the schema, not in the file


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _check_semantics(config: Config, file: str) -> None:
    """Checks that go beyond types."""
    try:
        config.tz
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{file}: timezone: unknown time zone {config.timezone!r} (e.g. Europe/Amsterdam)") from None
    if config.api.key and not re.fullmatch(r"[\x21-\x7e]{8,256}", config.api.key):
        raise ConfigError(f"{file}: api.key: use 8 to 256 printable characters without spaces")
    if config.server.workers < 1:
        raise ConfigError(f"{file}: server.workers: must be at least 1, got {config.server.workers}")
    if not re.fullmatch(r"(unix:.+|[^:\s]*:\d{1,5})", config.server.bind):
        raise ConfigError(f"{file}: server.bind: expected host:port or unix:PATH, got {config.server.bind!r}")
    if config.reader.dsmr_version not in DSMR_VERSIONS:
        raise ConfigError(
            f"{file}: reader.dsmr_version: expected one of {', '.join(DSMR_VERSIONS)}, "
            f"got {config.reader.dsmr_version!r}"
        )
    for i, target in enumerate(config.reader.forward):
        if not target.url.startswith(("http://", "https://")):
            raise ConfigError(f"{file}: reader.forward[{i}].url: expected an http(s) URL, got {target.url!r}")
    starts = [p.start for p in config.prices]
    if len(set(starts)) != len(starts):
        raise ConfigError(f"{file}: prices: two periods have the same start date")
    config.prices.sort(key=lambda p: p.start)


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


def _write_private(path: Path, text: str) -> None:
    """Atomically replace the file, readable by its owner only (it holds secrets)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
