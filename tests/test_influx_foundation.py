"""The real influxd: build cache, start/stop, onboarding, a write read back through Flux, /health."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from falcon import testing
from helpers import REPO, dsmr_ts_command
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.task_update_request import TaskUpdateRequest
from influxdb_client.rest import ApiException

from dsmr_ts.app import create_app
from dsmr_ts.config import load_config
from dsmr_ts.influx.bootstrap import BootstrapError, admin_token, bootstrap
from dsmr_ts.influx.build import cache_dir
from dsmr_ts.influx.server import free_port, is_healthy
from dsmr_ts.influx.store import Store


def test_influxd_path_answers_from_cache(influxd_binary):
    result = subprocess.run(dsmr_ts_command("influxd", "path"), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(influxd_binary)
    if not os.environ.get("DSMR_TS_INFLUXD"):
        assert influxd_binary.parent == cache_dir()
    version = subprocess.run([str(influxd_binary), "version"], capture_output=True, text=True, timeout=30)
    assert version.stdout.startswith("InfluxDB 2.9.1"), version.stdout


def test_onboarding_then_second_setup_changes_nothing(private_influxd, tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(f"# mine\ninfluxdb:\n  managed: false\n  url: {private_influxd.url}\n  token: ''  # by setup\n")
    first = bootstrap(load_config(path), login_file=tmp_path / "influxdb-login.txt")
    assert first.onboarded is True
    assert first.created_buckets == ["dsmr_stats"]  # onboarding itself creates "dsmr"
    config = load_config(path)
    assert config.influxdb.token == first.token
    assert "# mine" in path.read_text() and "# by setup" in path.read_text()
    assert stat.S_IMODE(os.stat(tmp_path / "influxdb-login.txt").st_mode) == 0o600

    # The admin token is in its own 0600 file, never in the config that API workers load.
    admin = admin_token(config)
    assert admin and config.influxdb.admin_token == "" and admin not in path.read_text()
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "influxdb-admin-token").st_mode) == 0o600
    grafana = (tmp_path / "data" / "grafana-influxdb-token").read_text().strip()
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "grafana-influxdb-token").st_mode) == 0o640  # for Grafana's group

    second = bootstrap(config)
    assert (second.onboarded, second.created_buckets, second.token) == (False, [], first.token)
    assert admin_token(load_config(path)) == admin  # nothing new either
    assert (tmp_path / "data" / "grafana-influxdb-token").read_text().strip() == grafana
    with InfluxDBClient(url=private_influxd.url, token=admin, org="dsmr") as client:
        buckets = {b.name: b for b in client.buckets_api().find_buckets().buckets if not b.name.startswith("_")}
    assert sorted(buckets) == ["dsmr", "dsmr_stats"]
    # Both keep everything; statistics in shard groups of a year (counts sum hour rows of all of history).
    assert [(r.every_seconds, r.shard_group_duration_seconds) for r in buckets["dsmr_stats"].retention_rules] == [
        (0, 52 * 7 * 86400)
    ]
    assert [r.every_seconds for r in buckets["dsmr"].retention_rules] == [0]


def test_setup_of_a_set_up_server_without_token_says_what_to_do(session_config, tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(f"influxdb:\n  managed: false\n  url: {session_config.influxdb.url}\n")
    with pytest.raises(BootstrapError, match="already set up but there is no admin token: put an all-access token"):
        bootstrap(load_config(path))


def test_api_token_reaches_its_two_buckets_and_nothing_else(session_config):
    settings = session_config.influxdb
    assert settings.token and admin_token(session_config) and settings.token != admin_token(session_config)
    with InfluxDBClient(url=settings.url, token=settings.token, org=settings.org) as client:
        names = {b.name for b in client.buckets_api().find_buckets().buckets}
        assert names == {"dsmr", "dsmr_stats"}  # not even the system buckets
        # The tasks can be read (the housekeeping job follows the hour task's runs), never changed.
        tasks = client.tasks_api().find_tasks()
        assert sorted(t.name for t in tasks) == [
            "dsmr-ts day statistics",
            "dsmr-ts hour statistics",
            "dsmr-ts quarter-hour peaks",
        ]
        with pytest.raises(ApiException) as denied:
            client.tasks_api().update_task_request(tasks[0].id, TaskUpdateRequest(status="inactive"))
        assert "unauthorized" in str(denied.value)  # influxd 2.9 says so with a 500
        assert client.tasks_api().find_task_by_id(tasks[0].id).status == "active"
        org_id = bootstrap_result_org(session_config)
        with pytest.raises(ApiException) as denied:
            client.buckets_api().create_bucket(bucket_name="intruder", org=org_id)
        assert denied.value.status in (401, 403, 404)
        with pytest.raises(ApiException) as denied:
            client.authorizations_api().create_authorization(org_id=org_id, permissions=[])
        assert denied.value.status in (400, 401, 403)


def bootstrap_result_org(config) -> str:
    settings = config.influxdb
    with InfluxDBClient(url=settings.url, token=admin_token(config), org=settings.org) as admin:
        return admin.organizations_api().find_organizations(org=settings.org)[0].id


def test_older_config_with_the_all_access_token_is_migrated(private_influxd, tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(f"influxdb:\n  managed: false\n  url: {private_influxd.url}\n")
    bootstrap(load_config(path))
    admin = admin_token(load_config(path))
    (tmp_path / "data" / "influxdb-admin-token").unlink()
    # As an earlier dsmr-ts wrote it: the all-access token as `token`, no admin_token.
    path.write_text(f"influxdb:\n  managed: false\n  url: {private_influxd.url}\n  token: {admin}\n")
    bootstrap(load_config(path))
    migrated = load_config(path)
    assert admin_token(migrated) == admin and migrated.influxdb.token and migrated.influxdb.token != admin
    # And one that kept it as influxdb.admin_token: moved out into its file.
    path.write_text(f"influxdb:\n  managed: false\n  url: {private_influxd.url}\n  admin_token: {admin}\n")
    (tmp_path / "data" / "influxdb-admin-token").unlink()
    bootstrap(load_config(path))
    assert admin not in path.read_text() and admin_token(load_config(path)) == admin


def test_setup_with_a_wrong_token_is_refused_clearly(session_config, tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(f"influxdb:\n  managed: false\n  url: {session_config.influxdb.url}\n  token: wrong\n")
    with pytest.raises(BootstrapError, match="refused influxdb.token"):
        bootstrap(load_config(path))


def test_setup_of_an_unreachable_server_is_one_line(tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(f"influxdb:\n  managed: false\n  url: http://127.0.0.1:{free_port()}\n")
    with pytest.raises(BootstrapError, match="is unreachable"):
        bootstrap(load_config(path))


def test_a_point_written_with_influxdb_client_reads_back_through_flux(session_config):
    settings = session_config.influxdb
    with InfluxDBClient(url=settings.url, token=settings.token, org=settings.org) as client:
        point = Point("foundation_check").tag("meter", "m1").field("value", 1.5).time(1_700_000_000, WritePrecision.S)
        client.write_api(write_options=SYNCHRONOUS).write(bucket=settings.bucket, record=point)
        tables = client.query_api().query(
            f'from(bucket: "{settings.bucket}") |> range(start: 2023-11-01T00:00:00Z, stop: 2023-12-01T00:00:00Z)'
            ' |> filter(fn: (r) => r._measurement == "foundation_check")'
        )
    records = [r for t in tables for r in t.records]
    assert [(r.get_time().timestamp(), r["meter"], r.get_field(), r.get_value()) for r in records] == [
        (1_700_000_000, "m1", "value", 1.5)
    ]


def test_health_follows_influxd(private_influxd, tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(f"influxdb:\n  managed: false\n  url: {private_influxd.url}\n")
    config = load_config(path)
    bootstrap(config)
    client = testing.TestClient(create_app(config, Store(config.influxdb, timeout_ms=2000)))
    response = client.simulate_get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "influxdb": "ok"}
    private_influxd.stop()
    assert not is_healthy(private_influxd.url)
    response = client.simulate_get("/health")
    assert response.status_code == 503
    assert response.json["status"] == "error" and response.json["influxdb"] == "unreachable"
    assert private_influxd.url in response.json["detail"]


def test_influxql_answers_keep_their_types_and_a_refused_statement_names_the_reason(session_config):
    """InfluxQL answers come as MessagePack: floats stay floats (JSON made 1000.0 an int), counts
    are ints, and a statement influxd refuses is a StoreUnavailable with influxd's reason."""
    from dsmr_ts.influx.client import StoreUnavailable

    store = Store(session_config.influxdb)
    try:
        store.client.write("typecheck,meter=T value=1000.0,count=3i 1600000000000000000")
        (points, counted) = store.client.influxql(
            [
                "SELECT value, \"count\" FROM typecheck WHERE meter = 'T'",
                "SELECT count(value) FROM typecheck WHERE meter = 'T'",
            ]
        )
        row = next(points[0].rows())
        assert row == {"time": 1600000000, "value": 1000.0, "count": 3}
        assert isinstance(row["value"], float) and isinstance(row["count"], int)
        assert next(counted[0].rows())["count"] == 1
        with pytest.raises(StoreUnavailable, match="refused a query") as refused:
            store.client.influxql(["SELECT count(value) FROM typecheck", "SELECT mean(value), value FROM typecheck"])
        assert "mixing aggregate and non-aggregate" in str(refused.value)
    finally:
        store.close()


def test_setup_replaces_a_task_whose_flux_changed_and_leaves_the_others(session_config):
    """An upgrade's statistics fixes reach old installs: setup (which run does at every start)
    puts the new Flux into a task an older release made, and touches no other task."""
    from dsmr_ts.influx.tasks import HOUR_TASK, task_specs

    settings = session_config.influxdb
    wanted = {spec.name: spec.flux for spec in task_specs(session_config)}
    with InfluxDBClient(url=settings.url, token=admin_token(session_config), org=settings.org) as client:
        api = client.tasks_api()
        hour = next(t for t in api.find_tasks(name=HOUR_TASK) if t.name == HOUR_TASK)
        api.update_task_request(hour.id, TaskUpdateRequest(flux=hour.flux + "\n// the Flux of an older release\n"))
        before = {t.name: t.updated_at for t in api.find_tasks() if t.name != HOUR_TASK}
        assert bootstrap(session_config).tasks == [HOUR_TASK]
        after = {t.name: t for t in api.find_tasks()}
    assert after[HOUR_TASK].flux.strip() == wanted[HOUR_TASK].strip() and after[HOUR_TASK].status == "active"
    assert {name: after[name].updated_at for name in before} == before  # the others untouched
