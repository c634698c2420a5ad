"""A history that tests store, back up, restore and upgrade (two days of two meters' quarter-hour
readings, gas, a late reading), and what a client sees of it, to compare byte for byte."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import requests
from helpers import REPO, TEST_KEY, Running, dsmr_ts_command, env_without_overrides

from dsmr_ts.telegram import SIMULATED_METER

KEY = {"X-AUTHKEY": TEST_KEY}
UTC = dt.timezone.utc
DAYS = [dt.datetime(2026, 3, 9, tzinfo=UTC), dt.datetime(2026, 3, 10, tzinfo=UTC)]
METERS = ("E-BACKUP-1", "E-BACKUP-2")


def dsmr_ts(
    config: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """A dsmr-ts command for a config (env: added to an environment without DSMR_TS_* overrides)."""
    done = subprocess.run(
        dsmr_ts_command("--config", str(config), *args), cwd=REPO, env={**env_without_overrides(), **(env or {})},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def post_history(api: Running) -> None:
    """Two days of quarter-hour readings of two meters, gas every hour, and one late reading."""
    for meter_index, meter in enumerate(METERS):
        for day in DAYS:
            for quarter in range(96):
                moment = day + dt.timedelta(minutes=15 * quarter)
                position = (moment - DAYS[0]) / dt.timedelta(hours=1) * (0.4 + meter_index)
                data = {
                    "meter": meter,
                    "timestamp": moment.isoformat(),
                    "electricity_delivered_1": f"{1000 + position:.3f}",
                    "electricity_delivered_2": f"{2000 + position / 2:.3f}",
                    "electricity_returned_1": "0.000",
                    "electricity_returned_2": f"{position / 10:.3f}",
                    "electricity_currently_delivered": f"{0.4 + meter_index + quarter % 7 / 10:.3f}",
                    "electricity_currently_returned": "0.000",
                }
                if quarter % 4 == 0:
                    data.update(
                        extra_device_timestamp=moment.isoformat(), extra_device_delivered=f"{500 + position / 8:.3f}"
                    )
                response = requests.post(api.url + "/api/v2/datalogger/dsmrreading", data=data, headers=KEY, timeout=30)
                assert response.status_code == 201, response.text


def answers(api: Running, before: dt.datetime) -> dict[str, bytes]:
    """What a client sees of the history (nothing of the live meter after `before`)."""
    found = {}
    for meter in (*METERS, SIMULATED_METER, ""):
        which = {"meter": meter} if meter else {}
        found[f"readings {meter}"] = api.get(
            "/api/v2/datalogger/dsmrreading",
            ordering="timestamp",
            limit=500,
            timestamp__lte=before.isoformat(),
            **which,
        )
        found[f"day {meter}"] = api.get("/api/v2/statistics/day", day__gte="2026-03-09", day__lte="2026-03-11", **which)
        found[f"hour {meter}"] = api.get(
            "/api/v2/statistics/hour", hour_start__gte="2026-03-09T00:00:00Z", hour_start__lte="2026-03-10T23:00:00Z",
            limit=200, **which,
        )  # fmt: skip
        found[f"peaks {meter}"] = api.get(
            "/api/v2/consumption/quarter-hour-peak-electricity", read_at_start__gte="2026-03-09T00:00:00Z",
            read_at_start__lte="2026-03-10T23:59:59Z", limit=500, **which,
        )  # fmt: skip
    for meter in METERS:
        found[f"meter statistics {meter}"] = api.get("/api/v2/datalogger/meter-statistics", meter=meter)
    return found
