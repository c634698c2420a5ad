"""`dsmr-ts import dsmr-reader --database`: DSMR-reader's own database read directly, against a
real PostgreSQL and a real MariaDB (Debian) holding its tables, and a SQLite file."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess

import pytest
from dsmr_reader_db import MariaDB, Postgres, reading_rows, sqlite_database
from helpers import REPO, dsmr_ts_command, flux, stored_reading

from dsmr_ts.influx.store import Store

UTC = dt.timezone.utc
START = dt.datetime(2024, 3, 5, 10, 0, 0, tzinfo=UTC)
COUNT = 12_000  # 10-second readings: 33 hours, more than one write batch in flight
DAYS = [  # DSMR-reader keeps day statistics of days whose readings it deleted
    (
        dt.date(2024, 3, 1),
        "3.14",
        "7.500",
        "1.250",
        "0.000",
        "0.500",
        "1.88",
        "0.33",
        "2.000",
        "2.40",
        "0.50",
        "-1.5",
        "7.9",
        "3.2",
    ),
    (
        dt.date(2024, 3, 2),
        "2.00",
        "8.250",
        "0.000",
        "0.000",
        "0.000",
        "2.06",
        "0.00",
        None,
        None,
        "0.50",
        None,
        None,
        None,
    ),
]


@pytest.fixture(scope="module")
def postgres():
    database = Postgres()
    database.load(reading_rows(COUNT, START), DAYS, dsmr_version="42")
    yield database
    database.stop()


def run(config_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DSMR_TS_", "DSMR_READER_"))}
    return subprocess.run(
        dsmr_ts_command("--config", str(config_path), "import", "dsmr-reader", *args),
        cwd=REPO,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def check_imported(store: Store, meter: str) -> None:
    assert store.readings.brute_force_count(meter, None, None) == COUNT
    first = stored_reading(store, meter, START)
    assert first["electricity_delivered_1"] == 1000.0 and first["electricity_delivered_2"] == 2000.0
    assert first["phase_voltage_l1"] == 230.0 and first["phase_power_current_l1"] == 0
    assert "phase_voltage_l2" not in first and "phase_currently_delivered_l2" not in first  # NULL stays absent
    later = stored_reading(store, meter, START + dt.timedelta(seconds=10 * 4001))
    assert later["electricity_delivered_1"] == pytest.approx(1004.001)
    assert later["phase_power_current_l1"] == 4001 % 3
    # DSMR 4 (dsmr_version 42): the hourly gas value stamped at 11:00 is booked at 10:00.
    gas = store.readings.latest_gas(meter, count=50)
    assert (START + dt.timedelta(hours=1) - dt.timedelta(hours=1), 500.1) in gas
    # Statistics of the imported range: 360 readings in the first hour, 0.001 kWh each step.
    hours = flux(
        store,
        "from(bucket: stats) |> range(start: 2024-03-05T10:00:00Z, stop: 2024-03-05T11:00:00Z)"
        ' |> filter(fn: (r) => r._measurement == "hour" and r.meter == meter'
        ' and (r._field == "electricity1" or r._field == "reading_count"))',
        {"meter": meter},
    )
    assert {row["_field"]: round(row["_value"], 3) for row in hours} == {"electricity1": 0.359, "reading_count": 360}


def test_import_from_postgresql_then_resume(postgres, import_target, capsys):
    config_path, store = import_target
    first = run(config_path, "--meter", "E-PG", DSMR_READER_DATABASE=postgres.url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"imported {COUNT} readings as meter E-PG"
    assert f"{COUNT}/{COUNT} readings" in first.stderr and "ETA" in first.stderr
    check_imported(store, "E-PG")
    # The days before the oldest reading, with DSMR-reader's own costs and temperatures.
    days = flux(
        store,
        "from(bucket: stats) |> range(start: 2024-02-29T00:00:00Z, stop: 2024-03-02T23:00:00Z)"
        ' |> filter(fn: (r) => r._measurement == "day" and r.meter == "E-PG")',
        {},
    )
    by_field = {(row["_time"].date().isoformat(), row["_field"]): row["_value"] for row in days}
    assert by_field[("2024-02-29", "electricity1")] == 7.5  # local midnight of March 1st is 23:00 UTC
    assert by_field[("2024-02-29", "total_cost")] == 3.14 and by_field[("2024-02-29", "lowest_temperature")] == -1.5
    assert ("2024-03-01", "gas") not in by_field  # NULL stays absent
    # Again: it continues from its cursor (the newest reading stored), no duplicates.
    again = run(config_path, "--database", postgres.url, "--meter", "E-PG")
    assert again.returncode == 0, again.stderr
    assert int(again.stdout.split()[1]) <= 1  # only the newest reading, at the cursor itself
    assert store.readings.brute_force_count("E-PG", None, None) == COUNT


def test_import_from_mariadb(import_target):
    database = MariaDB()
    try:
        database.load(reading_rows(COUNT, START), DAYS)
        config_path, store = import_target
        result = run(config_path, "--database", database.url, "--meter", "E-MARIA")
        assert result.returncode == 0, result.stderr
    finally:
        database.stop()
    check_imported(store, "E-MARIA")


def test_import_from_sqlite(tmp_path, import_target):
    config_path, store = import_target
    url = sqlite_database(tmp_path / "db.sqlite3", reading_rows(COUNT, START), DAYS)
    # A meter name that line protocol must escape (the database writes the lines, dsmr-ts their head).
    result = run(config_path, "--database", url, "--meter", "E SQLITE,2=b")
    assert result.returncode == 0, result.stderr
    check_imported(store, "E SQLITE,2=b")


def test_a_database_that_cannot_be_read_is_one_line_without_the_password(import_target, postgres):
    config_path, _ = import_target
    wrong = postgres.url.replace("postgres@", "postgres:s3cret-pw@").replace("/dsmrreader", "/nosuchdb")
    result = run(config_path, DSMR_READER_DATABASE=wrong)
    assert result.returncode == 1
    assert "import stopped (run it again to continue): cannot open postgresql://postgres@127.0.0.1:" in result.stderr
    assert "s3cret-pw" not in result.stderr and "Traceback" not in result.stderr
    missing = run(config_path, "--database", f"sqlite://{config_path.parent / 'missing.sqlite3'}")
    assert missing.returncode == 1 and "unable to open database file" in missing.stderr
    sqlite3.connect(config_path.parent / "other.sqlite3").execute("CREATE TABLE t (x)").connection.commit()
    other = run(config_path, "--database", f"sqlite://{config_path.parent / 'other.sqlite3'}")
    assert other.returncode == 1 and "has no table dsmr_datalogger_dsmrreading" in other.stderr
