"""Deployment as users run it: gunicorn behind the shipped nginx site, graceful reload and
shutdown of gunicorn under load, and a docker-compose file that matches the config keys."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import threading
import urllib.parse
from pathlib import Path
from typing import Iterator

import pytest
import requests
import yaml

from dsmr_ts import config as config_module
from dsmr_ts.influx.server import free_port
from dsmr_ts.influx.store import Store
from dsmr_ts.telegram import Reading, build_telegram
from helpers import REPO, TEST_KEY, debian_binary, port_open, start_api, wait_for
from test_api_ingest import a_reading, unique_moment

KEY = {"X-AUTHKEY": TEST_KEY}
V1 = "/api/v1/datalogger/dsmrreading"
V2 = "/api/v2/datalogger/dsmrreading"


# --- nginx ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """nginx from Debian; installed here if this machine does not have it yet."""
    return debian_binary("nginx", "nginx")


@pytest.fixture
def behind_nginx(nginx_binary, session_config, tmp_path) -> Iterator[str]:
    """The shipped site (deploy/nginx/dsmr-ts.conf), with its upstream and listen address pointed
    at loopback ports and its paths in a temp dir, in front of a real gunicorn."""
    api, api_url = start_api(session_config, tmp_path / "api.log", DSMR_TS_SERVER_TRUST_FORWARDED_HEADERS="true")
    port = free_port()
    site = (REPO / "deploy" / "nginx" / "dsmr-ts.conf").read_text()
    site = site.replace("server api:7777;", f"server {api_url.removeprefix('http://')};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    assert str(port) in site and api_url.removeprefix("http://") in site
    (tmp_path / "site.conf").write_text(site)
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {tmp_path}/access.log;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/site.conf;
}}
""")
    nginx = subprocess.Popen([nginx_binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: nginx.poll() is None and port_open("127.0.0.1", port), what="nginx to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        nginx.terminate()
        nginx.wait(30)
        api.terminate()
        api.wait(30)


def test_api_through_nginx(behind_nginx):
    moment = unique_moment()
    telegram = build_telegram(a_reading(moment, meter="E-NGINX"))
    response = requests.post(behind_nginx + V1, headers=KEY, data={"telegram": telegram})
    assert (response.status_code, response.text) == (201, "")
    for i in range(3):
        requests.post(behind_nginx + V1, headers=KEY,
                      data={"telegram": build_telegram(a_reading(unique_moment(), meter="E-NGINX"))})
    body = requests.get(behind_nginx + V2, headers=KEY, params={"meter": "E-NGINX", "limit": 2, "offset": 1}).json()
    assert body["count"] == 4
    # The links show the address the client used (nginx), not gunicorn's.
    assert body["next"].startswith(f"{behind_nginx}{V2}?limit=2&meter=E-NGINX&offset=3")
    assert body["previous"] == f"{behind_nginx}{V2}?limit=2&meter=E-NGINX"


def test_nginx_refuses_oversized_bodies(behind_nginx):
    response = requests.post(behind_nginx + V1, headers=KEY, data={"telegram": "x" * 200_000})
    assert response.status_code == 413


# --- gunicorn: graceful reload and shutdown --------------------------------------------------------


def workers_of(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in children.read_text().split()} if children.exists() else set()


@pytest.fixture(scope="module")
def many_readings(session_config):
    store = Store(session_config.influxdb)
    start = dt.datetime.fromtimestamp(1_700_000_000, dt.timezone.utc)
    readings = [Reading(start + dt.timedelta(seconds=i), "E-GRACEFUL",
                        {"electricity_delivered_1": float(i), "electricity_currently_delivered": 0.1})
                for i in range(30_000)]
    for first in range(0, len(readings), 5000):
        store.writer.store_readings(readings[first:first + 5000])
    store.close()
    return "E-GRACEFUL"


class Load:
    """Clients that keep requesting until stopped; every failure is kept."""

    def __init__(self, url: str, clients: int = 4):
        self.url, self.stop = url, threading.Event()
        self.ok, self.errors = 0, []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            try:
                response = session.get(self.url + V2, headers=KEY, params={"meter": "E-GRACEFUL", "limit": 50},
                                        timeout=30)
                if response.status_code == 200 and len(response.json()["results"]) == 50:
                    self.ok += 1
                else:
                    self.errors.append(response.status_code)
            except requests.RequestException as exc:
                self.errors.append(repr(exc))

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def test_hup_reloads_workers_without_failing_a_request(session_config, many_readings, tmp_path):
    api, url = start_api(session_config, tmp_path / "api.log")
    try:
        before = workers_of(api.pid)
        assert len(before) == 2
        load = Load(url)
        wait_for(lambda: load.ok >= 20, what="requests flowing")
        api.send_signal(signal.SIGHUP)
        wait_for(lambda: len(workers_of(api.pid)) == 2 and not (workers_of(api.pid) & before),
                 what="both workers replaced")
        served = load.ok
        wait_for(lambda: load.ok >= served + 20, what="requests served by the new workers")
        load.finish()
        assert load.errors == []
    finally:
        api.terminate()
        api.wait(30)


def test_term_lets_requests_in_flight_finish(session_config, many_readings, tmp_path):
    api, url = start_api(session_config, tmp_path / "api.log")
    # Big streamed pages, started before the TERM and read after it.
    responses = [requests.get(url + V2, headers=KEY, params={"meter": many_readings, "limit": 30_000}, stream=True,
                              timeout=60) for _ in range(2)]
    for response in responses:
        assert response.status_code == 200
    api.send_signal(signal.SIGTERM)
    for response in responses:
        body = response.json()  # the whole body arrives: no reset connection, no cut-off JSON
        assert len(body["results"]) == 30_000
    assert api.wait(60) == 0
    assert not port_open("127.0.0.1", int(urllib.parse.urlsplit(url).port))


# --- docker-compose --------------------------------------------------------------------------------


def config_key_for_env(name: str) -> bool:
    """Does DSMR_TS_<SECTION>_<KEY> name a real config key (the same rule load_config uses)?"""
    if name == "DSMR_TS_CONFIG":
        return True
    raw: dict = {}
    config_module._apply_env_overrides(raw, {name: "x"})
    (section, value), = raw.items()
    if not isinstance(value, dict):
        return section in {f.name for f in dataclasses.fields(config_module.Config)}
    (key,) = value
    section_type = config_module._hints(config_module.Config)[section]
    return key in {f.name for f in dataclasses.fields(section_type)}


def test_docker_compose_structure():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"influxdb", "api", "reader", "mosquitto", "nginx", "grafana"}
    assert services["influxdb"]["image"] == "influxdb:2"
    init = services["influxdb"]["environment"]
    for name in ("DOCKER_INFLUXDB_INIT_MODE", "DOCKER_INFLUXDB_INIT_USERNAME", "DOCKER_INFLUXDB_INIT_PASSWORD",
                 "DOCKER_INFLUXDB_INIT_ORG", "DOCKER_INFLUXDB_INIT_BUCKET", "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"):
        assert name in init
    assert init["DOCKER_INFLUXDB_INIT_BUCKET"] == "dsmr"
    for name in ("api", "reader"):
        service = services[name]
        assert service["build"] == "." and (REPO / "Dockerfile").exists()
        env = service["environment"]
        for key in env:
            assert key.startswith("DSMR_TS_") and config_key_for_env(key), f"{name}: {key} is not a config key"
        assert env["DSMR_TS_INFLUXDB_ORG"] == init["DOCKER_INFLUXDB_INIT_ORG"]
        assert env["DSMR_TS_INFLUXDB_URL"] == "http://influxdb:8086"
    assert services["api"]["command"][-1].endswith("dsmr-ts serve")
    assert services["reader"]["command"] == ["dsmr-ts", "reader"]
    assert any(d.startswith("/dev/") for d in services["reader"]["devices"])
    # nginx gets the shipped site, whose upstream is the api service on its bind port.
    (site_mount,) = services["nginx"]["volumes"]
    assert site_mount.startswith("./deploy/nginx/dsmr-ts.conf:")
    site = (REPO / "deploy" / "nginx" / "dsmr-ts.conf").read_text()
    api_port = services["api"]["environment"]["DSMR_TS_SERVER_BIND"].rsplit(":", 1)[1]
    assert f"server api:{api_port};" in site
    # Grafana: the provisioning is mounted and its ${VARS} are all given.
    grafana = services["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./grafana/dashboards"] == "/var/lib/grafana/dashboards"
    needed = set(re.findall(r"\$\{(\w+)\}", (REPO / "grafana/provisioning/datasources/influxdb.yaml").read_text()))
    assert needed <= set(grafana["environment"])
    for mount in [*mounts, "./deploy/nginx/dsmr-ts.conf"]:
        assert (REPO / mount).exists(), mount
    # MQTT: the reader publishes to the mosquitto service, whose config is shipped.
    reader_env = services["reader"]["environment"]
    assert reader_env["DSMR_TS_MQTT_ENABLED"] == "true" and reader_env["DSMR_TS_MQTT_HOST"] == "mosquitto"
    assert "mosquitto" in services["reader"]["depends_on"]
    (broker_config, _) = services["mosquitto"]["volumes"]
    assert (REPO / broker_config.split(":")[0]).is_file()


def test_config_key_check_catches_typos():
    assert config_key_for_env("DSMR_TS_READER_PORT") and config_key_for_env("DSMR_TS_TIMEZONE")
    assert not config_key_for_env("DSMR_TS_READER_PROT")


def test_slow_clients_through_nginx_do_not_starve_the_api(behind_nginx):
    """Slowloris: connections that send half a request and stall. nginx holds them, so gunicorn's
    two sync workers stay free for real requests."""
    host, port = urllib.parse.urlsplit(behind_nginx).netloc.split(":")
    stalled = []
    try:
        for _ in range(30):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"POST /api/v1/datalogger/dsmrreading HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n")
            stalled.append(sock)
        session = requests.Session()
        for _ in range(20):
            response = session.get(behind_nginx + V2, headers=KEY, params={"limit": 1}, timeout=10)
            assert response.status_code == 200
    finally:
        for sock in stalled:
            sock.close()
