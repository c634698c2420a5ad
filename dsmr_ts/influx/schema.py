"""The point schema: how readings and meter statistics become InfluxDB line protocol.

Field types are fixed here once (InfluxDB fixes a field's type per shard on first write):
floats for energy, power and voltage; integers for currents and the gas timestamp.
"""

from __future__ import annotations

import datetime as dt

from dsmr_ts.telegram import Reading

READING = "reading"
METER_STATISTICS = "meter_statistics"
# Gas meter positions at the time they are booked (see gas_line); the statistics use these.
GAS = "gas"
GAS_FIELD = "extra_device_delivered"

FLOAT_FIELDS = (
    "electricity_delivered_1",
    "electricity_returned_1",
    "electricity_delivered_2",
    "electricity_returned_2",
    "electricity_currently_delivered",
    "electricity_currently_returned",
    "phase_currently_delivered_l1",
    "phase_currently_delivered_l2",
    "phase_currently_delivered_l3",
    "phase_currently_returned_l1",
    "phase_currently_returned_l2",
    "phase_currently_returned_l3",
    "phase_voltage_l1",
    "phase_voltage_l2",
    "phase_voltage_l3",
    "extra_device_delivered",
)
INT_FIELDS = (
    "phase_power_current_l1",
    "phase_power_current_l2",
    "phase_power_current_l3",
    "extra_device_timestamp",  # Unix seconds
)
READING_FIELDS = FLOAT_FIELDS + INT_FIELDS

STATISTICS_STRING_FIELDS = ("dsmr_version",)
REJECTED_FIELD = "rejected_telegrams"
NS = 1_000_000_000  # every line is written with nanosecond precision


def escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _string_field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unix(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def reading_fields(reading: Reading) -> dict[str, float | int]:
    """All stored fields of a reading, typed as the schema says (absent values stay absent)."""
    fields: dict[str, float | int] = {}
    for name, value in reading.values.items():
        if name in FLOAT_FIELDS:
            fields[name] = float(value)
        elif name in INT_FIELDS:
            fields[name] = int(value)
    if reading.extra_device_delivered is not None and reading.extra_device_timestamp is not None:
        fields["extra_device_delivered"] = float(reading.extra_device_delivered)
        fields["extra_device_timestamp"] = _unix(reading.extra_device_timestamp)
    return fields


def _line(measurement: str, meter: str, fields: dict[str, float | int | str], seconds: int) -> str:
    parts = []
    for name, value in fields.items():
        if isinstance(value, str):
            parts.append(f"{name}={_string_field(value)}")
        elif isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{name}={value}i")
        else:
            parts.append(f"{name}={float(value)!r}")
    return f"{measurement},meter={escape_tag(meter)} {','.join(parts)} {seconds * NS}"


def reading_line(reading: Reading) -> str:
    """Line protocol for one reading (timestamps in whole seconds, written as ns)."""
    return _line(READING, reading.meter, reading_fields(reading), _unix(reading.timestamp))


def gas_line(reading: Reading, hourly: bool) -> str | None:
    """The reading's gas position as its own point, at the gas reading's timestamp.

    Meters that report gas hourly (DSMR 4, DSMR 2.2) stamp the value at the end of the hour it
    covers; like DSMR-reader it is booked one hour earlier, in the hour it was used."""
    if reading.extra_device_timestamp is None or reading.extra_device_delivered is None:
        return None
    booked = _unix(reading.extra_device_timestamp) - (3600 if hourly else 0)
    return _line(GAS, reading.meter, {GAS_FIELD: float(reading.extra_device_delivered)}, booked)


def statistics_line(meter: str, timestamp: dt.datetime, statistics: dict[str, str | int]) -> str | None:
    fields = {
        name: (str(value) if name in STATISTICS_STRING_FIELDS else int(value)) for name, value in statistics.items()
    }
    return _line(METER_STATISTICS, meter, fields, _unix(timestamp)) if fields else None


def rejected_line(meter: str, when: dt.datetime) -> str:
    """One rejected telegram. Microsecond timestamps keep simultaneous rejections apart, and a
    count is the sum over points, so concurrent workers never lose an increment."""
    micros = int(when.timestamp() * 1_000_000)
    return f"{METER_STATISTICS},meter={escape_tag(meter)} {REJECTED_FIELD}=1i {micros * 1000}"
