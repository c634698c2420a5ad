"""Shared fixtures: one real influxd per test session, onboarded the way production does it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from helpers import TEST_KEY, start_api

from dsmr_ts.config import Config, load_config
from dsmr_ts.influx.bootstrap import bootstrap
from dsmr_ts.influx.build import ensure_influxd
from dsmr_ts.influx.server import ManagedInfluxd, free_port
from dsmr_ts.influx.store import Store

pytest_plugins = ["openapi_check"]

# Configs the tests write hold the API key: private, as dsmr-ts refuses a world-readable one.
os.umask(0o077)


@pytest.fixture(scope="session")
def influxd_binary() -> Path:
    return ensure_influxd()


@pytest.fixture(scope="session")
def influxd(influxd_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedInfluxd]:
    server = ManagedInfluxd(influxd_binary, tmp_path_factory.mktemp("influxd"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_influxd(influxd_binary: Path, tmp_path: Path) -> Iterator[ManagedInfluxd]:
    """An influxd of one test's own, for tests that stop it or need an empty store."""
    server = ManagedInfluxd(influxd_binary, tmp_path / "influxd", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def import_target(private_influxd: ManagedInfluxd, tmp_path: Path) -> Iterator[tuple[Path, Store]]:
    """(config path, Store) of an empty, set-up store: where an import writes."""
    config_path = tmp_path / "dsmr-ts.yaml"
    config_path.write_text(f"influxdb:\n  managed: false\n  url: {private_influxd.url}\n")
    bootstrap(load_config(config_path))
    store = Store(load_config(config_path).influxdb)
    yield config_path, store
    store.close()


@pytest.fixture(scope="session")
def session_config(influxd: ManagedInfluxd, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A config pointing at the session influxd, onboarded, API enabled with a known key."""
    path = tmp_path_factory.mktemp("config") / "dsmr-ts.yaml"
    path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\ninfluxdb:\n  managed: false\n  url: {influxd.url}\n  token: ''\n"
    )
    bootstrap(load_config(path, create=False))
    return load_config(path, create=False)


def _secrets_of(config_file: Path) -> set[str]:
    """Every secret a config (and the token files beside it) holds."""
    try:
        config = load_config(config_file, create=False)
    except Exception:
        return set()
    found = {
        config.api.key,
        config.influxdb.token,
        config.influxdb.admin_token,
        config.mqtt.password,
        config.reader.decryption_key,
        config.reader.authentication_key,
        *(target.key for target in config.reader.forward),
    }
    for name in (config.influxdb.admin_token_file, config.influxdb.grafana_token_file):
        path = config.resolve_path(name)
        if path.is_file():
            found.add(path.read_text().strip())
    # Short values are test placeholders ("wrong", "x"), common words a log may hold for other reasons.
    return {secret for secret in found if secret and len(secret) >= 16}


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """After the whole run: no log any test produced (gunicorn, reader, dsmr-ts run, influxd, nginx,
    mosquitto, ...) and no response any test received (responses.log, written by openapi_check:
    error bodies, /metrics) holds a secret: the API key, the scoped, admin and Grafana tokens, MQTT
    passwords, decryption keys, forward keys."""
    secrets: set[str] = {TEST_KEY}
    yield secrets
    base = tmp_path_factory.getbasetemp()
    for config_file in base.rglob("*.yaml"):
        secrets |= _secrets_of(config_file)
    logs = [path for path in base.rglob("*.log") if path.is_file()]
    leaks = [
        f"{path}: {secret[:6]}..." for path in logs for secret in secrets if secret in path.read_text(errors="replace")
    ]
    assert not leaks, f"secrets in logs: {leaks}"
    assert any(path.name == "responses.log" for path in logs), "the responses were not recorded"


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
    proc, url = start_api(session_config, tmp_path_factory.mktemp("gunicorn") / "serve.log")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
