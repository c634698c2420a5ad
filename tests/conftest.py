"""Shared fixtures: one real influxd per test session, onboarded the way production does it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import requests

from dsmr_ts.config import Config, load_config
from dsmr_ts.influx.bootstrap import bootstrap
from dsmr_ts.influx.build import ensure_influxd
from dsmr_ts.influx.server import ManagedInfluxd, free_port
from helpers import REPO, TEST_KEY, dsmr_ts_command, wait_for

pytest_plugins = ["openapi_check"]


@pytest.fixture(scope="session")
def influxd_binary() -> Path:
    return ensure_influxd()


@pytest.fixture(scope="session")
def influxd(influxd_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedInfluxd]:
    server = ManagedInfluxd(influxd_binary, tmp_path_factory.mktemp("influxd"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def session_config(influxd: ManagedInfluxd, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A config pointing at the session influxd, onboarded, API enabled with a known key."""
    path = tmp_path_factory.mktemp("config") / "dsmr-ts.yaml"
    path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\n"
        f"influxdb:\n  managed: false\n  url: {influxd.url}\n  token: ''\n"
    )
    bootstrap(load_config(path, create=False))
    return load_config(path, create=False)


@pytest.fixture
def config(session_config: Config) -> Config:
    """A fresh copy per test, so a test may change settings freely."""
    return load_config(session_config.path, create=False)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DSMR_TS_* from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("DSMR_TS_") and name != "DSMR_TS_INFLUXD":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def api_server(session_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real API: `dsmr-ts serve` (gunicorn, 2 workers) on a free port; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("gunicorn") / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_")}
    env.update(DSMR_TS_CONFIG=str(session_config.path), DSMR_TS_SERVER_BIND=f"127.0.0.1:{port}")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(dsmr_ts_command("serve"), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"dsmr-ts serve exited:\n{log_path.read_text()}")
        try:
            return requests.get(url + "/health", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(healthy, timeout=60, what="gunicorn to serve /health")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
