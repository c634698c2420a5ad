"""The README's `make run` as a newcomer meets it: managed influxd, setup, API, a simulated meter
whose readings come out of the API; Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import requests
import yaml
from helpers import REPO, TEST_KEY, wait_for

from dsmr_ts.influx.server import free_port


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line or environment mentions text (our temp dir is unique)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(entry.name))
    return found


def test_run_starts_everything_with_a_simulated_meter_and_sigint_stops_all(tmp_path, influxd_binary):
    api_port, influx_port = free_port(), free_port()
    config_path = tmp_path / "dsmr-ts.yaml"
    config_path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\n"
        f"server:\n  bind: 127.0.0.1:{api_port}\n  workers: 1\n"
        f"influxdb:\n  url: http://127.0.0.1:{influx_port}\n  data_dir: ./influx-data\n"
        "reader:\n  spool_dir: ./spool\n"  # port null: the simulated meter
    )
    log = open(tmp_path / "run.log", "w+")
    # The README's run command, exactly, as a newcomer types it (the config comes from the env).
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_")}, "DSMR_TS_CONFIG": str(config_path)}
    proc = subprocess.Popen(
        ["make", "run"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:

        def api_healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            try:
                return requests.get(f"http://127.0.0.1:{api_port}/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(api_healthy, timeout=90, what="the API's /health under `dsmr-ts run`")

        def readings_served() -> int:
            response = requests.get(
                f"http://127.0.0.1:{api_port}/api/v2/datalogger/dsmrreading",
                headers={"X-AUTHKEY": TEST_KEY},
                params={"ordering": "-timestamp", "limit": 1},
            )
            assert response.status_code == 200, response.text
            return response.json()["count"]

        # The newcomer sees data flowing: the simulated meter's readings come out of the API.
        first = wait_for(readings_served, timeout=60, what="simulated readings through the API")
        wait_for(lambda: readings_served() > first, timeout=30, what="more readings a second later")
        assert (tmp_path / "influx-data" / "engine").is_dir()  # data_dir is relative to the config file
        output = (tmp_path / "run.log").read_text()
        assert f"http://127.0.0.1:{api_port}/api/v2/datalogger/dsmrreading" in output
        assert "a simulated DSMR 5 meter" in output
        assert "api.key" in output
        written = yaml.safe_load(config_path.read_text())
        assert written["influxdb"]["token"] and written["api"]["key"]
        assert not written["influxdb"].get("admin_token")  # kept in its own file, for setup alone
        admin = (tmp_path / "data" / "influxdb-admin-token").read_text().strip()
        for secret in (written["influxdb"]["token"], admin, written["api"]["key"]):
            assert secret and secret not in output
        assert processes_mentioning(str(tmp_path)), "children should be running"
        # Ctrl-C: the terminal sends SIGINT to the foreground process group (make and dsmr-ts run).
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        assert "dsmr_ts: stopping" in (tmp_path / "run.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    wait_for(lambda: not processes_mentioning(str(tmp_path)), timeout=30, what="no process left behind")
