"""DSMR P1 telegram -> Reading.

Covers DSMR 2.2/3 (no CRC), 4.x, 5.x, Belgian Fluvius (e-MUCS), Luxembourg Smarty (Sagemcom
T210-D; decrypted by the reader when encrypted, see reader/dlms.py), Irish Iskra, Hungarian E.ON,
Swedish HAN and German EasyMeter Q3D telegrams. Which OBIS code feeds which field is data
(dsmr_ts.fields); the code here only splits lines into an OBIS code and its parenthesised values
and applies the general rules.

Rules (DSMR-reader's, where its documentation is silent):
- CRC-16/ARC over the bytes from '/' through '!', 4 upper-case hex digits after '!'.
  Required unless the telegram has no version line and nothing after '!' on that line (DSMR
  2.2/3, Iskra IE, EasyMeter Q3D; lines after the '!' line are not part of the telegram).
- OBIS codes may carry a '*255' suffix (EasyMeter); a meter without tariff registers (1.8.0
  only) has it as tariff 1, as DSMR-reader does; E.ON Hungary's tariffs 3 and 4 add to 1 and 2.
- Timestamps are Europe/Amsterdam local time; the S/W flag decides the ambiguous autumn hour.
- A line that cannot be parsed is skipped; for a repeated OBIS code the last line wins.
- Values in another unit than the field's are converted (Wh -> kWh, W -> kW).
- M-Bus devices (channels 1-4) are told apart by their device type (0-n:24.1.0: 3 gas, 7 water,
  4 heat, ...); a channel without one is taken for gas (DSMR 2.2/3). Per medium: invalid or
  far-future timestamps are dropped, a value above 0 beats a 0 (an unused channel), otherwise the
  last channel wins.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import crcmod

from dsmr_ts.fields import MBUS_MEDIA, SCHEMA, Kind, ReadingField, ReadingSchema

METER_TZ = zoneinfo.ZoneInfo("Europe/Amsterdam")
DEFAULT_METER = "default"  # readings without an equipment id
SIMULATED_METER = "simulated"  # the simulated meter's id: real meters never mix with it
MAX_FUTURE = dt.timedelta(hours=24)
# An M-Bus value (gas, water, heat) whose own timestamp is further than this from the telegram's is
# a device with a wrong clock (a gas value stamped 2010 once started a repair of 140,000 hours):
# ignored, not stored as history.
MAX_DEVICE_DISTANCE = dt.timedelta(hours=24)

Value = float | int | dt.datetime


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


# Equipment identifiers that name the meter (first found wins, in this order): DSMR and Fluvius;
# Smarty and E.ON Hungary (logical device name); Iskra IE and EasyMeter (COSEM device name).
METER_ID_CODES = ("0-0:96.1.1", "0-0:42.0.0", "1-0:0.0.0")
TIMESTAMP_CODE = "0-0:1.0.0"
VERSION_CODES = ("1-3:0.2.8", "0-0:96.1.4")
# M-Bus: the device type, and its reading with its own timestamp (24.2.1; Fluvius gas 24.2.3;
# DSMR 2.2/3: 24.3.0 with the value on the next line).
MBUS_TYPE = re.compile(r"^0-(\d):24\.1\.0$")
MBUS_READING = re.compile(r"^0-(\d):24\.2\.[13]$")
MBUS_READING_DSMR22 = re.compile(r"^0-(\d):24\.3\.0$")
# (unit sent, unit stored) -> factor; a value in an unknown other unit is skipped.
UNIT_FACTORS = {
    ("Wh", "kWh"): Decimal("0.001"),
    ("W", "kW"): Decimal("0.001"),
    ("MWh", "kWh"): Decimal(1000),
    ("kWh", "GJ"): Decimal("0.0036"),
    ("MWh", "GJ"): Decimal("3.6"),
    ("MJ", "GJ"): Decimal("0.001"),
    ("dm3", "m3"): Decimal("0.001"),
    ("l", "m3"): Decimal("0.001"),
}

_LINE = re.compile(r"^(\d+-\d+:\d+\.\d+\.\d+)(?:\*\d+)?((?:\([^()]*\))+)$")
_INF = float("inf")
_TIMESTAMP = re.compile(r"^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})([SWsw]?)$")
_CRC_TAIL = re.compile(r"^!([0-9A-Fa-f]{4})\s*$")


@dataclass
class Reading:
    """One reading as stored: a point in measurement `reading`, tag `meter`. values holds the
    fields of the schema that the reading has (DATETIME fields as aware UTC datetimes)."""

    timestamp: dt.datetime  # UTC, whole seconds
    meter: str = DEFAULT_METER
    values: dict[str, Value] = field(default_factory=dict)

    @property
    def gas(self) -> tuple[dt.datetime, float] | None:
        """(when, m3) of the gas meter, if the reading has one."""
        when, value = self.values.get("extra_device_timestamp"), self.values.get("extra_device_delivered")
        return (when, float(value)) if isinstance(when, dt.datetime) and isinstance(value, (int, float)) else None


@dataclass
class Telegram:
    """A parsed telegram: the reading plus the meter statistics it carried."""

    reading: Reading
    statistics: dict[str, str | int]
    header: str
    text: str = ""  # the telegram as received, from '/' on (meter-statistics' latest_telegram)
    dsmr22_gas: bool = False  # the gas value came in DSMR 2.2/3's two-line form (0-n:24.3.0)
    ignored: tuple[str, ...] = ()  # why values of the telegram were left out (for the log)

    @property
    def hourly_gas(self) -> bool:
        """DSMR 4 (its version line says so) and DSMR 2.2/3 (their own gas form) report gas once an
        hour, stamped at the hour's end: booked an hour earlier."""
        return self.dsmr22_gas or gas_is_hourly(self.statistics.get("dsmr_version"))


def gas_is_hourly(dsmr_version: object) -> bool:
    """A meter of DSMR version '40'..'42' reports gas once an hour, stamped at its end (booked an hour
    earlier); DSMR 5, Fluvius and the others every 5 minutes, as stamped. An unknown version (NULL in
    DSMR-reader's meter statistics: Fluvius meters, readings that came in through the v2 API) is not
    DSMR 4: DSMR-reader books such gas as stamped, and so does dsmr-ts."""
    version = str(dsmr_version or "")
    return version.startswith("4") and len(version) == 2


# --- CRC-16/ARC ------------------------------------------------------------------------------


# crcmod's C extension: a pure-Python loop over ~800 bytes cost 16-25 us per telegram alone and,
# under load, its lookup table fell out of the shared cache (17% of an API worker's CPU by py-spy).
_CRC16_ARC = crcmod.mkCrcFun(0x18005, initCrc=0, rev=True, xorOut=0)


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC: polynomial 0x8005 reflected, initial value 0, no final xor."""
    return _CRC16_ARC(data)


# --- parsing -----------------------------------------------------------------------------------


def parse_telegram(text: str | bytes, now: dt.datetime | None = None, schema: ReadingSchema = SCHEMA) -> Telegram:
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
    tail = raw[end:].decode("latin-1").strip().splitlines()[0]  # '!' and the CRC, if any
    _check_crc(body, tail, lines)

    codes: dict[str, list[str]] = {}
    devices: dict[str, str] = {}  # M-Bus channel -> its device type
    mbus: list[tuple[str, str, str]] = []  # (channel, raw timestamp, raw value) in line order
    dsmr22_channels: list[str] = []  # channels that sent DSMR 2.2/3's two-line form
    for index, line in enumerate(lines[1:], start=1):
        match = _LINE.match(line.strip())
        if not match:
            continue  # blank, '!', or a garbled line: skipped, the rest is kept
        code = match.group(1)
        parts = match.group(2)[1:-1].split(")(")
        codes[code] = parts  # last line wins
        if code[1] == "-" and ":24." in code:  # an M-Bus device (cheap test first: most lines are not)
            if (device := MBUS_TYPE.match(code)) and parts:
                devices[device.group(1)] = parts[0]
            elif (channel := MBUS_READING.match(code)) and len(parts) > 1:
                mbus.append((channel.group(1), parts[0], parts[1]))
            elif (channel := MBUS_READING_DSMR22.match(code)) and index + 1 < len(lines):
                mbus.append((channel.group(1), parts[0], lines[index + 1].strip().strip("()")))
                dsmr22_channels.append(channel.group(1))

    own_time = _own_timestamp(codes)
    timestamp = own_time or now  # DSMR 2.2 has no timestamp and a broken one is useless: it happens now
    values: dict[str, Value] = {}
    for code, fields in schema.by_obis.items():
        found = codes.get(code)
        for spec in fields:
            if found and spec.name not in values and len(found) > spec.value_index:
                value = _field_value(spec, found[spec.value_index])
                if value is not None:
                    values[spec.name] = value
    for spec in schema.summed:  # registers that add to a tariff (only beside its own register)
        extra = [
            codes[code][0] for code in spec.adds if code in codes and spec.name in values and codes.get(spec.obis[0])
        ]
        for raw_value in extra:
            value = _field_value(spec, raw_value)
            if value is not None:
                values[spec.name] = float(Decimal(repr(values[spec.name])) + Decimal(repr(value)))
    for name in schema.zero_when_missing:
        values.setdefault(name, 0.0)
    missing = [
        name
        for name in ("electricity_delivered_1", "electricity_currently_delivered")
        if name in schema.by_name and name not in values
    ]
    if missing:
        raise ParseError(f"telegram has no {' or '.join(missing)} (not a DSMR electricity telegram?)")
    device_values, ignored = _mbus_values(mbus, devices, own_time, now, schema)
    values.update(device_values)

    statistics: dict[str, str | int] = {}
    for code, statistic in schema.statistics_by_obis.items():
        found = codes.get(code)
        if found and statistic.name not in statistics:
            try:
                statistics[statistic.name] = found[0] if statistic.kind is Kind.TEXT else int(found[0].split("*")[0])
            except ValueError:
                continue
    reading = Reading(timestamp=timestamp, meter=_meter_id(codes), values=values)
    dsmr22_gas = any(_medium(devices, channel) == "gas" for channel in dsmr22_channels)
    return Telegram(
        reading=reading,
        statistics=statistics,
        header=lines[0][1:].strip(),
        text=raw[start:].decode("latin-1"),
        dsmr22_gas=dsmr22_gas,
        ignored=tuple(ignored),
    )


def _field_value(spec: ReadingField, raw: str) -> Value | None:
    """One telegram value as the field stores it; None when it does not parse (skipped like a bad line)."""
    if spec.kind is Kind.DATETIME:
        return parse_p1_timestamp(raw)
    number_text, _, unit = raw.partition("*")
    if unit and spec.unit and unit != spec.unit:
        factor = UNIT_FACTORS.get((unit, spec.unit))
        if factor is None:
            return None  # a unit we cannot convert: better absent than wrong
        try:
            number = float(Decimal(number_text) * factor)  # exact: 5017120 Wh is 5017.12 kWh
        except InvalidOperation:
            return None
    else:
        try:
            number = float(number_text)
        except ValueError:
            return None
    if number != number or number in (_INF, -_INF):  # nan, inf: not a meter value
        return None
    return int(number) if spec.kind is Kind.INTEGER else number  # currents: truncated, as DSMR-reader


def _mbus_values(
    readings: list[tuple[str, str, str]],
    devices: dict[str, str],
    own_time: dt.datetime | None,
    now: dt.datetime,
    schema: ReadingSchema,
) -> tuple[dict[str, Value], list[str]]:
    """The value and time of each medium's device (see the module doc for which channel wins), and
    why a device's value was left out: its timestamp more than MAX_FUTURE after now, or more than
    MAX_DEVICE_DISTANCE from the telegram's own (own_time; None: the telegram has none, DSMR 2.2)."""
    candidates: dict[str, list[tuple[dt.datetime, float]]] = {}
    ignored: list[str] = []
    for channel, raw_time, raw_value in readings:
        medium = _medium(devices, channel)
        value_field = schema.by_mbus.get((medium, "value")) if medium else None
        when = parse_p1_timestamp(raw_time)
        if medium is None or value_field is None or when is None:
            continue
        if when - now > MAX_FUTURE or (own_time is not None and abs(when - own_time) > MAX_DEVICE_DISTANCE):
            ignored.append(
                f"{medium} value of {when:%Y-%m-%d %H:%M}Z ignored: its timestamp is more than a day from"
                f" the telegram's{'' if own_time is None else f' ({own_time:%Y-%m-%d %H:%M}Z)'} or in the future"
            )
            continue
        value = _field_value(value_field, raw_value)
        if isinstance(value, (int, float)):
            candidates.setdefault(medium, []).append((when, value))
    values: dict[str, Value] = {}
    for medium, found in candidates.items():
        positive = [c for c in found if c[1] > 0]
        when, value = (positive or found)[-1]
        values[schema.by_mbus[(medium, "value")].name] = value
        time_field = schema.by_mbus.get((medium, "time"))
        if time_field:
            values[time_field.name] = when
    return values, ignored


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
            f"telegram contains {text[exc.start]!r}, which is not a latin-1 character;"
            " send the meter's bytes as they are"
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


def _own_timestamp(codes: dict[str, list[str]]) -> dt.datetime | None:
    """The telegram's own timestamp; None when it has none (DSMR 2.2) or an unreadable one."""
    values = codes.get(TIMESTAMP_CODE)
    return parse_p1_timestamp(values[0]) if values else None


def _medium(devices: dict[str, str], channel: str) -> str | None:
    """What an M-Bus channel measures: its device type's medium; gas when the telegram names none."""
    if channel not in devices:
        return "gas"
    try:
        return MBUS_MEDIA.get(int(devices[channel]))
    except ValueError:
        return None


def _meter_id(codes: dict[str, list[str]]) -> str:
    for code in METER_ID_CODES:
        values = codes.get(code)
        if values and values[0].strip():
            return decode_equipment_id(values[0].strip())
    return DEFAULT_METER


def decode_equipment_id(raw: str) -> str:
    """Equipment ids are usually hex-encoded ASCII ('4B38...' -> 'K8...'); otherwise kept as sent,
    or as hex when that has control characters (the id becomes an InfluxDB tag)."""
    if len(raw) % 2 == 0 and re.fullmatch(r"[0-9A-Fa-f]+", raw):
        decoded = bytes.fromhex(raw).decode("latin-1")
        if decoded.isprintable() and decoded.isascii():
            return decoded
    return raw if raw.isprintable() else raw.encode("latin-1").hex().upper()


# --- writing telegrams (the simulator and tests) ---------------------------------------------

# How a DSMR 5 meter writes a value of each unit (the inverse of the parsing).
UNIT_FORMATS = {
    "kWh": "{:010.3f}*kWh",
    "kW": "{:06.3f}*kW",
    "V": "{:05.1f}*V",
    "A": "{:03d}*A",
    "m3": "{:09.3f}*m3",
    "GJ": "{:08.3f}*GJ",
}
MBUS_CHANNELS = {"gas": (1, 3), "water": (2, 7), "heat": (3, 4)}  # medium -> (channel, device type) written


def p1_timestamp(moment: dt.datetime) -> str:
    """Aware datetime -> 'YYMMDDhhmmssX' in Europe/Amsterdam with the S/W flag."""
    local = moment.astimezone(METER_TZ)
    flag = "S" if local.dst() else "W"
    return local.strftime("%y%m%d%H%M%S") + flag


def build_telegram(
    reading: Reading,
    statistics: dict[str, str | int] | None = None,
    header: str = "XDSMR-TS-SIMULATOR",
    schema: ReadingSchema = SCHEMA,
) -> str:
    """A DSMR 5 telegram for a reading, with a valid CRC ('\\r\\n' line ends)."""
    statistics = {"dsmr_version": "50", **(statistics or {})}
    lines = [f"/{header}", ""]
    lines.append(f"1-3:0.2.8({statistics['dsmr_version']})")
    lines.append(f"0-0:1.0.0({p1_timestamp(reading.timestamp)})")
    if reading.meter != DEFAULT_METER:
        lines.append(f"0-0:96.1.1({reading.meter.encode('latin-1').hex().upper()})")
    for statistic in schema.statistics:
        if statistic.kind is not Kind.TEXT and statistic.name in statistics:
            width = 4 if statistic.name == "electricity_tariff" else 5
            lines.append(f"{statistic.obis[0]}({int(statistics[statistic.name]):0{width}d})")
    pairs: dict[str, list[str]] = {}  # OBIS code -> its parenthesised values (a code may carry two)
    for spec in schema.fields:
        value = reading.values.get(spec.name)
        if value is None or not spec.obis:
            continue
        text = (
            p1_timestamp(value)
            if isinstance(value, dt.datetime)
            else UNIT_FORMATS.get(spec.unit, "{:06.3f}").format(value)
        )
        slots = pairs.setdefault(spec.obis[0], [])
        slots.extend([""] * (spec.value_index + 1 - len(slots)))
        slots[spec.value_index] = text
    lines += [f"{code}{''.join(f'({v})' for v in values)}" for code, values in pairs.items()]
    for medium, (channel, device_type) in MBUS_CHANNELS.items():
        value_field, time_field = schema.by_mbus.get((medium, "value")), schema.by_mbus.get((medium, "time"))
        value = reading.values.get(value_field.name) if value_field else None
        when = reading.values.get(time_field.name) if time_field else None
        if value_field is not None and value is not None and isinstance(when, dt.datetime):
            lines.append(f"0-{channel}:24.1.0({device_type:03d})")
            lines.append(f"0-{channel}:24.2.1({p1_timestamp(when)})({UNIT_FORMATS[value_field.unit].format(value)})")
    body = "\r\n".join(lines) + "\r\n!"
    return f"{body}{crc16_arc(body.encode('latin-1')):04X}\r\n"
