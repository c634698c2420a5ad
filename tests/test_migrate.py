"""dsmr-ts import dsmr-reader (against a second dsmr-ts acting as the source: same API) and
dsmr-ts export, as the real commands."""

from __future__ import annotations

import csv
import datetime as dt
import http.server
import json
import os
import subprocess
import threading

import pytest
from helpers import REPO, TEST_KEY, dsmr_ts_command, flux, write_lines

from dsmr_ts.influx.server import free_port
from dsmr_ts.influx.store import Store
from dsmr_ts.telegram import Reading

UTC = dt.timezone.utc
SOURCE_METER = "E-SOURCE"
FIRST = dt.datetime(2024, 3, 5, 10, 0, 0, tzinfo=UTC)
COUNT = 2500  # readings, one per 10 s: about 7 hours


@pytest.fixture(scope="module")
def source(session_config):
    """History in the source: readings, and day statistics of two older days whose readings are gone."""
    store = Store(session_config.influxdb)
    store.writer.store_readings(
        [
            Reading(
                FIRST + dt.timedelta(seconds=10 * i),
                SOURCE_METER,
                {
                    "electricity_delivered_1": 100 + i * 0.001,
                    "electricity_delivered_2": 50.0,
                    "electricity_returned_1": 0.0,
                    "electricity_returned_2": 0.0,
                    "electricity_currently_delivered": 0.36,
                    "electricity_currently_returned": 0.0,
                },
            )
            for i in range(COUNT)
        ]
    )
    # Day statistics as DSMR-reader keeps them after its readings are gone (no readings here).
    older = [
        f"day,meter={SOURCE_METER} electricity1={e1!r},electricity2=1.0,electricity1_returned=0.0,"
        f"electricity2_returned=0.0,gas=2.5 {int(day.timestamp()) * 10**9}"
        for day, e1 in ((dt.datetime(2024, 3, 2, 23, tzinfo=UTC), 7.5), (dt.datetime(2024, 3, 3, 23, tzinfo=UTC), 8.25))
    ]
    write_lines(store, older, session_config.influxdb.stats_bucket)
    store.close()
    return SOURCE_METER


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_") and k != "DSMR_READER_KEY"}
    return subprocess.run(
        dsmr_ts_command(*args), cwd=REPO, env={**environment, **env}, capture_output=True, text=True, timeout=300
    )


def test_import_from_a_running_server_then_resume_then_export(source, import_target, api_server, tmp_path):
    config_path, store = import_target
    key_file = tmp_path / "source-key"
    key_file.write_text(TEST_KEY + "\n")  # 0600: the tests' umask
    command = (
        "--config",
        str(config_path),
        "import",
        "dsmr-reader",
        "--url",
        api_server,
        "--key-file",
        str(key_file),
        "--source-meter",
        source,
        "--meter",
        "E-TARGET",
    )
    first = run(*command)
    assert first.returncode == 0, first.stderr
    assert f"imported {COUNT} readings as meter E-TARGET" in first.stdout
    assert f"{COUNT}/{COUNT} readings" in first.stderr and "ETA" in first.stderr
    assert store.readings.brute_force_count("E-TARGET", None, None) == COUNT
    # Statistics of the imported range were regenerated (0.001 kWh per 10-second step).
    hours = flux(
        store,
        "from(bucket: stats) |> range(start: 2024-03-05T10:00:00Z, stop: 2024-03-05T11:00:00Z)"
        ' |> filter(fn: (r) => r._measurement == "hour" and r.meter == "E-TARGET"'
        ' and r._field == "electricity1")',
        {},
    )
    assert round(hours[0]["_value"], 3) == 0.359  # 359 steps of 0.001 kWh within the first hour
    # Day statistics of the days before the first reading came along.
    older = flux(
        store,
        "from(bucket: stats) |> range(start: 2024-03-01T00:00:00Z, stop: 2024-03-04T23:00:00Z)"
        ' |> filter(fn: (r) => r._measurement == "day" and r.meter == "E-TARGET"'
        ' and r._field == "electricity1")',
        {},
    )
    assert sorted(round(r["_value"], 3) for r in older) == [7.5, 8.25]

    # Re-running continues from the cursor: at most the last page again, no duplicates (the key
    # from the environment this time).
    again = run(*command[:6], "--source-meter", source, "--meter", "E-TARGET", DSMR_READER_KEY=TEST_KEY)
    assert again.returncode == 0, again.stderr
    assert int(again.stdout.split()[1]) < COUNT
    assert store.readings.brute_force_count("E-TARGET", None, None) == COUNT

    out = tmp_path / "readings.csv"
    export = run(
        "--config",
        str(config_path),
        "export",
        "readings",
        "--meter",
        "E-TARGET",
        "--since",
        "2024-03-05",
        "--until",
        "2024-03-05",
        "--output",
        str(out),
    )
    assert export.returncode == 0, export.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == COUNT
    assert rows[0]["timestamp"] == "2024-03-05T10:00:00Z" and float(rows[0]["electricity_delivered_1"]) == 100.0
    assert rows[-1]["phase_voltage_l1"] == ""  # absent stays absent

    days = run(
        "--config",
        str(config_path),
        "export",
        "day",
        "--meter",
        "E-TARGET",
        "--since",
        "2024-03-01",
        "--until",
        "2024-03-06",
    )
    assert days.returncode == 0, days.stderr
    assert days.stdout.splitlines()[0].startswith("day,electricity1,")
    assert len(days.stdout.splitlines()) == 1 + 3  # the two older days and the imported day


def test_import_with_a_wrong_key_is_one_clear_line(import_target, api_server):
    config_path, _ = import_target
    result = run("--config", str(config_path), "import", "dsmr-reader", "--url", api_server, "--key", "WRONG")
    assert result.returncode == 1
    assert "answered 403" in result.stderr and "key right" in result.stderr
    assert "--key shows the key in the process list; prefer --key-file or DSMR_READER_KEY" in result.stderr
    assert result.stderr.count("WRONG") == 0 and "Traceback" not in result.stderr
    missing = run("--config", str(config_path), "import", "dsmr-reader", "--url", api_server)
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("give the source's API key with --key-file FILE or DSMR_READER_KEY")


def test_the_key_goes_only_to_the_origin_it_was_given_for(import_target, tmp_path):
    """A source whose `next` link names another host: the import stops before sending the key there."""
    config_path, _ = import_target
    seen: list[tuple[str, str | None]] = []
    other_port = free_port()

    class Source(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.headers["Host"], self.headers.get("X-AUTHKEY")))
            body = json.dumps(
                {
                    "count": 2,
                    "next": f"http://127.0.0.1:{other_port}/api/v2/datalogger/dsmrreading?offset=1",
                    "previous": None,
                    "results": [],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Source)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run(
            "--config",
            str(config_path),
            "import",
            "dsmr-reader",
            "--url",
            f"http://127.0.0.1:{server.server_port}",
            DSMR_READER_KEY=TEST_KEY,
        )
    finally:
        server.shutdown()
    assert result.returncode == 1
    assert f"sent a link to http://127.0.0.1:{other_port}; the key is sent only to" in result.stderr
    assert all(host.endswith(f":{server.server_port}") for host, _ in seen)  # never the other port


def test_import_csv_of_day_statistics(import_target, tmp_path):
    config_path, store = import_target
    path = tmp_path / "day-statistics.csv"
    # As DSMR-reader's admin exports them: its field names, semicolons, extra columns.
    path.write_text(
        "id;day;total_cost;electricity1;electricity2;electricity1_returned;electricity2_returned;gas\n"
        "1;2019-06-01;1.23;3.5;4.25;0.5;0;1.75\n"
        "2;2019-06-02;1.50;2.0;5.0;0;0;\n"
    )
    result = run("--config", str(config_path), "import", "csv", str(path), "--meter", "E-CSV")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported 2 day statistics as meter E-CSV"
    rows = flux(
        store,
        "from(bucket: stats) |> range(start: 2019-05-31T00:00:00Z, stop: 2019-06-03T00:00:00Z)"
        ' |> filter(fn: (r) => r._measurement == "day" and r.meter == "E-CSV")',
        {},
    )
    found = {(r["_time"].isoformat(), r["_field"]): r["_value"] for r in rows}
    assert found[("2019-05-31T22:00:00+00:00", "electricity2")] == 4.25  # local midnight, summer time
    assert found[("2019-05-31T22:00:00+00:00", "gas")] == 1.75
    assert ("2019-06-01T22:00:00+00:00", "gas") not in found  # empty stays absent
    store.close()


def test_import_csv_names_the_bad_line(import_target, tmp_path):
    config_path, _ = import_target
    path = tmp_path / "bad.csv"
    path.write_text("day,electricity1\n2019-06-01,1.0\nyesterday,2.0\n")
    result = run("--config", str(config_path), "import", "csv", str(path))
    assert result.returncode == 1
    assert "line 3: cannot read" in result.stderr and "Traceback" not in result.stderr


def test_export_starts_at_the_first_readings_day_and_import_csv_takes_it_back(session_config, tmp_path):
    """The day and hour exports begin with the first reading's local day and hour, write dates and
    decimals as the API does, and `import csv` reads each back to the same statistics."""
    meter, copy = "E-ROUNDTRIP", "E-ROUNDTRIP-COPY"
    first = dt.datetime(2023, 7, 1, 22, 30, 0, tzinfo=UTC)  # 00:30 on 2 July in Amsterdam (summer time)
    store = Store(session_config.influxdb)
    try:
        values = lambda i: {"electricity_delivered_1": 10 + i * 0.077, "electricity_delivered_2": 5.0,
                            "electricity_returned_1": 0.0, "electricity_returned_2": 0.0,
                            "electricity_currently_delivered": 0.5, "electricity_currently_returned": 0.0}  # fmt: skip
        store.writer.store_readings([Reading(first + dt.timedelta(minutes=20 * i), meter, values(i)) for i in range(9)])
        store.compute.recompute(dt.datetime(2023, 7, 1, 22, tzinfo=UTC), dt.datetime(2023, 7, 2, 2, tzinfo=UTC))
        exported = {}
        for what in ("day", "hour"):
            out = tmp_path / f"{what}.csv"
            result = run("--config", str(session_config.path), "export", what, "--meter", meter, "--output", str(out))
            assert result.returncode == 0, result.stderr
            exported[what] = list(csv.DictReader(out.open()))
        assert [row["day"] for row in exported["day"]] == ["2023-07-02"]  # the first reading's local day
        assert exported["day"][0]["electricity1"] == "0.616"  # 8 x 0.077 as the API shows it, not 0.61599...
        assert exported["day"][0]["reading_count"] == "9"
        hours = [row["hour_start"] for row in exported["hour"]]
        assert hours == ["2023-07-01T22:00:00Z", "2023-07-01T23:00:00Z", "2023-07-02T00:00:00Z", "2023-07-02T01:00:00Z"]
        assert [row["electricity1"] for row in exported["hour"]] == ["0.077", "0.231", "0.231", "0.077"]
        for what in ("day", "hour"):
            result = run("--config", str(session_config.path), "import", "csv", str(tmp_path / f"{what}.csv"),
                         "--meter", copy)  # fmt: skip
            assert result.returncode == 0, result.stderr
            measurement = "day" if what == "day" else "hour"
            _, original = store.statistics.page(measurement, meter, None, None, 0, 100, False)
            _, imported = store.statistics.page(measurement, copy, None, None, 0, 100, False)
            usage = ("electricity1", "electricity2", "electricity1_returned", "electricity2_returned")
            assert [(r["_time"], *(round(r[f], 3) for f in usage)) for r in imported] == [
                (r["_time"], *(round(r[f], 3) for f in usage)) for r in original
            ]
    finally:
        store.close()
