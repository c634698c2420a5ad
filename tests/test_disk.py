"""A full disk loses nothing: on a small filesystem (a tmpfs this test mounts) the managed influxd
runs out of space under ingest; from then on a reading is answered 503 (never 201 for a reading
that was not stored), the reader spools, monitoring warns before that and /health says so; after
space is freed `dsmr-ts run` restarts influxd by itself, every acknowledged reading is there and
ingest resumes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import subprocess
import types

import pytest
import requests
from falcon import testing
from helpers import TEST_KEY, Running, wait_for, write_config

from dsmr_ts import disk_watch
from dsmr_ts.app import create_app
from dsmr_ts.disk_watch import DiskWatch
from dsmr_ts.reader.simulator import MeterSimulator
from dsmr_ts.spool_dir import StoreFullMarker

METER = "E-DISK"
KEY = {"X-AUTHKEY": TEST_KEY}


def low_disk_problems(config) -> list[str]:
    client = testing.TestClient(create_app(config))
    details = client.simulate_get("/api/v2/application/monitoring", headers={"X-AUTHKEY": TEST_KEY}).json["details"]
    return [d["description"] for d in details if d["description"].startswith("The disk of InfluxDB's data")]


def test_little_free_space_is_a_monitoring_problem(config, tmp_path):
    def watching(percent: float):
        influxdb = dataclasses.replace(config.influxdb, managed=True, data_dir=str(tmp_path), min_free_percent=percent)
        return dataclasses.replace(config, influxdb=influxdb)

    (problem,) = low_disk_problems(watching(100))  # every disk has less than 100% free
    assert f"({tmp_path})" in problem and "less than influxdb.min_free_percent (100%)" in problem
    assert low_disk_problems(watching(0)) == []


def test_a_refusal_is_held_long_enough_for_the_watch_to_see_it(tmp_path):
    """A write to another shard taken right after a refusal must not hide the refusal."""
    marker = StoreFullMarker(tmp_path)
    marker.set()
    marker.clear_when_held()
    assert marker.since() is not None
    held = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=StoreFullMarker.HELD_SECONDS + 1)
    marker.path.write_text(held.isoformat())
    marker.clear_when_held()
    assert marker.since() is None


class Disk:
    """What shutil.disk_usage reports for the watched folder, set by the test."""

    def __init__(self, total: int, free: int):
        self.total, self.free = total, free

    def usage(self, folder):
        return types.SimpleNamespace(total=self.total, used=self.total - self.free, free=self.free)


def watched(monkeypatch, tmp_path, disk: Disk):
    now = [0.0]
    restarts: list[str] = []
    monkeypatch.setattr(disk_watch.shutil, "disk_usage", disk.usage)
    marker = StoreFullMarker(tmp_path)
    watch = DiskWatch(tmp_path, marker, restarts.append, every=2.0, clock=lambda: now[0])

    def look(seconds: float = 2.0) -> None:
        now[0] += seconds
        watch.check()

    return marker, restarts, look


def test_the_watch_restarts_influxd_once_a_full_disk_has_room_again(monkeypatch, tmp_path):
    disk = Disk(total=4_000_000, free=40_000)
    marker, restarts, look = watched(monkeypatch, tmp_path, disk)
    marker.set()
    look()
    assert restarts == []  # still full: a restart would not help
    disk.free = 60_000_000
    look()
    assert len(restarts) == 1 and "room again" in restarts[0] and marker.since() is None
    look()
    assert len(restarts) == 1


def test_a_refusal_first_seen_with_room_restarts_influxd_but_not_in_a_loop(monkeypatch, tmp_path):
    # The disk was grown before the watch looked, as under load: influxd has given up on a shard.
    disk = Disk(total=64_000_000, free=60_000_000)
    marker, restarts, look = watched(monkeypatch, tmp_path, disk)
    marker.set()
    look()
    assert len(restarts) == 1 and "refused writes for lack of space" in restarts[0] and marker.since() is None
    marker.set()  # refused again at once: not a disk matter, so no second restart soon
    look()
    assert len(restarts) == 1
    look(disk_watch.RESTART_AT_MOST_EVERY)
    assert len(restarts) == 2


def post(api: Running, moments: list[dt.datetime]) -> dict[dt.datetime, int]:
    simulator = MeterSimulator(meter=METER)
    session = requests.Session()
    url = api.url + "/api/v1/datalogger/dsmrreading"
    return {m: session.post(url, data={"telegram": simulator.telegram(m)}, headers=KEY).status_code for m in moments}


def stored(api: Running) -> int:
    """The count the API gives for the posted meter's readings."""
    return json.loads(api.get("/api/v2/datalogger/dsmrreading", meter=METER, limit=1))["count"]


def stored_times(api: Running, meter: str) -> list[dt.datetime]:
    """Every stored reading's time of a meter, oldest first, walked by time (not by the count, which
    is checked apart)."""
    found: list[dt.datetime] = []
    after = "1970-01-01T00:00:00Z"
    while True:
        page = json.loads(
            api.get(
                "/api/v2/datalogger/dsmrreading", meter=meter, limit=1000, ordering="timestamp", timestamp__gte=after
            )
        )
        moments = [dt.datetime.fromisoformat(row["timestamp"]) for row in page["results"]]
        newer = [moment for moment in moments if not found or moment > found[-1]]
        if not newer:
            return found
        found += newer
        after = newer[-1].strftime("%Y-%m-%dT%H:%M:%SZ")


def waiting_in_spool(api: Running) -> bool:
    details = json.loads(api.get("/api/v2/application/monitoring"))["details"]
    return any(d["description"].startswith("Telegrams are waiting in the spool") for d in details)


def simulated_gaps(api: Running) -> list[tuple[str, str]]:
    """Gaps of more than 3 s between the simulated meter's readings (it sends one a second)."""
    times = stored_times(api, "simulated")
    return [(str(a), str(b)) for a, b in itertools.pairwise(times) if (b - a).total_seconds() > 3]


def test_a_full_disk_refuses_readings_and_loses_none(tmp_path):
    """`dsmr-ts run` with its reader (a simulated meter, one telegram a second) and v1 posts on a
    4 MB disk: once full, posts get 503, /health and monitoring say the disk is full, the reader
    spools. Space freed while run keeps running: run restarts influxd by itself, ingest resumes,
    the spool drains, and every acknowledged reading is stored (the simulated meter's too: no gap)."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        config = write_config(tmp_path / "store", "  enabled: true\n")  # no port: a simulated meter
        config.write_text(config.read_text().replace("./influx-data", str(small / "influx")))
        start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
        api = Running(config)
        try:
            answers: dict[dt.datetime, int] = {}
            second = 0
            while list(answers.values()).count(503) < 50:  # until influxd has refused for a while
                batch = [start + dt.timedelta(seconds=second + n) for n in range(500)]
                answers.update(post(api, batch))
                second += 500
                assert second < 200_000, "the 4 MB disk never filled"
            assert set(answers.values()) == {201, 503}  # a clear 503, never a 500 or a 201 for a lost one
            health = requests.get(api.url + "/health", timeout=10)
            assert health.status_code == 503 and "is full" in health.json()["detail"], health.text
            monitoring = json.loads(api.get("/api/v2/application/monitoring"))["details"]
            assert any("is full" in p["description"] for p in monitoring), monitoring
            wait_for(lambda: waiting_in_spool(api), timeout=60, what="the reader to spool while the disk is full")

            # Space freed while run keeps running: it restarts influxd, ingest and the reader resume.
            subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
            later = start + dt.timedelta(days=1)
            wait_for(
                lambda: post(api, [later])[later] == 201, timeout=120, what="ingest to resume after space was freed"
            )
            assert "restarting influxd: " in api.log.read_text() and " MB free)" in api.log.read_text()
            assert requests.get(api.url + "/health", timeout=10).status_code == 200
            wait_for(lambda: not waiting_in_spool(api), timeout=120, what="the reader's spool to drain")
            acknowledged = [moment for moment, status in answers.items() if status == 201]
            kept, count = set(stored_times(api, METER)), stored(api)
            missing = [moment for moment in acknowledged if moment not in kept]
            print(f"full disk: {len(acknowledged)} acknowledged, {len(answers) - len(acknowledged)} refused, "
                  f"{len(kept)} stored, {len(missing)} lost, count {count}")  # fmt: skip
            assert len(acknowledged) > 0 and missing == []
            assert count == len(kept)  # the count index too came through
            assert simulated_gaps(api) == []
        finally:
            api.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
