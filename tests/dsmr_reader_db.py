"""DSMR-reader's database for import tests and the import benchmark: a real PostgreSQL from Debian
(started here on a free loopback port, in a folder of its own, trust auth), or a SQLite file, with
DSMR-reader's tables as its Django migrations make them."""

from __future__ import annotations

import datetime as dt
import glob
import io
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

READING_COLUMNS = [  # name, PostgreSQL type (DSMR-reader v5's dsmr_datalogger_dsmrreading)
    ("timestamp", "timestamp with time zone NOT NULL"),
    ("electricity_delivered_1", "numeric(9,3) NOT NULL"),
    ("electricity_returned_1", "numeric(9,3) NOT NULL"),
    ("electricity_delivered_2", "numeric(9,3) NOT NULL"),
    ("electricity_returned_2", "numeric(9,3) NOT NULL"),
    ("electricity_currently_delivered", "numeric(9,3) NOT NULL"),
    ("electricity_currently_returned", "numeric(9,3) NOT NULL"),
    ("phase_currently_delivered_l1", "numeric(9,3)"),
    ("phase_currently_delivered_l2", "numeric(9,3)"),
    ("phase_currently_delivered_l3", "numeric(9,3)"),
    ("extra_device_timestamp", "timestamp with time zone"),
    ("extra_device_delivered", "numeric(9,3)"),
    ("phase_currently_returned_l1", "numeric(9,3)"),
    ("phase_currently_returned_l2", "numeric(9,3)"),
    ("phase_currently_returned_l3", "numeric(9,3)"),
    ("phase_voltage_l1", "numeric(4,1)"),
    ("phase_voltage_l2", "numeric(4,1)"),
    ("phase_voltage_l3", "numeric(4,1)"),
    ("phase_power_current_l1", "integer"),
    ("phase_power_current_l2", "integer"),
    ("phase_power_current_l3", "integer"),
]
DAY_COLUMNS = [
    ("day", "date NOT NULL UNIQUE"),
    ("total_cost", "numeric(8,2) NOT NULL"),
    ("electricity1", "numeric(9,3) NOT NULL"),
    ("electricity2", "numeric(9,3) NOT NULL"),
    ("electricity1_returned", "numeric(9,3) NOT NULL"),
    ("electricity2_returned", "numeric(9,3) NOT NULL"),
    ("electricity1_cost", "numeric(8,2) NOT NULL"),
    ("electricity2_cost", "numeric(8,2) NOT NULL"),
    ("gas", "numeric(9,3)"),
    ("gas_cost", "numeric(8,2)"),
    ("fixed_cost", "numeric(8,2) NOT NULL"),
    ("lowest_temperature", "numeric(4,1)"),
    ("highest_temperature", "numeric(4,1)"),
    ("average_temperature", "numeric(4,1)"),
]


def reading_rows(count: int, start: dt.datetime, step: int = 10) -> Iterable[tuple]:
    """A DSMR 4 household: hourly gas stamped at the hour's end, phases 2 and 3 absent (one phase)."""
    for i in range(count):
        moment = start + dt.timedelta(seconds=i * step)
        gas_hour = moment.replace(minute=0, second=0)
        yield (
            moment,
            f"{1000 + i * 0.001:.3f}",
            "12.345",
            f"{2000 + i * 0.0005:.3f}",
            "0.000",
            f"{0.3 + (i % 7) / 10:.3f}",
            "0.000",
            f"{0.3 + (i % 7) / 10:.3f}",
            None,
            None,
            gas_hour,
            f"{500 + (gas_hour - start.replace(minute=0, second=0)).total_seconds() / 3600 * 0.1:.3f}",
            "0.000",
            None,
            None,
            f"{230 + i % 5:.1f}",
            None,
            None,
            i % 3,
            None,
            None,
        )


def create_tables(execute, serial: str, column_type: Callable[[str], str] = lambda kind: kind) -> None:
    """DSMR-reader's tables; column_type turns a PostgreSQL column type into the database's own."""
    execute(
        f"CREATE TABLE dsmr_datalogger_dsmrreading (id {serial}, processed boolean NOT NULL DEFAULT false, "
        + ", ".join(f"{name} {column_type(kind)}" for name, kind in READING_COLUMNS)
        + ")"
    )
    execute("CREATE INDEX dsmr_reading_timestamp ON dsmr_datalogger_dsmrreading (timestamp)")
    execute(
        f"CREATE TABLE dsmr_stats_daystatistics (id {serial}, "
        + ", ".join(f"{name} {column_type(kind)}" for name, kind in DAY_COLUMNS)
        + ")"
    )
    execute(
        f"CREATE TABLE dsmr_datalogger_meterstatistics (id {serial},"
        f" timestamp {column_type('timestamp with time zone')}, dsmr_version varchar(2), electricity_tariff integer)"
    )


class Postgres:
    """PostgreSQL from Debian in a throwaway folder (never as root: as the `postgres` user then)."""

    def __init__(self) -> None:
        from dsmr_ts.influx.server import free_port

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "postgresql"],
                check=True,
                capture_output=True,
                timeout=900,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
            found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        self.bin = Path(found[-1]).parent
        self.port = free_port()
        # Outside the pytest folders (0700 root): the postgres user must reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="dsmr-ts-postgres-", dir="/tmp"))
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.folder / "data"), "--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.folder / "data"),
            "-w",
            "-l",
            str(self.folder / "postgres.log"),
            "-o",
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/dsmrreader"
        self.execute_in("postgres", "CREATE DATABASE dsmrreader")

    @property
    def pid(self) -> int:
        """The postmaster's process id (for a benchmark's CPU figures)."""
        return int((self.folder / "data" / "postmaster.pid").read_text().split()[0])

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self.as_postgres, str(self.bin / program), *args], check=True, capture_output=True, timeout=120
        )

    def execute_in(self, database: str, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/{database}", autocommit=True) as db:
            db.execute(sql)

    def load(self, readings: Iterable[tuple], days: Iterable[tuple] = (), dsmr_version: str = "42") -> None:
        """DSMR-reader's tables with these rows (COPY: a million rows in seconds)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            create_tables(db.execute, "serial PRIMARY KEY")
            names = ", ".join(name for name, _ in READING_COLUMNS)
            with db.cursor().copy(f"COPY dsmr_datalogger_dsmrreading ({names}) FROM STDIN") as copy:
                buffer = io.StringIO()
                for index, row in enumerate(readings):
                    buffer.write(
                        "\t".join(
                            "\\N" if v is None else (v.isoformat() if isinstance(v, dt.datetime) else str(v))
                            for v in row
                        )
                        + "\n"
                    )
                    if index % 100_000 == 99_999:
                        copy.write(buffer.getvalue())
                        buffer = io.StringIO()
                copy.write(buffer.getvalue())
            for day in days:
                db.execute(
                    f"INSERT INTO dsmr_stats_daystatistics ({', '.join(n for n, _ in DAY_COLUMNS)})"
                    f" VALUES ({', '.join(['%s'] * len(DAY_COLUMNS))})",
                    day,
                )
            db.execute(
                "INSERT INTO dsmr_datalogger_meterstatistics (timestamp, dsmr_version) VALUES (now(), %s)",
                (dsmr_version,),
            )
            db.execute("ANALYZE")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


class MariaDB:
    """MariaDB from Debian (DSMR-reader's MySQL option) in a throwaway folder, no grant tables."""

    def __init__(self) -> None:
        from dsmr_ts.influx.server import free_port

        if not Path("/usr/sbin/mariadbd").exists():
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "mariadb-server"],
                check=True,
                capture_output=True,
                timeout=900,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="dsmr-ts-mariadb-", dir="/tmp"))
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.folder / 'data'}",
                f"--user={user}",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        self.process = subprocess.Popen(
            [
                "/usr/sbin/mariadbd",
                "--no-defaults",
                f"--datadir={self.folder / 'data'}",
                f"--user={user}",
                f"--socket={self.folder / 'mysqld.sock'}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                f"--pid-file={self.folder / 'mysqld.pid'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "mariadb.log", "w"),
        )
        self.url = f"mysql://root@127.0.0.1:{self.port}/dsmrreader"
        deadline = time.monotonic() + 60
        while True:
            try:
                self._connect(None).cursor().execute("CREATE DATABASE dsmrreader")
                break
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"MariaDB did not start; see {self.folder / 'mariadb.log'}") from None
                time.sleep(0.2)

    def _connect(self, database: str | None):
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", database=database, autocommit=True)

    def load(self, readings: Iterable[tuple], days: Iterable[tuple] = (), dsmr_version: str = "42") -> None:
        """DSMR-reader's tables as its migrations make them on MySQL (datetimes as UTC DATETIME(6))."""
        db = self._connect("dsmrreader")
        cursor = db.cursor()
        cursor.execute("SET time_zone = '+00:00'")
        # Django's MySQL datetimes: UTC in datetime(6).
        create_tables(
            cursor.execute,
            "integer AUTO_INCREMENT PRIMARY KEY",
            lambda kind: kind.replace("timestamp with time zone", "datetime(6)"),
        )

        def cell(value):
            return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if isinstance(value, dt.datetime) else value

        for table, columns, rows in (
            ("dsmr_datalogger_dsmrreading", READING_COLUMNS, readings),
            ("dsmr_stats_daystatistics", DAY_COLUMNS, days),
        ):
            cursor.executemany(
                f"INSERT INTO {table} ({', '.join(n for n, _ in columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                [[cell(v) for v in row] for row in rows],
            )
        cursor.execute(
            "INSERT INTO dsmr_datalogger_meterstatistics (timestamp, dsmr_version) VALUES (now(), %s)", (dsmr_version,)
        )
        db.close()

    def stop(self) -> None:
        try:
            self.process.terminate()
            self.process.wait(timeout=60)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def sqlite_database(path: Path, readings: Iterable[tuple], days: Iterable[tuple] = (), dsmr_version: str = "42") -> str:
    """The same tables in SQLite, as Django stores them (datetimes as 'YYYY-MM-DD HH:MM:SS' UTC)."""
    db = sqlite3.connect(path)
    create_tables(db.execute, "integer PRIMARY KEY AUTOINCREMENT")

    def cell(value):
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        return value

    db.executemany(
        f"INSERT INTO dsmr_datalogger_dsmrreading ({', '.join(n for n, _ in READING_COLUMNS)})"
        f" VALUES ({', '.join(['?'] * len(READING_COLUMNS))})",
        ([cell(v) for v in row] for row in readings),
    )
    db.executemany(
        f"INSERT INTO dsmr_stats_daystatistics ({', '.join(n for n, _ in DAY_COLUMNS)})"
        f" VALUES ({', '.join(['?'] * len(DAY_COLUMNS))})",
        ([cell(v) for v in day] for day in days),
    )
    db.execute(
        "INSERT INTO dsmr_datalogger_meterstatistics (timestamp, dsmr_version) VALUES ('2024-01-01', ?)",
        (dsmr_version,),
    )
    db.commit()
    db.close()
    return f"sqlite://{path}"
