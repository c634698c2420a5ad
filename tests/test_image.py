"""The Dockerfile builds an image that serves: built with podman (daemonless, from Debian) FROM a
Debian made here with debootstrap (no image registry is reachable from these machines, so
python:3.11-slim cannot be pulled; the Dockerfile takes its base as the build argument BASE), then
run against the test influxd until /health answers.

These machines are VMs without CAP_SYS_RESOURCE and with a hybrid cgroup tree: crun refuses both,
so the container runs under runc with cgroupfs and resource limits no higher than ours."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from helpers import REPO, TEST_KEY, debian_binary, wait_for

from dsmr_ts.influx.server import free_port

pytestmark = pytest.mark.slow

BASE_IMAGE = "localhost/dsmr-ts-base:bookworm"
IMAGE = "localhost/dsmr-ts:test"
IMAGE_UID = 10001  # the Dockerfile's unprivileged user


def _podman(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    command = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _limits() -> list[str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ["--ulimit", f"nofile={soft}:{hard}", "--ulimit", "nproc=4096:4096"]


def _debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    found = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.M) if sources.is_file() else None
    return found.group(1) if found else "http://deb.debian.org/debian"


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A minimal Debian with Python 3.11 and its venv module, made with debootstrap (once per
    machine: podman keeps the image). It carries this machine's CA bundle and pip settings, by which
    it reaches PyPI here."""
    for package, binary in (("podman", "podman"), ("runc", "runc"), ("debootstrap", "debootstrap")):
        debian_binary(package, binary)
    if _podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    rootfs = tmp_path_factory.mktemp("debian") / "rootfs"
    codename = re.search(r"^VERSION_CODENAME=(\w+)", Path("/etc/os-release").read_text(), re.M)
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,tzdata,ca-certificates",
         codename.group(1) if codename else "bookworm", str(rootfs), _debian_mirror()],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    if Path("/etc/pip.conf").is_file():
        shutil.copy("/etc/pip.conf", rootfs / "etc/pip.conf")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        ["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True, text=True, timeout=600
    )
    tar.wait()
    assert imported.returncode == 0, imported.stderr[-2000:]
    shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_IMAGE


def test_the_dockerfile_builds_and_the_image_serves_the_api(base_image, session_config, tmp_path):
    build = _podman("build", "--network", "host", *_limits(), "--build-arg", f"BASE={base_image}", "-t", IMAGE,
                    str(REPO))  # fmt: skip
    assert "Successfully tagged" in build.stdout + build.stderr
    # The image's config folder, as the README says: owned by the image's user, private.
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    settings = session_config.influxdb
    (config_dir / "dsmr-ts.yaml").write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\n"
        f"influxdb:\n  url: {settings.url}\n  token: {settings.token}\n"
        "reader:\n  spool_dir: /spool\n"
    )
    for path in (config_dir, config_dir / "dsmr-ts.yaml"):
        os.chown(path, IMAGE_UID, 0)
    port = free_port()
    container = _podman("run", "-d", "--network", "host", *_limits(), "-v", f"{config_dir}:/config",
                        "-e", f"DSMR_TS_SERVER_BIND=127.0.0.1:{port}", IMAGE).stdout.strip()  # fmt: skip
    try:

        def healthy() -> bool:
            state = _podman("inspect", "--format", "{{.State.Running}}", container).stdout.strip()
            assert state == "true", _podman("logs", container, check=False).stderr[-3000:]
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout=120, what="the image's API to answer /health")
        version = requests.get(f"http://127.0.0.1:{port}/api/v2/application/version", headers={"X-AUTHKEY": TEST_KEY})
        assert version.status_code == 200 and version.json()["version"]
        # It runs as the unprivileged user, from the image's own venv with the pinned gunicorn.
        assert _podman("exec", container, "id", "-u").stdout.strip() == str(IMAGE_UID)
        pinned = re.search(r"^gunicorn==(\S+)", (REPO / "constraints.txt").read_text(), re.M)
        installed = _podman("exec", container, "python3", "-c", "import gunicorn; print(gunicorn.__version__)")
        assert pinned and installed.stdout.strip() == pinned.group(1)
    finally:
        logs = _podman("logs", container, check=False)
        (tmp_path / "container.log").write_text(logs.stdout + logs.stderr)
        _podman("rm", "-f", container, check=False)
