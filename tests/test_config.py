"""Config: defaults, generated key, env overrides, clear errors, comments kept."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
import yaml
from helpers import REPO, dsmr_ts_command

from dsmr_ts.config import ConfigError, load_config, save_setting, set_yaml_scalar


def test_defaults_api_disabled_and_key_generated(tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    config = load_config(path)
    assert config.api.enabled is False
    assert len(config.api.key) == 64
    assert config.api.key.isalnum() and config.api.key == config.api.key.upper()
    assert config.server.bind == "127.0.0.1:7777"
    assert config.influxdb.bucket == "dsmr" and config.influxdb.stats_bucket == "dsmr_stats"
    assert config.timezone == "Europe/Amsterdam"
    assert config.reader.port is None


def test_key_generated_once_persisted_private_and_comments_kept(tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text("# my notes about this install\napi:\n  enabled: false  # not yet\nserver:\n  workers: 3\n")
    first = load_config(path)
    text = path.read_text()
    assert "# my notes about this install" in text
    assert "enabled: false  # not yet" in text
    assert first.api.key in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = load_config(path)
    assert second.api.key == first.api.key
    assert second.server.workers == 3


def test_created_from_example_with_mode_0600(tmp_path):
    path = tmp_path / "sub" / "dsmr-ts.yaml"
    config = load_config(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert "The REST API is off by default" in text  # the example's comments came along
    assert f'key: "{config.api.key}"' in text


def test_user_key_is_kept(tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text("api:\n  key: MYOWNKEY1234567890MYOWNKEY1234567890\n")
    assert load_config(path).api.key == "MYOWNKEY1234567890MYOWNKEY1234567890"
    assert path.read_text() == "api:\n  key: MYOWNKEY1234567890MYOWNKEY1234567890\n"


def test_env_overrides(tmp_path, monkeypatch):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text("api:\n  enabled: false\n  key: FILEKEY1234567890FILEKEY1234567890AB\n")
    monkeypatch.setenv("DSMR_TS_API_ENABLED", "true")
    monkeypatch.setenv("DSMR_TS_SERVER_WORKERS", "5")
    monkeypatch.setenv("DSMR_TS_INFLUXDB_STATS_BUCKET", "other_stats")
    monkeypatch.setenv("DSMR_TS_TIMEZONE", "Europe/Brussels")
    config = load_config(path)
    assert config.api.enabled is True
    assert config.server.workers == 5
    assert config.influxdb.stats_bucket == "other_stats"
    assert config.timezone == "Europe/Brussels"
    assert "enabled: false" in path.read_text()  # overrides never get written to the file


def test_env_key_is_not_persisted(tmp_path, monkeypatch):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text("api:\n  enabled: true\n")
    monkeypatch.setenv("DSMR_TS_API_KEY", "ENVKEY123456ENVKEY123456ENVKEY123456")
    assert load_config(path).api.key == "ENVKEY123456ENVKEY123456ENVKEY123456"
    assert "ENVKEY123456ENVKEY123456ENVKEY123456" not in path.read_text() and "key" not in path.read_text()


@pytest.mark.parametrize(
    "text, message",
    [
        ("api:\n  enabled: [\n", "invalid YAML at line"),
        ("api:\n  enabeld: true\n", "api.enabeld: unknown key"),
        ("bogus: 1\n", "bogus: unknown key"),
        ("api:\n  enabled: 'yes please'\n", "api.enabled: expected true or false, got 'yes please'"),
        ("server:\n  workers: two\n", "server.workers: expected a whole number, got 'two'"),
        ("server: 5\n", "server: expected a mapping, got 5"),
        ("api:\n  wrong_keys_per_minute: -1\n", "api.wrong_keys_per_minute: must be 0 (never lock out) or more"),
        ("server:\n  bind: 127.0.0.1:8086\n", "server.bind: 127.0.0.1:8086 is influxdb.url's port"),
        ("server:\n  bind: 0.0.0.0:9999\ninfluxdb:\n  url: http://localhost:9999\n", "is influxdb.url's port"),
        ("timezone: Mars/Olympus\n", "timezone: unknown time zone 'Mars/Olympus'"),
        ("reader:\n  dsmr_version: 7\n", "reader.dsmr_version: expected one of"),
        ("prices:\n  - start: someday\n", "prices[0].start: expected a date like 2024-01-01, got 'someday'"),
        ("prices:\n  - {start: 2024-01-01, gas: cheap}\n", "prices[0].gas: expected a number, got 'cheap'"),
        ("- just\n- a list\n", "expected a mapping of sections"),
    ],
)
def test_bad_config_gives_one_clear_line(tmp_path, text, message):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_config_on_the_command_line_is_one_line_without_traceback(tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text("api:\n  enabled: maybe\n")
    result = subprocess.run(
        dsmr_ts_command("--config", str(path), "setup"), capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"dsmr-ts: config error: {path}: api.enabled: expected true or false, got 'maybe'"
    assert "Traceback" not in result.stderr


def test_save_setting_edits_one_line(tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    original = '# top\ninfluxdb:\n  url: http://x:1  # where\n  token: ""  # set by setup\nreader:\n  port: null\n'
    path.write_text(original)
    save_setting(path, "influxdb", "token", "abc==-_")
    text = path.read_text()
    assert text == original.replace('token: ""  # set by setup', 'token: "abc==-_"  # set by setup')
    assert yaml.safe_load(text)["influxdb"]["token"] == "abc==-_"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("api:\n  enabled: true\n", {"enabled": True, "key": "K"}),  # key added to the block
        ("other: 1\n", {"key": "K"}),  # section added
        ("api: {enabled: true}\n", {"enabled": True, "key": "K"}),  # flow style rewritten
        ("api:\n    enabled: true\n    key: OLD\n", {"enabled": True, "key": "K"}),  # 4-space indent kept
    ],
)
def test_set_yaml_scalar_shapes(text, expected):
    assert yaml.safe_load(set_yaml_scalar(text, "api", "key", "K"))["api"] == expected


def test_mqtt_tls_written_as_yaml_booleans_means_off_or_verify(tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text("mqtt:\n  tls: off\n")
    assert load_config(path).mqtt.tls == "off"
    path.write_text("mqtt:\n  tls: on\n")
    assert load_config(path).mqtt.tls == "verify"


def test_short_user_keys_are_refused(tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text("api:\n  key: short-but-mine\n")
    with pytest.raises(ConfigError, match="api.key: use 32 to 256 printable characters without spaces \\(got 14\\)"):
        load_config(path)


def test_a_config_every_user_can_read_is_refused(tmp_path):
    """Like ssh with keys: the file holds the API key and tokens."""
    path = tmp_path / "dsmr-ts.yaml"
    load_config(path)  # created 0600 with a generated key
    path.chmod(0o644)
    result = subprocess.run(
        dsmr_ts_command("serve", "--config", str(path)), capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"dsmr-ts: config error: {path}: the config (it holds the API key and tokens) is readable"
        f" by every user (mode 0644); run: chmod 600 {path}\n"
    )
    path.chmod(0o640)  # a group of its own may read it (a docker or service group)
    assert load_config(path).api.key


def test_forward_key_from_a_file_of_its_own(tmp_path):
    key_file = tmp_path / "remote-key"
    key_file.write_text("REMOTEKEY0123456789REMOTEKEY0123456789\n")
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(
        "reader:\n  forward:\n    - {url: 'http://remote/api/v1/datalogger/dsmrreading', key_file: remote-key}\n"
    )
    assert load_config(path).reader.forward[0].key == "REMOTEKEY0123456789REMOTEKEY0123456789"
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match=r"reader.forward\[0\].key_file: a forward target's key is readable by every"):
        load_config(path)
