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
from helpers import REPO, TEST_KEY, debian_binary, port_open, start_api, wait_for
from test_api_ingest import a_reading, unique_moment

from dsmr_ts import config as config_module
from dsmr_ts.influx.server import free_port
from dsmr_ts.influx.store import Store
from dsmr_ts.resources.access import MAX_FAILURES
from dsmr_ts.telegram import Reading, build_telegram

KEY = {"X-AUTHKEY": TEST_KEY}
V1 = "/api/v1/datalogger/dsmrreading"
V2 = "/api/v2/datalogger/dsmrreading"


# --- nginx ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """nginx from Debian; installed here if this machine does not have it yet."""
    return debian_binary("nginx", "nginx")


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (cryptography), as a user would with openssl."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dsmr-ts test")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "fullchain.pem", folder / "privkey.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclasses.dataclass
class Nginx:
    url: str  # https://127.0.0.1:PORT
    http_url: str
    certificate: Path
    site: str


@pytest.fixture
def behind_nginx(nginx_binary, session_config, tmp_path) -> Iterator[Nginx]:
    """The shipped site (deploy/nginx/dsmr-ts.conf) with a self-signed certificate made here, its
    upstream and listen addresses pointed at loopback ports and its paths in a temp dir, in front
    of a real gunicorn."""
    api, api_url = start_api(session_config, tmp_path / "api.log", DSMR_TS_SERVER_TRUST_FORWARDED_HEADERS="true")
    http_port, https_port = free_port(), free_port()
    certificate, key = self_signed_certificate(tmp_path)
    shipped = (REPO / "deploy" / "nginx" / "dsmr-ts.conf").read_text()
    site = (
        shipped.replace("server api:7777;", f"server {api_url.removeprefix('http://')};")
        .replace("listen 80;", f"listen 127.0.0.1:{http_port};")
        .replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
        .replace("/etc/dsmr-ts/tls/fullchain.pem", str(certificate))
        .replace("/etc/dsmr-ts/tls/privkey.pem", str(key))
    )
    assert str(https_port) in site and str(certificate) in site and str(key) in site
    (tmp_path / "site.conf").write_text(site)
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 512; }}
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
    nginx = subprocess.Popen(
        [nginx_binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: nginx.poll() is None and port_open("127.0.0.1", https_port), what="nginx to listen")
        yield Nginx(f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", certificate, shipped)
    finally:
        nginx.terminate()
        nginx.wait(30)
        api.terminate()
        api.wait(30)


def test_api_through_nginx_over_tls(behind_nginx):
    url, tls = behind_nginx.url, {"verify": str(behind_nginx.certificate)}
    moment = unique_moment()
    telegram = build_telegram(a_reading(moment, meter="E-NGINX"))
    response = requests.post(url + V1, headers=KEY, data={"telegram": telegram}, **tls)
    assert (response.status_code, response.text) == (201, "")
    for i in range(3):
        requests.post(
            url + V1, headers=KEY, data={"telegram": build_telegram(a_reading(unique_moment(), meter="E-NGINX"))}, **tls
        )
    body = requests.get(url + V2, headers=KEY, params={"meter": "E-NGINX", "limit": 2, "offset": 1}, **tls).json()
    assert body["count"] == 4
    # The links show the address and scheme the client used (nginx, https), not gunicorn's.
    assert body["next"].startswith(f"{url}{V2}?limit=2&meter=E-NGINX&offset=3")
    assert body["previous"] == f"{url}{V2}?limit=2&meter=E-NGINX"
    # Plain HTTP only redirects: no key is ever sent in clear text.
    plain = requests.get(behind_nginx.http_url + V2, headers=KEY, allow_redirects=False)
    assert plain.status_code == 301 and plain.headers["Location"] == f"https://127.0.0.1{V2}"
    assert "Strict-Transport-Security" in response.headers


def test_nginx_speaks_modern_tls_only(behind_nginx):
    import ssl

    assert re.search(r"^\s*ssl_protocols TLSv1\.2 TLSv1\.3;$", behind_nginx.site, re.MULTILINE)
    port = int(behind_nginx.url.rsplit(":", 1)[1])
    for version, works in (
        (ssl.TLSVersion.TLSv1_3, True),
        (ssl.TLSVersion.TLSv1_2, True),
        (ssl.TLSVersion.TLSv1_1, False),
    ):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(behind_nginx.certificate)
        context.minimum_version = context.maximum_version = version
        if not works:
            context.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer it, so the server decides
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    agreed = tls.version()
        except (ssl.SSLError, OSError):
            agreed = None
        assert (agreed is not None) == works, (version, agreed)


def test_nginx_refuses_oversized_bodies(behind_nginx):
    response = requests.post(
        behind_nginx.url + V1, headers=KEY, data={"telegram": "x" * 200_000}, verify=str(behind_nginx.certificate)
    )
    assert response.status_code == 413
    # Chunked too (no Content-Length): nginx counts what arrives.
    body = ("telegram=" + "x" * 200_000).encode()
    chunked = requests.post(
        behind_nginx.url + V1,
        headers={**KEY, "Content-Type": "application/x-www-form-urlencoded"},
        data=(body[i : i + 16_384] for i in range(0, len(body), 16_384)),
        verify=str(behind_nginx.certificate),
    )
    assert chunked.request.headers.get("Transfer-Encoding") == "chunked" and chunked.status_code == 413


def test_nginx_limits_the_request_rate_per_client(behind_nginx):
    """A burst beyond what a meter and a few clients send gets 429 from nginx; the API stays up."""
    session = requests.Session()
    statuses = [
        session.get(behind_nginx.url + "/health", verify=str(behind_nginx.certificate)).status_code for _ in range(150)
    ]
    assert statuses.count(200) >= 60 and 429 in statuses
    wait_for(
        lambda: session.get(behind_nginx.url + "/health", verify=str(behind_nginx.certificate)).status_code == 200,
        what="the rate to allow requests again",
    )


def test_slow_readers_never_hold_the_api(behind_nginx, many_readings):
    """Clients that ask for big pages and then do not read: nginx takes the answers off gunicorn,
    so a fresh client is served within its timeout."""
    import ssl

    port = int(behind_nginx.url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(behind_nginx.certificate))
    slow = []
    for _ in range(12):
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        connection = context.wrap_socket(raw, server_hostname="127.0.0.1")
        connection.sendall(
            (
                f"GET {V2}?meter={many_readings}&limit=30000 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"X-AUTHKEY: {TEST_KEY}\r\n\r\n"
            ).encode()
        )
        connection.recv(64)  # the answer has started; nothing more is read
        slow.append(connection)
    try:
        fresh = requests.get(
            behind_nginx.url + V2,
            headers=KEY,
            params={"meter": many_readings, "limit": 5},
            verify=str(behind_nginx.certificate),
            timeout=10,
        )
        assert fresh.status_code == 200 and len(fresh.json()["results"]) == 5
    finally:
        for connection in slow:
            connection.close()


def test_guessing_keys_through_nginx_is_refused_and_spoofed_addresses_do_not_help(behind_nginx):
    """A client at 127.0.0.2 guesses keys with made-up X-Forwarded-For and Forwarded headers: nginx
    passes on the address it saw, so the API stops it (429); the meter at 127.0.0.1 goes on."""
    import http.client
    import ssl

    port = int(behind_nginx.url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(behind_nginx.certificate))
    attacker = http.client.HTTPSConnection(
        "127.0.0.1", port, source_address=("127.0.0.2", 0), context=context, timeout=10
    )
    statuses = []
    for guess in range(2 * MAX_FAILURES + 2):  # two gunicorn workers count on their own
        attacker.request(
            "GET",
            V2,
            headers={
                "X-AUTHKEY": f"guess-{guess}",
                "X-Forwarded-For": f"10.0.0.{guess}",
                "Forwarded": f"for=10.1.0.{guess}",
            },
        )
        response = attacker.getresponse()
        response.read()
        statuses.append(response.status)
        if response.status == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {403}
    meter = requests.get(behind_nginx.url + V2, headers=KEY, params={"limit": 1}, verify=str(behind_nginx.certificate))
    assert meter.status_code == 200


# --- gunicorn: graceful reload and shutdown --------------------------------------------------------


def workers_of(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in children.read_text().split()} if children.exists() else set()


@pytest.fixture(scope="module")
def many_readings(session_config):
    store = Store(session_config.influxdb)
    start = dt.datetime.fromtimestamp(1_700_000_000, dt.timezone.utc)
    readings = [
        Reading(
            start + dt.timedelta(seconds=i),
            "E-GRACEFUL",
            {"electricity_delivered_1": float(i), "electricity_currently_delivered": 0.1},
        )
        for i in range(30_000)
    ]
    for first in range(0, len(readings), 5000):
        store.writer.store_readings(readings[first : first + 5000])
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
                response = session.get(
                    self.url + V2, headers=KEY, params={"meter": "E-GRACEFUL", "limit": 50}, timeout=30
                )
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
        wait_for(
            lambda: len(workers_of(api.pid)) == 2 and not (workers_of(api.pid) & before), what="both workers replaced"
        )
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
    responses = [
        requests.get(url + V2, headers=KEY, params={"meter": many_readings, "limit": 30_000}, stream=True, timeout=60)
        for _ in range(2)
    ]
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
    ((section, value),) = raw.items()
    if not isinstance(value, dict):
        return section in {f.name for f in dataclasses.fields(config_module.Config)}
    (key,) = value
    section_type = config_module._hints(config_module.Config)[section]
    return key in {f.name for f in dataclasses.fields(section_type)}


def test_docker_compose_structure():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"influxdb", "setup", "api", "reader", "mosquitto", "nginx", "grafana"}
    assert services["influxdb"]["image"] == "influxdb:2"
    init = services["influxdb"]["environment"]
    for name in (
        "DOCKER_INFLUXDB_INIT_MODE",
        "DOCKER_INFLUXDB_INIT_USERNAME",
        "DOCKER_INFLUXDB_INIT_PASSWORD",
        "DOCKER_INFLUXDB_INIT_ORG",
        "DOCKER_INFLUXDB_INIT_BUCKET",
        "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN",
    ):
        assert name in init
    assert init["DOCKER_INFLUXDB_INIT_BUCKET"] == "dsmr"
    for name in ("setup", "api", "reader"):
        service = services[name]
        assert service["build"] == "." and (REPO / "Dockerfile").exists()
        env = service["environment"]
        for key in env:
            assert key.startswith("DSMR_TS_") and config_key_for_env(key), f"{name}: {key} is not a config key"
        assert env["DSMR_TS_INFLUXDB_ORG"] == init["DOCKER_INFLUXDB_INIT_ORG"]
        assert env["DSMR_TS_INFLUXDB_URL"] == "http://influxdb:8086"
    # Least privilege: only the one-shot setup sees the all-access token; the rest wait for it.
    holders = {
        name
        for name, service in services.items()
        if "${INFLUXDB_TOKEN" in yaml.safe_dump(service.get("environment", {}))
    }
    assert holders == {"influxdb", "setup"}
    assert services["setup"]["command"] == ["dsmr-ts", "setup"] and services["setup"]["restart"] == "no"
    for name in ("api", "reader", "grafana"):
        assert services[name]["depends_on"]["setup"] == {"condition": "service_completed_successfully"}
    assert services["api"]["command"] == ["dsmr-ts", "serve"]
    assert services["reader"]["command"] == ["dsmr-ts", "reader"]
    assert any(d.startswith("/dev/") for d in services["reader"]["devices"])
    # Published: nginx (80 and 443) and Grafana on loopback; nothing else.
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    assert published == {"nginx": ["80:80", "443:443"], "grafana": ["127.0.0.1:3000:3000"]}
    # nginx gets the shipped site, whose upstream is the api service on its bind port, and the certificates.
    site_mount, tls_mount = services["nginx"]["volumes"]
    assert site_mount.startswith("./deploy/nginx/dsmr-ts.conf:") and tls_mount.endswith(":/etc/dsmr-ts/tls:ro")
    site = (REPO / "deploy" / "nginx" / "dsmr-ts.conf").read_text()
    api_port = services["api"]["environment"]["DSMR_TS_SERVER_BIND"].rsplit(":", 1)[1]
    assert f"server api:{api_port};" in site and "/etc/dsmr-ts/tls/fullchain.pem" in site
    # Grafana: the provisioning is mounted, its ${VARS} are all given, its token is setup's read-only one.
    grafana = services["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./grafana/dashboards"] == "/var/lib/grafana/dashboards"
    provisioning = (REPO / "grafana/provisioning/datasources/influxdb.yaml").read_text()
    assert set(re.findall(r"\$\{(\w+)\}", provisioning)) <= set(grafana["environment"])
    (token_file,) = re.findall(r"\$__file\{([^}]+)\}", provisioning)
    defaults = config_module.InfluxConfig()
    assert mounts["./docker/config/" + defaults.grafana_token_file.removeprefix("./")] == token_file
    for mount in ["./grafana/provisioning", "./grafana/dashboards", "./deploy/nginx/dsmr-ts.conf"]:
        assert (REPO / mount).exists(), mount
    # MQTT: the reader publishes to the mosquitto service, whose config is shipped.
    reader_env = services["reader"]["environment"]
    assert reader_env["DSMR_TS_MQTT_ENABLED"] == "true" and reader_env["DSMR_TS_MQTT_HOST"] == "mosquitto"
    (broker_config, _) = services["mosquitto"]["volumes"]
    assert (REPO / broker_config.split(":")[0]).is_file()


def test_the_image_runs_as_an_unprivileged_user():
    dockerfile = (REPO / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert user.split(":")[0] not in ("root", "0")
    assert dockerfile.rindex("USER ") > dockerfile.rindex("RUN ")  # nothing runs as root after it
