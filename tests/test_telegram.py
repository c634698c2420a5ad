"""Telegram parser: every sample in tests/telegrams against its EXPECTED.md, and each rule."""

from __future__ import annotations

import datetime as dt

import pytest
from helpers import SAMPLE_TELEGRAMS, TELEGRAMS, sample_telegram

from dsmr_ts.telegram import (
    CrcError,
    EncodingError,
    FramingError,
    ParseError,
    Reading,
    TimestampError,
    build_telegram,
    check_not_in_future,
    crc16_arc,
    gas_is_hourly,
    parse_p1_timestamp,
    parse_telegram,
)

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def parse_file(name: str):
    return parse_telegram(sample_telegram(name), now=NOW)


# file -> (timestamp, d1, d2, r1, r2, currently delivered, currently returned, gas, gas time)
# taken from EXPECTED.md; None where EXPECTED.md pins nothing (checked against the telegram below).
EXPECTED = {
    "dsmr50_nl_1.txt": (
        utc(2010, 12, 9, 10, 30, 20),
        123456.789,
        123456.789,
        123456.789,
        123456.789,
        1.193,
        0.0,
        12785.123,
        utc(2010, 12, 9, 10, 25, 0),
    ),
    "fluvius_be_1.txt": (
        utc(2020, 8, 7, 6, 27, 11),
        1924.771,
        2549.919,
        1968.710,
        692.984,
        0.0,
        0.611,
        1414.287,
        utc(2020, 8, 7, 6, 25, 2),
    ),
    "smarty_lu_1.txt": (utc(2019, 10, 31, 13, 22, 39), 5675.956, 0.0, 0.002, 0.0, 3.074, 0.0, None, None),
    "dsmr22_nl_1.txt": (NOW, 1234.784, 4321.725, 0.0, 0.002, 0.36, 0.0, 7890.693, utc(2016, 4, 10, 11, 0, 0)),
    "dsmr40_nl_1.txt": (
        utc(2015, 7, 1, 17, 29, 59),
        510.747,
        500.013,
        0.123,
        123.456,
        0.192,
        0.123,
        845.206,
        utc(2015, 7, 1, 17, 0, 0),
    ),
    "dsmr42_nl_1.txt": (utc(2016, 3, 3, 15, 43, 47), 1073.079, 1263.199, 0.0, 0.0, 0.143, 0.0, None, None),
    "dsmr42_nl_2.txt": (
        utc(2016, 2, 10, 19, 30, 34),
        756.849,
        714.405,
        0.0,
        0.0,
        0.111,
        0.0,
        1197.484,
        utc(2016, 2, 10, 19, 0, 0),
    ),
    "dsmr42_nl_3.txt": (
        utc(2016, 3, 17, 21, 10, 58),
        1255.252,
        1284.838,
        0.0,
        0.0,
        0.187,
        0.0,
        1438.997,
        utc(2016, 3, 17, 21, 0, 0),
    ),
    "dsmr50_nl_2.txt": (
        utc(2019, 11, 8, 13, 55, 19),
        1043.936,
        870.706,
        0.0,
        0.0,
        0.189,
        0.0,
        241.773,
        utc(2019, 11, 8, 13, 55, 5),
    ),
    "dsmr50_nl_3.txt": (
        utc(2017, 1, 10, 19, 40, 57),
        9012.345,
        9067.890,
        9123.456,
        9789.012,
        0.320,
        0.0,
        123.456,
        utc(2017, 1, 10, 19, 40, 9),
    ),
    "fluvius_be_2.txt": (
        utc(2019, 8, 21, 19, 0, 25),
        260.129,
        338.681,
        0.010,
        0.425,
        0.261,
        0.0,
        29.553,
        utc(2019, 8, 21, 19, 0, 11),
    ),
    "fluvius_be_3.txt": (utc(2020, 3, 5, 21, 29, 45), 172.987, 160.643, 23.457, 4.819, 0.638, 0.0, None, None),
    "fluvius_be_4.txt": (utc(2023, 2, 1, 14, 50, 56), 143.608, 170.853, 2.963, 0.427, 0.182, 0.0, None, None),
    "fluvius_be_5.txt": (
        utc(2023, 1, 19, 11, 46, 38),
        4423.770,
        2607.237,
        1194.693,
        755.554,
        0.0,
        0.204,
        734.607,
        utc(2023, 1, 19, 11, 46, 16),
    ),
    "kamstrup_se_1.txt": (utc(2021, 11, 15, 9, 9, 40), 3.997, 0.0, 0.0, 0.0, 0.0, 0.0, None, None),
}


def test_every_sample_file_has_an_expectation():
    assert sorted(EXPECTED) == sorted(SAMPLE_TELEGRAMS) == sorted(p.name for p in TELEGRAMS.glob("*.txt"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_telegram_main_values(name):
    timestamp, d1, d2, r1, r2, now_del, now_ret, gas, gas_time = EXPECTED[name]
    reading = parse_file(name).reading
    assert reading.timestamp == timestamp
    v = reading.values
    assert (v["electricity_delivered_1"], v["electricity_delivered_2"]) == (d1, d2)
    assert (v["electricity_returned_1"], v["electricity_returned_2"]) == (r1, r2)
    assert (v["electricity_currently_delivered"], v["electricity_currently_returned"]) == (now_del, now_ret)
    assert (v.get("extra_device_delivered"), v.get("extra_device_timestamp")) == (gas, gas_time)


def test_dsmr50_nl_1_details():
    telegram = parse_file("dsmr50_nl_1.txt")
    v = telegram.reading.values
    assert [v[f"phase_currently_delivered_l{n}"] for n in (1, 2, 3)] == [1.111, 2.222, 3.333]
    assert [v[f"phase_currently_returned_l{n}"] for n in (1, 2, 3)] == [4.444, 5.555, 6.666]
    assert [v[f"phase_voltage_l{n}"] for n in (1, 2, 3)] == [220.1, 220.2, 220.3]
    assert [v[f"phase_power_current_l{n}"] for n in (1, 2, 3)] == [1, 2, 3]
    assert telegram.reading.meter == "K8EG004046395507"  # hex-encoded equipment id, decoded
    assert telegram.statistics == {
        "dsmr_version": "50",
        "electricity_tariff": 2,
        "power_failure_count": 4,
        "long_power_failure_count": 2,
        "voltage_sag_count_l1": 2,
        "voltage_sag_count_l2": 1,
        "voltage_sag_count_l3": 0,
        "voltage_swell_count_l1": 0,
        "voltage_swell_count_l2": 3,
        "voltage_swell_count_l3": 0,
    }
    assert telegram.header == "ISk5\x02MT382-1000"


def test_fluvius_be_1_details():
    telegram = parse_file("fluvius_be_1.txt")
    v = telegram.reading.values
    assert v["phase_voltage_l1"] == 235.6
    assert "phase_voltage_l2" not in v and "phase_voltage_l3" not in v  # absent, not 0
    assert v["phase_power_current_l1"] == 2
    assert telegram.statistics["electricity_tariff"] == 1


def test_fluvius_be_4_currents_truncated_and_zero_voltage_kept():
    v = parse_file("fluvius_be_4.txt").reading.values
    assert [v[f"phase_power_current_l{n}"] for n in (1, 2, 3)] == [1, 1, 1]
    assert v["phase_voltage_l2"] == 0.0


def test_fluvius_be_5_currents():
    v = parse_file("fluvius_be_5.txt").reading.values
    assert [v[f"phase_power_current_l{n}"] for n in (1, 2, 3)] == [2, 0, 0]


def test_smarty_and_kamstrup():
    smarty = parse_file("smarty_lu_1.txt")
    assert smarty.statistics["dsmr_version"] == "42"
    assert smarty.reading.meter == "12345678901234567890123456789012"  # from 0-0:42.0.0
    kamstrup = parse_file("kamstrup_se_1.txt").reading
    assert [kamstrup.values[f"phase_voltage_l{n}"] for n in (1, 2, 3)] == [238.0, 238.0, 240.7]
    assert kamstrup.values["phase_power_current_l1"] == 0
    assert kamstrup.meter == "default"


def test_dsmr22_tariff_and_no_crc_needed():
    telegram = parse_file("dsmr22_nl_1.txt")
    assert telegram.statistics["electricity_tariff"] == 1


def test_dsmr40_details():
    v = parse_file("dsmr40_nl_1.txt").reading.values
    assert [v[f"phase_power_current_l{n}"] for n in (1, 2, 3)] == [0, 0, 1]
    assert [v[f"phase_currently_returned_l{n}"] for n in (1, 2, 3)] == [0.111, 0.555, 0.999]


DOC_EXAMPLE = "".join(
    [
        "/KFM5KAIFA-METER\r\n",
        "\r\n",
        "1-3:0.2.8(42)\r\n",
        "0-0:1.0.0(160303164347W)\r\n",
        "0-0:96.1.1(*******************************)\r\n",
        "1-0:1.8.1(001073.079*kWh)\r\n",
        "1-0:1.8.2(001263.199*kWh)\r\n",
        "1-0:2.8.1(000000.000*kWh)\r\n",
        "1-0:2.8.2(000000.000*kWh)\r\n",
        "0-0:96.14.0(0002)\r\n",
        "1-0:1.7.0(00.143*kW)\r\n",
        "1-0:2.7.0(00.000*kW)\r\n",
        "0-0:96.7.21(00006)\r\n",
        "0-0:96.7.9(00003)\r\n",
        "1-0:99.97.0(1)(0-0:96.7.19)(000101000001W)(2147483647*s)\r\n",
        "1-0:32.32.0(00000)\r\n",
        "1-0:32.36.0(00000)\r\n",
        "0-0:96.13.1()\r\n",
        "0-0:96.13.0()\r\n",
        "1-0:31.7.0(000*A)\r\n",
        "1-0:21.7.0(00.143*kW)\r\n",
        "1-0:22.7.0(00.000*kW)\r\n",
        "!74B0\n",
    ]
)


def test_documentation_example_is_rejected_with_a_clear_crc_message():
    with pytest.raises(CrcError) as info:
        parse_telegram(DOC_EXAMPLE)
    assert str(info.value) == "CRC mismatch: telegram says 74B0, computed A97E"


def test_crc16_arc_check_value():
    assert crc16_arc(b"123456789") == 0xBB3D  # the catalogued check value of CRC-16/ARC


def reading_at(timestamp: dt.datetime, **values: float) -> Reading:
    base = {
        "electricity_delivered_1": 1.0,
        "electricity_delivered_2": 2.0,
        "electricity_returned_1": 0.0,
        "electricity_returned_2": 0.0,
        "electricity_currently_delivered": 0.5,
        "electricity_currently_returned": 0.0,
    }
    return Reading(timestamp=timestamp, meter="TESTMETER", values={**base, **values})


def resign(text: str) -> str:
    """Recompute the CRC of a (modified) telegram."""
    body = text[: text.index("!") + 1]
    return f"{body}{crc16_arc(body.encode('latin-1')):04X}\r\n"


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("", FramingError, "no telegram start '/'"),
        ("garbage without start", FramingError, "no telegram start '/'"),
        ("/XMX5\r\n\r\n1-0:1.8.1(000001.000*kWh)\r\n", FramingError, "no telegram end '!'"),
        ("/XMX5\r\n\r\n1-3:0.2.8(50)\r\n1-0:1.8.1(000001.000*kWh)\r\n!\r\n", CrcError, "CRC missing"),
        ("/XMX5\r\n\r\n1-3:0.2.8(50)\r\n!12G4\r\n", CrcError, "CRC unreadable"),
        ("/XMX5\r\n\r\n1-0:2.8.1(000001.000*kWh)\r\n!\r\n", ParseError, "telegram has no electricity_delivered_1"),
        ("/XMX5\r\n\r\n1-0:1.8.1(€)\r\n!\r\n", EncodingError, "not a latin-1 character"),
    ],
)
def test_rejections_say_what_is_wrong(text, error, message):
    with pytest.raises(error, match=message):
        parse_telegram(text)


def test_timestamp_far_in_the_future_is_rejected():
    telegram = parse_telegram(build_telegram(reading_at(utc(2099, 1, 1, 0, 0, 0))))
    with pytest.raises(TimestampError, match=r"timestamp 2099-01-01 00:00:00Z is more than 24 h in the future"):
        check_not_in_future(telegram.reading, now=NOW)
    check_not_in_future(parse_telegram(build_telegram(reading_at(NOW + dt.timedelta(hours=23)))).reading, now=NOW)


def test_autumn_hour_is_decided_by_the_flag():
    # 2026-10-25 02:30 local happens twice: 00:30 UTC (summer, S) and 01:30 UTC (winter, W).
    assert parse_p1_timestamp("261025023000S") == utc(2026, 10, 25, 0, 30, 0)
    assert parse_p1_timestamp("261025023000W") == utc(2026, 10, 25, 1, 30, 0)
    assert parse_p1_timestamp("260701120000S") == utc(2026, 7, 1, 10, 0, 0)
    assert parse_p1_timestamp("261301120000W") is None  # month 13
    assert parse_p1_timestamp("nonsense") is None


def test_unusable_timestamp_means_now():
    text = build_telegram(reading_at(utc(2020, 1, 1, 12, 0, 0)))
    broken = resign(text.replace("0-0:1.0.0(200101130000W)", "0-0:1.0.0(209999999999W)"))
    assert parse_telegram(broken, now=NOW).reading.timestamp == NOW


def test_last_line_wins_and_garbled_lines_are_skipped():
    text = build_telegram(reading_at(utc(2020, 1, 1, 12, 0, 0)))
    text = text.replace(
        "1-0:1.7.0(00.500*kW)", "1-0:1.7.0(00.500*kW)\r\n1-0:1.7.0(00.750*kW)\r\n1-0:21.7.0(12.x*kW\r\nrubbish"
    )
    reading = parse_telegram(resign(text)).reading
    assert reading.values["electricity_currently_delivered"] == 0.75
    assert "phase_currently_delivered_l1" not in reading.values


def test_unparseable_value_is_skipped_and_the_rest_kept():
    text = build_telegram(reading_at(utc(2020, 1, 1, 12, 0, 0), phase_voltage_l1=230.0))
    reading = parse_telegram(resign(text.replace("1-0:32.7.0(230.0*V)", "1-0:32.7.0(abc*V)"))).reading
    assert "phase_voltage_l1" not in reading.values
    assert reading.values["electricity_delivered_1"] == 1.0


def test_nul_bytes_around_are_ignored():
    text = build_telegram(reading_at(utc(2020, 1, 1, 12, 0, 0)))
    assert parse_telegram("\x00\x00" + text + "\x00").reading.timestamp == utc(2020, 1, 1, 12, 0, 0)


def test_build_telegram_round_trips():
    reading = reading_at(utc(2026, 3, 29, 1, 0, 0), phase_voltage_l2=231.5, phase_power_current_l3=7)
    reading.meter = "E0043007052870318"
    reading.values.update(extra_device_timestamp=utc(2026, 3, 29, 0, 55, 0), extra_device_delivered=1234.567)
    assert parse_telegram(build_telegram(reading)).reading == reading


def test_meter_id_with_control_characters_becomes_hex():
    text = build_telegram(reading_at(utc(2020, 1, 1, 12, 0, 0)))
    text = text.replace("0-0:96.1.1(544553544D45544552)", "0-0:96.1.1(A\tB)")
    assert parse_telegram(resign(text)).reading.meter == "410942"  # an InfluxDB tag must be printable


# --- gas as DSMR-reader books it, and device clocks that are far off ------------------------------


def with_gas(timestamp: dt.datetime, gas_time: dt.datetime) -> str:
    reading = reading_at(timestamp)
    reading.values.update(extra_device_delivered=1234.5, extra_device_timestamp=gas_time)
    return build_telegram(reading)


def test_a_gas_value_far_from_the_telegrams_own_time_is_ignored_with_a_reason():
    telegram = parse_telegram(with_gas(utc(2026, 11, 25, 11, 0, 0), utc(2010, 1, 1, 0, 0, 0)), now=NOW)
    assert "extra_device_delivered" not in telegram.reading.values
    assert "extra_device_timestamp" not in telegram.reading.values
    assert telegram.reading.values["electricity_delivered_1"] == 1.0  # the rest of the telegram is kept
    (reason,) = telegram.ignored
    assert reason.startswith("gas value of 2010-01-01 00:00Z ignored") and "2026-11-25 11:00Z" in reason


@pytest.mark.parametrize("hours", [-23, 0, 23])
def test_a_gas_value_within_a_day_of_the_telegram_is_kept(hours):
    timestamp = utc(2026, 11, 25, 11, 0, 0)
    telegram = parse_telegram(with_gas(timestamp, timestamp + dt.timedelta(hours=hours)), now=NOW)
    assert telegram.reading.gas == (timestamp + dt.timedelta(hours=hours), 1234.5) and not telegram.ignored


def test_a_gas_value_from_the_future_is_ignored():
    timestamp = utc(2026, 11, 25, 11, 0, 0)  # the telegram's own time is right, its gas clock runs a year ahead
    telegram = parse_telegram(with_gas(timestamp, utc(2027, 11, 25, 11, 0, 0)), now=NOW)
    assert telegram.reading.gas is None and telegram.ignored


def test_gas_is_hourly_only_for_dsmr_4_and_the_dsmr_2_2_form():
    assert gas_is_hourly("42") and gas_is_hourly("40")
    for version in (None, "", "50", "5", "4", "0.0.5", "unknown"):  # NULL in DSMR-reader: booked as stamped
        assert not gas_is_hourly(version), version
    assert parse_file("dsmr22_nl_1.txt").hourly_gas  # no version line, but DSMR 2.2's own gas form
    assert parse_file("dsmr40_nl_1.txt").hourly_gas
    assert not parse_file("dsmr50_nl_1.txt").hourly_gas
    assert not parse_file("fluvius_be_5.txt").hourly_gas
    text = with_gas(utc(2026, 11, 25, 11, 0, 0), utc(2026, 11, 25, 10, 55, 0)).replace("1-3:0.2.8(50)\r\n", "")
    no_version = parse_telegram(resign(text), now=NOW)
    assert "dsmr_version" not in no_version.statistics and not no_version.hourly_gas
    assert no_version.reading.gas == (utc(2026, 11, 25, 10, 55, 0), 1234.5)
