"""Every reading field and meter statistic, described once (specification as data).

One row says where a field comes from in a telegram (OBIS code and value position, or an M-Bus
device), its unit and value type, its precision, whether a v2 POST requires or accepts it, whether
the v2 reading shows it, its MQTT topic and which statistic it feeds. The telegram parser, the
line-protocol writer, the v2 validators, the output formats, the OpenAPI document, the MQTT topics
and the statistics Flux are all derived from a ReadingSchema built from these rows, so adding a
field means adding one row.

Rows are in the order DSMR-reader's API shows the fields. `present` (the bit mask stored with every
reading, see dsmr_ts.influx.lineprotocol) numbers the rows by position: append new rows at the end.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterable


class Kind(enum.Enum):
    DECIMAL = "decimal"  # a float in InfluxDB, a decimal string in the API
    INTEGER = "integer"  # an integer everywhere
    DATETIME = "datetime"  # Unix seconds (integer) in InfluxDB, ISO 8601 in the API
    TEXT = "text"  # meter statistics only (the DSMR version)


class Post(enum.Enum):
    REQUIRED = "required"
    OPTIONAL = "optional"
    REFUSED = "refused"  # only from telegrams; a v2 POST cannot set it


@dataclass(frozen=True)
class ReadingField:
    name: str  # API, InfluxDB field and MQTT name
    unit: str = ""  # stored and served in this unit; telegram values in another unit are converted
    kind: Kind = Kind.DECIMAL
    places: int = 3  # decimals in the API (and at most this many in a v2 POST)
    max_digits: int = 9  # v2 POST: digits in total, as DSMR-reader's DecimalField(max_digits, places)
    minimum: int | None = None  # INTEGER bounds in a v2 POST
    maximum: int | None = None
    obis: tuple[str, ...] = ()  # OBIS codes it is read from (the first present wins)
    # OBIS codes whose values are added when the first of `obis` is present (E.ON Hungary's tariff
    # registers 3 and 4 go with tariffs 1 and 2, so the tariffs still add up to the meter's total)
    adds: tuple[str, ...] = ()
    value_index: int = 0  # which parenthesised value of that line
    mbus: tuple[str, str] | None = None  # (medium, "value" | "time") of an M-Bus device: gas, water, heat
    post: Post = Post.OPTIONAL
    in_api: bool = True  # part of the v2 reading (GET, POST answer, MQTT json)
    zero_when_missing: bool = False  # a telegram without it reads 0 (the tariff-2 registers)
    usage: str | None = None  # the statistics field whose usage this meter position gives
    # consumption/electricity (one row per minute): (its name there, "last" for a meter position or
    # "mean" for power, voltage and current over the minute's readings)
    per_minute: tuple[str, str] | None = None
    description: str = ""

    @property
    def mqtt_topic(self) -> str | None:
        """The split topic under `<prefix>/reading/` (DSMR-reader publishes every API field)."""
        return self.name if self.in_api else None


def _phases(template: str, codes: tuple[str, str, str], **options) -> list[ReadingField]:
    """Three rows, one per phase; each averaged per minute under its own name."""
    return [
        ReadingField(template.format(n=n), obis=(code,), per_minute=(template.format(n=n), "mean"), **options)
        for n, code in zip((1, 2, 3), codes)
    ]


KW: dict[str, Any] = {"unit": "kW"}
READING_FIELDS: tuple[ReadingField, ...] = (
    ReadingField(
        "electricity_delivered_1",
        "kWh",
        obis=("1-0:1.8.1", "1-0:1.8.0"),
        adds=("1-0:1.8.3",),
        post=Post.REQUIRED,
        usage="electricity1",
        per_minute=("delivered_1", "last"),
        description="meter position delivered to you, tariff 1 (low)",
    ),
    ReadingField(
        "electricity_returned_1",
        "kWh",
        obis=("1-0:2.8.1", "1-0:2.8.0"),
        adds=("1-0:2.8.3",),
        post=Post.REQUIRED,
        usage="electricity1_returned",
        per_minute=("returned_1", "last"),
        description="meter position returned by you, tariff 1",
    ),
    ReadingField(
        "electricity_delivered_2",
        "kWh",
        obis=("1-0:1.8.2",),
        adds=("1-0:1.8.4",),
        post=Post.REQUIRED,
        zero_when_missing=True,
        usage="electricity2",
        per_minute=("delivered_2", "last"),
        description="meter position delivered to you, tariff 2 (normal)",
    ),
    ReadingField(
        "electricity_returned_2",
        "kWh",
        obis=("1-0:2.8.2",),
        adds=("1-0:2.8.4",),
        post=Post.REQUIRED,
        zero_when_missing=True,
        usage="electricity2_returned",
        per_minute=("returned_2", "last"),
        description="meter position returned by you, tariff 2",
    ),
    ReadingField(
        "electricity_currently_delivered",
        obis=("1-0:1.7.0",),
        post=Post.REQUIRED,
        per_minute=("currently_delivered", "mean"),
        **KW,
    ),
    ReadingField(
        "electricity_currently_returned",
        obis=("1-0:2.7.0",),
        post=Post.REQUIRED,
        per_minute=("currently_returned", "mean"),
        **KW,
    ),
    *_phases("phase_currently_delivered_l{n}", ("1-0:21.7.0", "1-0:41.7.0", "1-0:61.7.0"), **KW),
    ReadingField(
        "extra_device_timestamp",
        kind=Kind.DATETIME,
        mbus=("gas", "time"),
        description="when the gas meter took extra_device_delivered",
    ),
    ReadingField("extra_device_delivered", "m3", mbus=("gas", "value"), usage="gas", description="gas meter position"),
    *_phases("phase_currently_returned_l{n}", ("1-0:22.7.0", "1-0:42.7.0", "1-0:62.7.0"), **KW),
    *_phases("phase_voltage_l{n}", ("1-0:32.7.0", "1-0:52.7.0", "1-0:72.7.0"), unit="V", places=1, max_digits=4),
    *_phases(
        "phase_power_current_l{n}",
        ("1-0:31.7.0", "1-0:51.7.0", "1-0:71.7.0"),
        unit="A",
        kind=Kind.INTEGER,
        places=0,
        minimum=0,
        maximum=999,
    ),
    # Not in DSMR-reader's reading: stored (InfluxDB, Grafana) but not part of the v2 reading.
    ReadingField(
        "water_delivered",
        "m3",
        mbus=("water", "value"),
        post=Post.REFUSED,
        in_api=False,
        description="water meter position (an M-Bus device of type 7)",
    ),
    ReadingField("water_timestamp", kind=Kind.DATETIME, mbus=("water", "time"), post=Post.REFUSED, in_api=False),
    ReadingField(
        "heat_delivered",
        "GJ",
        mbus=("heat", "value"),
        post=Post.REFUSED,
        in_api=False,
        description="heat meter position (an M-Bus device of type 4 or 12)",
    ),
    ReadingField("heat_timestamp", kind=Kind.DATETIME, mbus=("heat", "time"), post=Post.REFUSED, in_api=False),
    ReadingField(
        "electricity_average_demand",
        obis=("1-0:1.4.0",),
        post=Post.REFUSED,
        in_api=False,
        **KW,
        description="Fluvius: average power of the current quarter hour",
    ),
    ReadingField(
        "electricity_month_peak",
        obis=("1-0:1.6.0",),
        value_index=1,
        post=Post.REFUSED,
        in_api=False,
        **KW,
        description="Fluvius: this month's highest quarter-hour average",
    ),
    ReadingField(
        "electricity_month_peak_timestamp",
        kind=Kind.DATETIME,
        obis=("1-0:1.6.0",),
        value_index=0,
        post=Post.REFUSED,
        in_api=False,
        description="Fluvius: when this month's peak was",
    ),
)

# M-Bus device types (EN 13757-3 medium codes, as 0-n:24.1.0 sends them) -> the medium of our fields.
MBUS_MEDIA: dict[int, str] = {3: "gas", 7: "water", 22: "water", 4: "heat", 12: "heat"}


@dataclass(frozen=True)
class MeterStatistic:
    """A counter or setting the meter reports; kept from its latest telegram."""

    name: str
    obis: tuple[str, ...]
    kind: Kind = Kind.INTEGER


METER_STATISTICS: tuple[MeterStatistic, ...] = (
    MeterStatistic("dsmr_version", ("1-3:0.2.8", "0-0:96.1.4"), Kind.TEXT),  # 96.1.4: Fluvius' e-MUCS version
    MeterStatistic("electricity_tariff", ("0-0:96.14.0",)),
    MeterStatistic("power_failure_count", ("0-0:96.7.21",)),
    MeterStatistic("long_power_failure_count", ("0-0:96.7.9",)),
    MeterStatistic("voltage_sag_count_l1", ("1-0:32.32.0",)),
    MeterStatistic("voltage_sag_count_l2", ("1-0:52.32.0",)),
    MeterStatistic("voltage_sag_count_l3", ("1-0:72.32.0",)),
    MeterStatistic("voltage_swell_count_l1", ("1-0:32.36.0",)),
    MeterStatistic("voltage_swell_count_l2", ("1-0:52.36.0",)),
    MeterStatistic("voltage_swell_count_l3", ("1-0:72.36.0",)),
)


class ReadingSchema:
    """The views every part of dsmr-ts derives from the rows. Build one per table (the default is
    SCHEMA); it is immutable and cheap to share."""

    def __init__(
        self, fields: Iterable[ReadingField] = READING_FIELDS, statistics: Iterable[MeterStatistic] = METER_STATISTICS
    ):
        self.fields = tuple(fields)
        self.statistics = tuple(statistics)
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError("two reading fields have the same name")
        self.by_name = {f.name: f for f in self.fields}
        self.bits = {f.name: 1 << index for index, f in enumerate(self.fields)}
        # OBIS code -> the fields read from it (in table order; a code can feed two fields).
        self.by_obis: dict[str, list[ReadingField]] = {}
        for f in self.fields:
            for code in f.obis:
                self.by_obis.setdefault(code, []).append(f)
        self.summed = tuple(f for f in self.fields if f.adds)
        self.by_mbus = {f.mbus: f for f in self.fields if f.mbus}
        # An M-Bus value and the time it was taken go together: (value field, time field) per medium.
        self.mbus_pairs = tuple(
            (self.by_mbus[(medium, "value")].name, self.by_mbus[(medium, "time")].name)
            for medium, part in self.by_mbus
            if part == "value" and (medium, "time") in self.by_mbus
        )
        self.api_fields = tuple(f for f in self.fields if f.in_api)
        # consumption/electricity: (field, its name there, "last" or "mean") per column
        self.minute_columns = tuple((f, *f.per_minute) for f in self.fields if f.per_minute)
        self.post_fields = tuple(f for f in self.fields if f.post is not Post.REFUSED)
        self.required = tuple(f.name for f in self.fields if f.post is Post.REQUIRED)
        self.zero_when_missing = tuple(f.name for f in self.fields if f.zero_when_missing)
        self.usage = {f.name: f.usage for f in self.fields if f.usage}  # meter position -> statistics field
        self.statistics_by_obis = {code: s for s in self.statistics for code in s.obis}

    def with_fields(self, *extra: ReadingField) -> ReadingSchema:
        """A copy with more rows (appended, so stored bit masks keep their meaning)."""
        return ReadingSchema((*self.fields, *extra), self.statistics)


SCHEMA = ReadingSchema()
