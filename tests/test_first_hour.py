"""A newcomer's first hour: a clone that tests itself, options where people type them, commands beside
a running service, config mistakes told in one line, and the small things a user notices."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import yaml
from helpers import REPO, TEST_KEY, dsmr_ts_command, wait_for

from dsmr_ts.cli import build_parser
from dsmr_ts.config import Config, load_config
from dsmr_ts.costs import day_costs
from dsmr_ts.formats import decimal_string, money
from dsmr_ts.influx.build import INFLUXDB_VERSION
from dsmr_ts.influx.server import free_port

pytestmark = pytest.mark.slow


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_") or k == "DSMR_TS_INFLUXD"}
    env.update(extra)
    return env


# --- 1. a clone tests itself -----------------------------------------------------------------------


def test_a_clone_without_shared_beside_it_passes_the_telegram_tests(tmp_path):
    """The committed repository holds everything its telegram tests read: cloned alone into a
    folder with nothing beside it, they all pass and none is skipped."""
    clone = tmp_path / "alone" / "dsmr-ts"
    if (REPO / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    else:  # an unpacked release: copy what would be committed
        shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".venv", "__pycache__", "data", "*.egg-info"))
    assert not (clone.parent.parent / "shared").exists() and not (clone.parent / "shared").exists()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_telegram.py",
            "tests/test_reader.py::test_framing_dsmr22_without_crc",
        ],
        cwd=clone,
        env=clean_env(PYTHONPATH=str(clone)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary


# --- 2. options after the command ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--config", "X"],
        ["--config", "X", "run"],
        ["regenerate", "--config", "X", "--since", "2024-01-01"],
        ["import", "csv", "file.csv", "--config", "X"],
        ["influxd", "run", "--config", "X"],
        ["export", "day", "--config", "X"],
        ["setup", "--config", "X"],
        ["reader", "--config", "X"],
        ["serve", "--config", "X"],
        ["simulate", "--serial", "/dev/null", "--config", "X"],
    ],
)
def test_config_and_verbose_are_taken_before_and_after_the_command(argv):
    args = build_parser().parse_args(argv + ["-v"])
    assert args.config == "X" and args.verbose


def test_every_command_has_a_one_line_description_and_there_is_a_version():
    version = subprocess.run(dsmr_ts_command("--version"), capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip().startswith("dsmr-ts ")
    assert version.stdout.strip().endswith(f"(InfluxDB {INFLUXDB_VERSION.lstrip('v')})")  # what it runs on
    commands = [
        ["run"],
        ["serve"],
        ["setup"],
        ["reader"],
        ["simulate"],
        ["regenerate"],
        ["import"],
        ["import", "dsmr-reader"],
        ["import", "csv"],
        ["export"],
        ["influxd"],
        ["influxd", "path"],
        ["influxd", "run"],
    ]
    for command in commands:
        text = subprocess.run(dsmr_ts_command(*command, "--help"), capture_output=True, text=True, timeout=60).stdout
        paragraphs = text.split("\n\n")
        assert len(paragraphs) > 2, (command, text)
        description = paragraphs[1].strip()
        assert description and "\n" not in description, (command, description)


# --- 3. commands beside a running service --------------------------------------------------------


def write_config(folder: Path, **sections: str) -> Path:
    api_port, influx_port = free_port(), free_port()
    text = (
        f"api:\n  enabled: true\n  key: {TEST_KEY}\n"
        f"server:\n  bind: 127.0.0.1:{api_port}\n  workers: 1\n"
        f"influxdb:\n  url: http://127.0.0.1:{influx_port}\n  data_dir: ./influx-data\n"
        f"reader:\n  spool_dir: ./spool\n"
    )
    for name, body in sections.items():
        text += f"{name}:\n{body}"
    path = folder / "dsmr-ts.yaml"
    path.write_text(text)
    return path


def test_commands_use_the_influxd_that_run_started_and_a_second_run_is_refused(tmp_path):
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    api = f"http://{config.server.bind}"
    log = open(tmp_path / "run.log", "w+")
    run = subprocess.Popen(
        dsmr_ts_command("run", "--config", str(config_path)),
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def readings() -> int:
            assert run.poll() is None, (tmp_path / "run.log").read_text()
            try:
                response = requests.get(
                    api + "/api/v2/datalogger/dsmrreading",
                    headers={"X-AUTHKEY": TEST_KEY},
                    params={"limit": 1},
                    timeout=5,
                )
            except requests.ConnectionError:
                return 0
            return response.json()["count"] if response.status_code == 200 else 0

        wait_for(lambda: readings() >= 3, timeout=120, what="simulated readings under `dsmr-ts run`")
        # The welcome text came only once the API answered; it says the meter is simulated.
        output = (tmp_path / "run.log").read_text()
        assert "dsmr-ts is running" in output and "simulated" in output
        assert "reader.port" in output and "reader.enabled: false" in output  # how to switch
        # A fresh install has no problem to report before the first hourly task run.
        monitoring = requests.get(api + "/api/v2/application/monitoring", headers={"X-AUTHKEY": TEST_KEY}, timeout=5)
        assert monitoring.json() == {"problems": 0, "details": []}

        influxd_pid = yaml.safe_load((tmp_path / "influx-data" / "influxd.pid").read_text())["pid"]

        def command(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
            return subprocess.run(
                dsmr_ts_command(*args, "--config", str(config_path)),
                env=clean_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=tmp_path,
            )

        regenerate = command("regenerate", "--since", dt.date.today().isoformat())
        assert regenerate.returncode == 0, regenerate.stderr
        assert "using the influxd already running" in regenerate.stderr
        exported = command("export", "readings")
        assert exported.returncode == 0, exported.stderr
        rows = exported.stdout.strip().splitlines()
        assert rows[0].startswith("timestamp,") and len(rows) >= 4
        setup = command("setup")
        assert setup.returncode == 0 and "already set up" in setup.stderr, setup.stderr
        # Still the same influxd, and run never noticed a thing.
        assert yaml.safe_load((tmp_path / "influx-data" / "influxd.pid").read_text())["pid"] == influxd_pid
        assert run.poll() is None

        second = command("run", timeout=60)
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"dsmr-ts: dsmr-ts run is already running for {tmp_path / 'influx-data'}"
            f" (pid {run.pid}); stop that one first"
        )
        assert run.poll() is None and readings() > 0
    finally:
        os.killpg(run.pid, signal.SIGINT)
        run.wait(60)
        log.close()


# --- 4. config mistakes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("server:\n  bind: 127.0.0.1:70000\n", "server.bind: the port must be 1 to 65535, got 70000"),
        ("server:\n  bind: localhost\n", "server.bind: expected host:port (e.g. 127.0.0.1:7777) or unix:PATH"),
        ("influxdb:\n  url: influx.local:8086\n", "influxdb.url: expected an http:// or https:// URL with a host"),
        ("influxdb:\n  managed: false\n  url: http://influx:99999\n", "influxdb.url: the port must be 1 to 65535"),
        ("influxdb:\n  url: http://influx.example:8086\n", "influxdb.url: with influxdb.managed: true dsmr-ts starts"),
        (
            "reader:\n  forward:\n    - {url: ftp://x, key: K}\n",
            "reader.forward[0].url: expected an http:// or https://",
        ),
        (
            "prices:\n  - {start: 2024-01-01}\n  - {start: 2023-01-01}\n",
            "prices[1].start: 2023-01-01 comes before prices[0].start (2024-01-01); list the periods oldest first",
        ),
        (
            "prices:\n  - {start: 2024-01-01}\n  - {start: 2024-01-01}\n",
            "prices[1].start: 2024-01-01 is also the start",
        ),
        ("reader:\n  spool_max_bytes: 10\n", "reader.spool_max_bytes: must be at least 1024"),
        ("mqtt:\n  port: 70000\n", "mqtt.port: the port must be 1 to 65535, got 70000"),
        (
            "reader:\n  decryption_key: abc\n",
            "reader.decryption_key: expected 32 hexadecimal characters (16 bytes), got 3",
        ),
        (
            "reader:\n  dsmr_version: austria\n",
            "reader.dsmr_version: expected one of 2.2, 3, 4, 5, fluvius, smarty, iskra_ie,",
        ),
        ("mqtt:\n  publish: [reading, readings]\n", "mqtt.publish[1]: expected one of raw, json, reading, day,"),
        ("mqtt:\n  tls: strict\n", "mqtt.tls: expected one of off, verify, insecure, got 'strict'"),
        ("mqtt:\n  prefix: dsmr/#\n", "mqtt.prefix: expected a topic like dsmr"),
    ],
)
def test_value_mistakes_are_one_line_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text("api:\n  key: ABCDEFGH12345678ABCDEFGH12345678\n" + text)
    result = subprocess.run(
        dsmr_ts_command("setup", "--config", str(path)), env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"dsmr-ts: config error: {path}: {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_folder_that_cannot_be_created_is_named(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(f"api:\n  key: ABCDEFGH12345678ABCDEFGH12345678\ninfluxdb:\n  data_dir: {blocker}/influx\n")
    result = subprocess.run(
        dsmr_ts_command("setup", "--config", str(path)), env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert result.stderr.strip() == f"dsmr-ts: config error: {path}: influxdb.data_dir: {blocker} is not a folder"


def test_a_folder_the_system_refuses_is_named_even_for_root(tmp_path):
    """os.access says yes to root everywhere; /proc takes no new folders from anyone."""
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text("influxdb:\n  data_dir: /proc/dsmr-ts-data\n")
    path.chmod(0o600)
    result = subprocess.run(
        dsmr_ts_command("run", "--config", str(path)), env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"dsmr-ts: config error: {path}: influxdb.data_dir: cannot create /proc/dsmr-ts-data (/proc refused it: "
    )
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_with_several_mistakes_the_first_in_the_file_is_reported_every_time(tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(
        "server:\n  workers: 0\n  bind: nowhere\ntimezone: Mars/Base\napi:\n  enabled: perhaps\n"
        "reader:\n  dsmr_version: 9\n  colour: blue\n"
    )
    messages = set()
    for _ in range(5):
        result = subprocess.run(
            dsmr_ts_command("setup", "--config", str(path)), env=clean_env(), capture_output=True, text=True, timeout=60
        )
        messages.add(result.stderr.strip())
    assert messages == {f"dsmr-ts: config error: {path}: server.workers: must be at least 1, got 0"}
    path.write_text("reader:\n  colour: blue\nserver:\n  workers: 0\n")
    result = subprocess.run(
        dsmr_ts_command("setup", "--config", str(path)), env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert result.stderr.startswith(f"dsmr-ts: config error: {path}: reader.colour: unknown key")


def test_ports_are_checked_before_anything_starts_or_the_welcome_is_printed(tmp_path):
    import socket

    config_path = write_config(tmp_path)
    config = load_config(config_path)
    host, port = config.server.bind.rsplit(":", 1)
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        result = subprocess.run(
            dsmr_ts_command("run", "--config", str(config_path)),
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"dsmr-ts: server.bind {config.server.bind}: the port is in use (is dsmr-ts or another server running?)"
    )
    assert "dsmr-ts is running" not in result.stdout
    assert not (tmp_path / "influx-data" / "engine").exists()  # influxd never started


# --- 5. every key documented ---------------------------------------------------------------------


def schema_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for field in dataclasses.fields(cls):
        if field.name == "path":
            continue
        path = prefix + field.name
        keys.append(path)
        hint = cls.__annotations__[field.name]
        item = _list_item(hint)
        if item:
            keys += schema_keys(item, path + "[].")
        elif isinstance(hint, str) and hint[0].isupper() and hint.endswith("Config"):
            keys += schema_keys(getattr(sys.modules[cls.__module__], hint), path + ".")
    return keys


def _list_item(hint: str) -> type | None:
    import dsmr_ts.config as module

    if isinstance(hint, str) and hint.startswith("list[") and hint[5:-1] in vars(module):
        return vars(module)[hint[5:-1]]
    return None


def example_keys(raw, prefix: str = "") -> set[str]:
    keys = set()
    if isinstance(raw, dict):
        for key, value in raw.items():
            path = prefix + key
            keys.add(path)
            if isinstance(value, dict) and key != "serial":
                keys |= example_keys(value, path + ".")
            if isinstance(value, list):
                for item in value:
                    keys |= example_keys(item, path + "[].")
    return keys


def test_the_example_config_documents_every_key_the_schema_accepts():
    text = (REPO / "config" / "dsmr-ts.example.yaml").read_text()
    documented = example_keys(yaml.safe_load(text))
    for key in schema_keys():
        if key in documented:
            continue
        # A list that is empty in the example (reader.forward) documents its items in a comment.
        section, _, leaf = key.rpartition("[].")
        assert section and section in documented and f"{leaf}:" in text, f"{key} is not in the example config"
    for key in documented:
        assert key in schema_keys() or key.startswith("reader.serial."), f"{key} is not a config key"
    load_config(REPO / "config" / "dsmr-ts.example.yaml", create=False)  # and it is valid as it is


# --- 8. small things -----------------------------------------------------------------------------


def test_costs_and_amounts_never_show_a_negative_zero():
    from dsmr_ts.config import PricePeriod

    price = PricePeriod(electricity_delivered_1=0.25, electricity_returned_1=0.30)
    costs = day_costs({"electricity1": 0.001, "electricity1_returned": 0.01}, price)  # -0.00275
    assert costs["electricity1_cost"] == "0.00" and costs["total_cost"] == "0.00"
    assert money(Decimal("-0.004")) == "0.00" and money(Decimal("-0.005")) == "-0.01"
    assert decimal_string(-0.0001, 3) == "0.000"


def test_two_api_instances_keep_their_control_sockets_apart(session_config):
    from helpers import start_api

    folders = [Path(tempfile.mkdtemp(prefix="ctl", dir="/tmp")) for _ in range(2)]
    processes = []
    try:
        for folder in folders:
            proc, _ = start_api(
                session_config, folder / "api.log", DSMR_TS_SERVER_CONTROL_SOCKET=str(folder / "data" / "gunicorn.ctl")
            )
            processes.append(proc)
        for folder in folders:
            wait_for(lambda: (folder / "data" / "gunicorn.ctl").is_socket(), what=f"a control socket in {folder}")
    finally:
        for proc in processes:
            proc.terminate()
            proc.wait(30)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


# --- 9. a store that refuses the token -------------------------------------------------------------


def test_health_names_a_refused_token_and_setup_replaces_it(tmp_path):
    """A config reused with a fresh data dir keeps a token the new influxd does not know: /health
    says so (503), and the next setup (here: through regenerate, which needs the store) replaces it."""
    from falcon import testing

    from dsmr_ts.app import create_app
    from dsmr_ts.influx.store import Store

    config_path = write_config(tmp_path, reader="  enabled: false\n")
    setup = subprocess.run(
        dsmr_ts_command("setup", "--config", str(config_path)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert setup.returncode == 0, setup.stderr
    assert (tmp_path / "influx-data" / "influxdb-login.txt").is_file()
    old_token = load_config(config_path).influxdb.token
    shutil.rmtree(tmp_path / "influx-data")  # a fresh data dir; the config keeps its tokens

    # influxd up on the fresh data dir (setup not run yet), the old token in the config.
    influxd = subprocess.Popen(
        dsmr_ts_command("influxd", "run", "--config", str(config_path)),
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        config = load_config(config_path)
        wait_for(lambda: _answers(config), timeout=60, what="influxd")
        store = Store(config.influxdb)
        try:
            health = testing.TestClient(create_app(config, store)).simulate_get("/health")
        finally:
            store.close()
        assert health.status_code == 503
        assert health.json["influxdb"] == "unauthorized"
        assert health.json["detail"].startswith("InfluxDB refused influxdb.token (HTTP 401)")

        regenerate = subprocess.run(
            dsmr_ts_command("regenerate", "--config", str(config_path)),
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert regenerate.returncode == 0, regenerate.stderr
        assert "HTTP 401" not in regenerate.stderr
        new_config = load_config(config_path)
        assert new_config.influxdb.token and new_config.influxdb.token != old_token
        store = Store(new_config.influxdb)
        try:
            assert testing.TestClient(create_app(new_config, store)).simulate_get("/health").status_code == 200
        finally:
            store.close()
    finally:
        os.killpg(influxd.pid, signal.SIGTERM)
        influxd.wait(60)


def _answers(config) -> bool:
    try:
        return requests.get(config.influxdb.url + "/health", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
