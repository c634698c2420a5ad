"""Backup and restore as an operator meets them: `dsmr-ts backup` while `dsmr-ts run` serves and a
meter keeps sending, `dsmr-ts restore` into a fresh data dir, and then the API answers exactly as
before (readings, counts, hour and day statistics, quarter-hour peaks, meter statistics); a store
that holds readings is only replaced with --replace, and the tasks keep running afterwards."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo

import requests
from falcon import testing
from helpers import REPO, TEST_KEY, Running, dsmr_ts_command, env_without_overrides, run_task, wait_for, write_config
from history import METERS, answers, dsmr_ts, post_history

from dsmr_ts.app import create_app
from dsmr_ts.config import load_config
from dsmr_ts.daily_backup import DailyBackup
from dsmr_ts.influx.backup import backups
from dsmr_ts.influx.bootstrap import admin_token
from dsmr_ts.influx.tasks import HOUR_TASK
from dsmr_ts.telegram import SIMULATED_METER

KEY = {"X-AUTHKEY": TEST_KEY}
UTC = dt.timezone.utc


def test_backup_while_serving_then_restore_answers_byte_for_byte(tmp_path):
    # The daily backup is due in two or three minutes (local time, the config's zone): after run's
    # scheduler has started even on a slow machine (a time already past would be tomorrow's).
    due = (dt.datetime.now(ZoneInfo("Europe/Amsterdam")) + dt.timedelta(seconds=150)).strftime("%H:%M")
    daily = f"backup:\n  dir: ./daily\n  time: '{due}'\n  keep: 1\n"
    source = write_config(tmp_path / "source", "  spool_dir: ./spool\n", daily)  # the simulated meter sends live
    target = write_config(tmp_path / "target", "  enabled: false\n")
    backup_dir = tmp_path / "backups"
    api = Running(source)
    try:
        post_history(api)
        dsmr_ts(source, "regenerate", "--since", "2026-03-09", "--until", "2026-03-10")
        # A late reading into an hour whose statistics exist: the hour task picks it up.
        late = {"meter": METERS[0], "timestamp": "2026-03-10T12:07:00+00:00", "electricity_delivered_1": "1014.500",
                "electricity_delivered_2": "2007.400", "electricity_returned_1": "0", "electricity_returned_2": "0",
                "electricity_currently_delivered": "9.999", "electricity_currently_returned": "0"}  # fmt: skip
        assert requests.post(api.url + "/api/v2/datalogger/dsmrreading", data=late, headers=KEY).status_code == 201
        dsmr_ts(source, "regenerate", "--since", "2026-03-10", "--until", "2026-03-10")
        live_count = lambda: json.loads(api.get("/api/v2/datalogger/dsmrreading", limit=1, meter=SIMULATED_METER))[
            "count"
        ]
        first = live_count()
        wait_for(lambda: live_count() > first, timeout=60, what="the simulated meter's readings to arrive")
        # The cutoff is the newest reading stored before the backup starts (not the clock: a reading
        # stamped with this second may still be on its way and land after the backup began).
        newest = json.loads(
            api.get("/api/v2/datalogger/dsmrreading", limit=1, meter=SIMULATED_METER, ordering="-timestamp")
        )
        started = dt.datetime.fromisoformat(newest["results"][0]["timestamp"].replace("Z", "+00:00"))
        acknowledged = json.loads(
            api.get(
                "/api/v2/datalogger/dsmrreading", limit=1, meter=SIMULATED_METER, timestamp__lte=started.isoformat()
            )
        )
        made = dsmr_ts(source, "backup", "--to", str(backup_dir))
        # The meter kept sending during the backup, and the service kept serving.
        wait_for(lambda: live_count() > acknowledged["count"], timeout=60, what="readings after the backup")
        before = answers(api, started)
        wait_for(lambda: backups(tmp_path / "source" / "daily"), timeout=300, what=f"run's daily backup at {due}")
        assert f"daily backup at {due} (Europe/Amsterdam)" in api.log.read_text()
    finally:
        api.stop()

    (backup,) = sorted(backup_dir.iterdir())
    assert backup.name.startswith("dsmr-ts-backup-") and made.stdout.startswith(f"backup {backup}: ")
    assert " in " in made.stdout.strip().splitlines()[-1] and len(made.stdout.strip().splitlines()) == 1
    assert "shards" in made.stderr  # progress
    kept = (backup / "dsmr-ts.yaml").read_text()
    assert TEST_KEY not in kept and "enabled: true" in kept
    admin = (tmp_path / "source" / "data" / "influxdb-admin-token").read_text().strip()
    assert admin not in (backup / "manifest.json").read_text()
    manifest = json.loads((backup / "manifest.json").read_text())
    assert {b["bucketName"] for b in manifest["buckets"]} == {"dsmr", "dsmr_stats"}
    assert {t["name"] for t in manifest["tasks"]} >= {"dsmr-ts hour statistics", "dsmr-ts day statistics"}

    restored = dsmr_ts(target, "restore", str(backup))
    assert restored.stdout.startswith(f"restored {backup} (")
    again = dsmr_ts(target, "restore", str(backup), check=False)
    assert again.returncode == 1 and "already holds readings; give --replace" in again.stderr
    assert len(again.stderr.strip().splitlines()[-1:]) == 1
    dsmr_ts(target, "restore", str(backup), "--replace")

    api = Running(target)
    try:
        after = answers(api, started)
        for name, body in before.items():
            assert after[name] == body, name
        assert json.loads(after[f"readings {SIMULATED_METER}"])["count"] >= acknowledged["count"] > 0
        assert json.loads(after[f"day {METERS[1]}"])["count"] == 2
        assert json.loads(after[f"peaks {METERS[0]}"])["count"] > 0
        # The tasks run on the restored store: a reading in an hour without statistics gets its row.
        reading = {"meter": METERS[0], "timestamp": "2026-03-11T00:10:00+00:00", "electricity_delivered_1": "1100.000",
                   "electricity_delivered_2": "2100.000", "electricity_returned_1": "0", "electricity_returned_2": "0",
                   "electricity_currently_delivered": "1.000", "electricity_currently_returned": "0"}  # fmt: skip
        assert requests.post(api.url + "/api/v2/datalogger/dsmrreading", data=reading, headers=KEY).status_code == 201
        run_task(load_config(target), HOUR_TASK, dt.datetime(2026, 3, 11, 1, tzinfo=UTC))
        new_hour = json.loads(
            api.get("/api/v2/statistics/hour", meter=METERS[0], hour_start__gte="2026-03-11T00:00:00Z")
        )
        assert new_hour["count"] == 1 and new_hour["results"][0]["electricity1"] != "0.000"
    finally:
        api.stop()


def test_restore_refuses_what_is_not_a_backup(tmp_path):
    config = write_config(tmp_path / "store", "  enabled: false\n")
    (tmp_path / "empty").mkdir()
    done = dsmr_ts(config, "restore", str(tmp_path / "empty"), check=False)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"dsmr-ts: restore: {tmp_path / 'empty'} is not a dsmr-ts backup (no readable manifest.json)"
    )
    assert not (tmp_path / "store" / "influx-data").exists()  # nothing started, nothing made


# --- the daily backup ---------------------------------------------------------------------------


def daily_config(config, folder: Path, command: str = "", keep: int = 2):
    backup = dataclasses.replace(config.backup, dir=str(folder), keep=keep, command=command)
    return dataclasses.replace(config, backup=backup)


def script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def reported(config) -> tuple[list[dict], str]:
    """What /application/monitoring and /metrics say (the API reads the state file the job wrote)."""
    client = testing.TestClient(create_app(config))
    problems = client.simulate_get("/api/v2/application/monitoring", headers=KEY).json["details"]
    return [p for p in problems if p["source"] == "backup"], client.simulate_get("/metrics", headers=KEY).text


def test_daily_backup_keeps_the_newest_runs_its_command_and_reports_failures(config, tmp_path):
    folder = tmp_path / "backups"
    copied = tmp_path / "copied"
    failing = daily_config(config, folder, script(tmp_path / "fail.sh", "echo 'remote: no route to host' >&2; exit 3"))
    assert DailyBackup(failing, lambda: admin_token(config)).run() is False
    (made,) = backups(folder)  # the backup itself is whole and kept: only the copy failed
    problems, metrics = reported(failing)
    assert problems[0]["description"] == (
        f"The daily backup {made.name} was made, but backup.command exited with status 3: remote: no route to host"
    )
    assert "dsmr_ts_backup_failed 1" in metrics and "dsmr_ts_backup_last_success_timestamp_seconds" not in metrics

    working = daily_config(config, folder, script(tmp_path / "copy.sh", f'echo "$1" >> {copied}'))
    for _ in range(2):
        assert DailyBackup(working, lambda: admin_token(config)).run() is True
    kept = backups(folder)
    assert len(kept) == 2 and made not in kept  # keep: 2, the oldest went
    assert copied.read_text().split() == [str(path) for path in kept]  # the command got each new path
    problems, metrics = reported(working)
    assert problems == [] and "dsmr_ts_backup_failed 0" in metrics
    assert "dsmr_ts_backup_last_success_timestamp_seconds" in metrics

    # A backup that would not fit (the last one "took" all the free space: a sparse file) is refused.
    huge = folder / "dsmr-ts-backup-99991231T000000Z"
    huge.mkdir()
    with open(huge / "shard.tar.gz", "wb") as sparse:
        sparse.truncate(shutil.disk_usage(folder).free)
    assert DailyBackup(working, lambda: admin_token(config)).run() is False
    assert sorted(folder.iterdir()) == sorted([*kept, huge, folder / "last-backup.json"])  # nothing half-written
    problems, metrics = reported(working)
    assert problems[0]["description"].startswith("The daily backup failed: it would not fit: ")
    assert "dsmr_ts_backup_failed 1" in metrics


def test_daily_backup_with_influxd_refusing_is_a_problem_not_a_crash(config, tmp_path):
    folder = tmp_path / "backups"
    assert DailyBackup(daily_config(config, folder), lambda: "not-the-admin-token").run() is False
    assert backups(folder) == [] and not [p for p in folder.iterdir() if p.name.endswith(".partial")]
    problems, _ = reported(daily_config(config, folder))
    assert problems[0]["description"].startswith("The daily backup failed: influxd refused the backup (HTTP 401)")


def test_backup_daily_for_a_systemd_timer(config, tmp_path):
    """`dsmr-ts backup --daily` (dsmr-ts-backup.timer's): into backup.dir, pruned, recorded."""
    env = {**env_without_overrides(), "DSMR_TS_BACKUP_DIR": str(tmp_path / "daily"), "DSMR_TS_BACKUP_KEEP": "1"}
    for _ in range(2):
        done = subprocess.run(
            dsmr_ts_command("--config", str(config.path), "backup", "--daily"), cwd=REPO, env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert len(backups(tmp_path / "daily")) == 1
    assert "daily backup " in done.stderr and "1 old backup(s) removed" in done.stderr
    assert json.loads((tmp_path / "daily" / "last-backup.json").read_text())["ok"] is True
    both = subprocess.run(
        dsmr_ts_command("--config", str(config.path), "backup", "--daily", "--to", str(tmp_path)), cwd=REPO, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (
        both.returncode == 1
        and both.stderr.strip() == "dsmr-ts: backup: --daily writes into backup.dir; give --to without --daily"
    )
