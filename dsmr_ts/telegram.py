"""DSMR P1 telegram -> Reading.

Covers DSMR 2.2/3 (no CRC), 4.x, 5.x, Belgian Fluvius (e-MUCS) and Luxembourg Smarty
(plaintext) telegrams. The OBIS codes are tables below (specification as data); the code
only knows how to split a line into an OBIS code and its parenthesised values.

Rules (see API-NOTES.md):
- CRC-16/ARC over the bytes from '/' through '!', 4 upper-case hex digits after '!'.
  Required unless the telegram is DSMR 2.2/3 (no version line, nothing after '!').
- Timestamps are Europe/Amsterdam local time; the S/W flag decides the ambiguous autumn hour.
- A line that cannot be parsed is skipped; for a repeated OBIS code the last line wins.
- Gas: every M-Bus channel is a candidate; invalid timestamps are dropped, a reading above 0
  beats a 0 (an unused channel), and otherwise the last line wins.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass, field
from typing import Callable

METER_TZ = zoneinfo.ZoneInfo("Europe/Amsterdam")
DEFAULT_METER = "default"
MAX_FUTURE = dt.timedelta(hours=24)


class ParseError(ValueError):
    """The telegram is rejected; str() tells a person what is wrong."""


class CrcError(ParseError):
    pass


class FramingError(ParseError):
    pass


class TimestampError(ParseError):
    pass


class EncodingError(ParseError):
    pass


# --- value parsers -------------------------------------------------------------------------


def _number(raw: str) -> float:
    """'001073.079*kWh' -> 1073.079 (the unit is dropped; all units here are fixed by the spec)."""
    return float(raw.split("*", 1)[0])


def _int_truncated(raw: str) -> int:
    """Currents: '001.60*A' -> 1 (DSMR-reader truncates; Fluvius sends decimals)."""
    return int(_number(raw))


def _int(raw: str) -> int:
    return int(raw.split("*", 1)[0])


def _text(raw: str) -> str:
    return raw


# OBIS code -> (Reading field, parser). Values always in the first parentheses.
READING_FIELDS: dict[str, tuple[str, Callable[[str], float | int]]] = {
    "1-0:1.8.1": ("electricity_delivered_1", _number),
    "1-0:1.8.2": ("electricity_delivered_2", _number),
    "1-0:2.8.1": ("electricity_returned_1", _number),
    "1-0:2.8.2": ("electricity_returned_2", _number),
    # Smarty / Kamstrup single-register meters.
    "1-0:1.8.0": ("electricity_delivered_1", _number),
    "1-0:2.8.0": ("electricity_returned_1", _number),
    "1-0:1.7.0": ("electricity_currently_delivered", _number),
    "1-0:2.7.0": ("electricity_currently_returned", _number),
    "1-0:21.7.0": ("phase_currently_delivered_l1", _number),
    "1-0:41.7.0": ("phase_currently_delivered_l2", _number),
    "1-0:61.7.0": ("phase_currently_delivered_l3", _number),
    "1-0:22.7.0": ("phase_currently_returned_l1", _number),
    "1-0:42.7.0": ("phase_currently_returned_l2", _number),
    "1-0:62.7.0": ("phase_currently_returned_l3", _number),
    "1-0:32.7.0": ("phase_voltage_l1", _number),
    "1-0:52.7.0": ("phase_voltage_l2", _number),
    "1-0:72.7.0": ("phase_voltage_l3", _number),
    "1-0:31.7.0": ("phase_power_current_l1", _int_truncated),
    "1-0:51.7.0": ("phase_power_current_l2", _int_truncated),
    "1-0:71.7.0": ("phase_power_current_l3", _int_truncated),
}

# Registers a meter always has; a meter without the tariff-2 register reads 0 there.
ZERO_WHEN_MISSING = ("electricity_delivered_2", "electricity_returned_2")
REQUIRED = ("electricity_delivered_1", "electricity_currently_delivered")

# OBIS code -> (meter statistics field, parser): kept from the latest telegram.
STATISTICS_FIELDS: dict[str, tuple[str, Callable[[str], str | int]]] = {
    "1-3:0.2.8": ("dsmr_version", _text),
    "0-0:96.1.4": ("dsmr_version", _text),  # Fluvius: version of the e-MUCS spec
    "0-0:96.14.0": ("electricity_tariff", _int),
    "0-0:96.7.21": ("power_failure_count", _int),
    "0-0:96.7.9": ("long_power_failure_count", _int),
    "1-0:32.32.0": ("voltage_sag_count_l1", _int),
    "1-0:52.32.0": ("voltage_sag_count_l2", _int),
    "1-0:72.32.0": ("voltage_sag_count_l3", _int),
    "1-0:32.36.0": ("voltage_swell_count_l1", _int),
    "1-0:52.36.0": ("voltage_swell_count_l2", _int),
    "1-0:72.36.0": ("voltage_swell_count_l3", _int),
}

# Equipment identifiers that name the meter (first found wins, in this order).
METER_ID_CODES = ("0-0:96.1.1", "0-0:42.0.0")
TIMESTAMP_CODE = "0-0:1.0.0"
VERSION_CODES = ("1-3:0.2.8", "0-0:96.1.4")
# Gas: 24.2.1 (DSMR 4/5), 24.2.3 (Fluvius), on any M-Bus channel n; value + own timestamp.
GAS_CODE = re.compile(r"^0-\d:24\.2\.[13]$")
# DSMR 2.2/3 gas: 0-n:24.3.0(timestamp)(..)(..)(..)(0-n:24.2.1)(m3) then the value on the next line.
GAS_DSMR22_CODE = re.compile(r"^0-\d:24\.3\.0$")

_LINE = re.compile(r"^(\d+-\d+:\d+\.\d+\.\d+)((?:\([^()]*\))+)$")
_VALUES = re.compile(r"\(([^()]*)\)")
_TIMESTAMP = re.compile(r"^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})([SWsw]?)$")
_CRC_TAIL = re.compile(r"^!([0-9A-Fa-f]{4})\s*$")


@dataclass
class Reading:
    """One reading as stored: a point in measurement `reading`, tag `meter`."""

    timestamp: dt.datetime  # UTC, whole seconds
    meter: str = DEFAULT_METER
    values: dict[str, float | int] = field(default_factory=dict)
    extra_device_timestamp: dt.datetime | None = None  # UTC
    extra_device_delivered: float | None = None


@dataclass
class Telegram:
    """A parsed telegram: the reading plus the meter statistics it carried."""

    reading: Reading
    statistics: dict[str, str | int]
    header: str

    @property
    def hourly_gas(self) -> bool:
        """DSMR 4 and DSMR 2.2/3 (no version line) report gas once an hour, stamped at its end."""
        version = str(self.statistics.get("dsmr_version", ""))
        return version == "" or (version.startswith("4") and len(version) == 2)


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC: polynomial 0x8005 reflected (0xA001), initial value 0, no final xor."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def parse_telegram(text: str | bytes, now: dt.datetime | None = None) -> Telegram:
    """Parse one telegram. `now` (UTC) stands in for a missing or unusable P1 timestamp."""
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    raw = _to_bytes(text).strip(b"\x00")
    start = raw.find(b"/")
    if start < 0:
        raise FramingError("no telegram start '/'")
    end = raw.find(b"!", start)
    if end < 0:
        raise FramingError("no telegram end '!'")
    body = raw[start : end + 1]
    lines = body.decode("latin-1").splitlines()
    tail = raw[end:].decode("latin-1").strip()
    _check_crc(body, tail, lines)

    codes: dict[str, tuple[str, ...]] = {}
    gas_candidates: list[tuple[dt.datetime, float]] = []
    for index, line in enumerate(lines[1:], start=1):
        line = line.strip()
        match = _LINE.match(line)
        if not match:
            continue  # blank, '!', or a garbled line: skipped, the rest is kept
        code, values = match.group(1), tuple(_VALUES.findall(match.group(2)))
        codes[code] = values  # last line wins
        if GAS_CODE.match(code):
            raw_value = values[1] if len(values) > 1 else ""
        elif GAS_DSMR22_CODE.match(code) and index + 1 < len(lines):
            raw_value = lines[index + 1].strip().strip("()")  # DSMR 2.2: the value is on the next line
        else:
            continue
        gas = _gas_value(values[0] if values else "", raw_value)
        if gas:
            gas_candidates.append(gas)

    reading = Reading(
        timestamp=_reading_timestamp(codes, now), meter=_meter_id(codes), values=_read_table(codes, READING_FIELDS)
    )
    for name in ZERO_WHEN_MISSING:
        reading.values.setdefault(name, 0.0)
    missing = [name for name in REQUIRED if name not in reading.values]
    if missing:
        raise ParseError(f"telegram has no {' or '.join(missing)} (not a DSMR electricity telegram?)")
    # 700101010000W (= 2070) and the like: an empty M-Bus channel, not a reading.
    gas_candidates = [g for g in gas_candidates if g[0] - reading.timestamp <= MAX_FUTURE]
    if gas_candidates:
        positive = [g for g in gas_candidates if g[1] > 0]
        reading.extra_device_timestamp, reading.extra_device_delivered = (positive or gas_candidates)[-1]

    statistics = _read_table(codes, STATISTICS_FIELDS)
    return Telegram(reading=reading, statistics=statistics, header=lines[0][1:].strip())


def _read_table(codes: dict[str, tuple[str, ...]], table: dict[str, tuple[str, Callable]]) -> dict:
    """Values for the OBIS codes of a table; a value that does not parse is skipped like a bad line."""
    result = {}
    for code, (name, parse) in table.items():
        values = codes.get(code)
        if values:
            try:
                result[name] = parse(values[0])
            except ValueError:
                continue
    return result


def check_not_in_future(reading: Reading, now: dt.datetime | None = None) -> None:
    now = now or dt.datetime.now(dt.timezone.utc)
    if reading.timestamp - now > MAX_FUTURE:
        raise TimestampError(
            f"timestamp {reading.timestamp:%Y-%m-%d %H:%M:%S}Z is more than 24 h in the future; check the meter's clock"
        )


def parse_p1_timestamp(raw: str) -> dt.datetime | None:
    """'101209113020W' -> aware UTC datetime, or None when it is not a valid timestamp."""
    match = _TIMESTAMP.match(raw.strip())
    if not match:
        return None
    yy, mo, dd, hh, mi, ss, flag = match.groups()
    try:
        local = dt.datetime(2000 + int(yy), int(mo), int(dd), int(hh), int(mi), int(ss))
    except ValueError:
        return None
    if flag:
        # S = summer time (UTC+2), W = winter time (UTC+1): exact, even in the repeated autumn hour.
        offset = dt.timedelta(hours=2 if flag in "Ss" else 1)
        return (local - offset).replace(tzinfo=dt.timezone.utc)
    return local.replace(tzinfo=METER_TZ).astimezone(dt.timezone.utc)


def _to_bytes(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise EncodingError(
            f"telegram contains {text[exc.start]!r}, which is not a latin-1 character; send the meter's bytes as they are"
        ) from None


def _check_crc(body: bytes, tail: str, lines: list[str]) -> None:
    match = _CRC_TAIL.match(tail)
    if match:
        given = match.group(1).upper()
        computed = f"{crc16_arc(body):04X}"
        if given != computed:
            raise CrcError(f"CRC mismatch: telegram says {given}, computed {computed}")
        return
    if tail.strip() != "!":
        raise CrcError(f"CRC unreadable: expected 4 hex digits after '!', got {tail[1:20]!r}")
    if any(line.startswith(VERSION_CODES) for line in lines):
        raise CrcError("CRC missing: DSMR 4 and later end the telegram with '!' and a 4-digit CRC")


def _reading_timestamp(codes: dict[str, tuple[str, ...]], now: dt.datetime) -> dt.datetime:
    values = codes.get(TIMESTAMP_CODE)
    stamp = parse_p1_timestamp(values[0]) if values else None
    # DSMR 2.2 has no timestamp and a broken one is useless: the reading happens now.
    return stamp if stamp is not None else now


def _meter_id(codes: dict[str, tuple[str, ...]]) -> str:
    for code in METER_ID_CODES:
        values = codes.get(code)
        if values and values[0].strip():
            return _decode_equipment_id(values[0].strip())
    return DEFAULT_METER


def _decode_equipment_id(raw: str) -> str:
    """Equipment ids are usually hex-encoded ASCII ('4B38...' -> 'K8...'); otherwise kept as sent,
    or as hex when that has control characters (the id becomes an InfluxDB tag)."""
    if len(raw) % 2 == 0 and re.fullmatch(r"[0-9A-Fa-f]+", raw):
        decoded = bytes.fromhex(raw).decode("latin-1")
        if decoded.isprintable() and decoded.isascii():
            return decoded
    return raw if raw.isprintable() else raw.encode("latin-1").hex().upper()


def _gas_value(raw_timestamp: str, raw_value: str) -> tuple[dt.datetime, float] | None:
    stamp = parse_p1_timestamp(raw_timestamp)
    if stamp is None:
        return None
    try:
        return stamp, _number(raw_value)
    except ValueError:
        return None


# --- writing telegrams (the simulator and tests) ---------------------------------------------

# OBIS code to write each reading field with, and its value format (the inverse of READING_FIELDS).
_WRITE_CODES = {name: code for code, (name, _) in READING_FIELDS.items() if not code.endswith(".8.0")}
_WRITE_FORMATS = {
    "electricity_delivered_1": "{:010.3f}*kWh",
    "electricity_delivered_2": "{:010.3f}*kWh",
    "electricity_returned_1": "{:010.3f}*kWh",
    "electricity_returned_2": "{:010.3f}*kWh",
    "phase_voltage_l1": "{:05.1f}*V",
    "phase_voltage_l2": "{:05.1f}*V",
    "phase_voltage_l3": "{:05.1f}*V",
    "phase_power_current_l1": "{:03d}*A",
    "phase_power_current_l2": "{:03d}*A",
    "phase_power_current_l3": "{:03d}*A",
}


def p1_timestamp(moment: dt.datetime) -> str:
    """Aware datetime -> 'YYMMDDhhmmssX' in Europe/Amsterdam with the S/W flag."""
    local = moment.astimezone(METER_TZ)
    flag = "S" if local.dst() else "W"
    return local.strftime("%y%m%d%H%M%S") + flag


def build_telegram(
    reading: Reading, statistics: dict[str, str | int] | None = None, header: str = "XDSMR-TS-SIMULATOR"
) -> str:
    """A DSMR 5 telegram for a reading, with a valid CRC ('\\r\\n' line ends)."""
    statistics = {"dsmr_version": "50", **(statistics or {})}
    lines = [f"/{header}", ""]
    lines.append(f"1-3:0.2.8({statistics['dsmr_version']})")
    lines.append(f"0-0:1.0.0({p1_timestamp(reading.timestamp)})")
    if reading.meter != DEFAULT_METER:
        lines.append(f"0-0:96.1.1({reading.meter.encode('latin-1').hex().upper()})")
    stat_codes = {name: code for code, (name, _) in STATISTICS_FIELDS.items() if code not in VERSION_CODES}
    for name, code in stat_codes.items():
        if name in statistics:
            width = 4 if name == "electricity_tariff" else 5
            lines.append(f"{code}({int(statistics[name]):0{width}d})")
    for name, code in _WRITE_CODES.items():
        if name in reading.values:
            value = reading.values[name]
            lines.append(f"{code}({_WRITE_FORMATS.get(name, '{:06.3f}*kW').format(value)})")
    if reading.extra_device_timestamp is not None and reading.extra_device_delivered is not None:
        lines.append("0-1:24.1.0(003)")
        gas_time = p1_timestamp(reading.extra_device_timestamp)
        lines.append(f"0-1:24.2.1({gas_time})({reading.extra_device_delivered:09.3f}*m3)")
    body = "\r\n".join(lines) + "\r\n!"
    return f"{body}{crc16_arc(body.encode('latin-1')):04X}\r\n"
