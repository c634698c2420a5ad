"""Installs as a user or a packager makes them: a plain `pip install .` (no extras, not editable)
into a fresh venv must run the service; the pinned versions (constraints.txt) must cover setup.py;
`dsmr-ts run` must say at once why a child that dies while starting died."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from helpers import REPO, TEST_KEY, wait_healthy
from packaging.requirements import Requirement
from packaging.version import Version

from dsmr_ts.influx.server import free_port

CONSTRAINTS = REPO / "constraints.txt"


def _pins() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[_normal(match.group(1))] = Version(match.group(2))
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _setup_requirements() -> list[Requirement]:
    """install_requires and every extra of setup.py, as written there."""
    call = next(
        node
        for node in ast.walk(ast.parse((REPO / "setup.py").read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
    )
    arguments = {
        keyword.arg: ast.literal_eval(keyword.value)
        for keyword in call.keywords
        if keyword.arg in ("install_requires", "extras_require")
    }
    specs = [
        *arguments["install_requires"],
        *(spec for extra in arguments["extras_require"].values() for spec in extra),
    ]
    return [Requirement(spec) for spec in specs]


def test_constraints_pin_every_requirement_within_its_range():
    """constraints.txt (written by `make lock`) pins every requirement of setup.py, its extras
    included, at a version setup.py allows: an update that breaks a range fails here."""
    pins = _pins()
    requirements = _setup_requirements()
    assert len(requirements) >= 14, requirements  # the parse found setup.py's lists
    for requirement in requirements:
        name = _normal(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[name]}, outside setup.py's {requirement.specifier}"
        )
    # What gunicorn's gevent worker imports (gunicorn 27 installs it only with its [gevent] extra).
    assert "packaging" in pins and "gevent" in pins


def test_make_and_the_image_install_the_pinned_versions():
    makefile = (REPO / "Makefile").read_text()
    assert makefile.count("-c $(CONSTRAINTS)") == 2  # the service alone (make run), then the test extras
    assert re.search(r"^\s*\$\(BIN\)/pip install --quiet -c \$\(CONSTRAINTS\) -e \.$", makefile, re.M)
    assert "-c constraints.txt ." in (REPO / "Dockerfile").read_text()
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install .` of this checkout into a fresh venv, without extras and not editable, with
    the pinned versions: its bin directory."""
    venv = tmp_path_factory.mktemp("plain-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "-c", str(CONSTRAINTS), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return venv / "bin"


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_") or k == "DSMR_TS_INFLUXD"}
    env.update(extra)
    return env


@pytest.mark.slow
def test_a_plain_install_has_no_test_extras_and_serves_the_api(plain_install, session_config, tmp_path):
    python = str(plain_install / "python")
    # Nothing of the test extras came along (they used to bring gunicorn's `packaging` in unseen).
    for module in ("pytest", "requests", "schemathesis"):
        assert subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode != 0, module
    # The installed package, not this checkout, is what runs.
    where = subprocess.run(
        [python, "-c", "import dsmr_ts; print(dsmr_ts.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert str(plain_install.parent) in where
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(plain_install / "dsmr-ts"), "serve"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_environment(DSMR_TS_CONFIG=str(session_config.path), DSMR_TS_SERVER_BIND=f"127.0.0.1:{port}"),
        )
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", log, timeout=60, what="the plainly installed API's /health")
        answer = requests.get(f"http://127.0.0.1:{port}/api/v2/application/version", headers={"X-AUTHKEY": TEST_KEY})
        assert answer.status_code == 200 and "version" in answer.json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_plain_install_runs_everything_and_writes_the_documented_config(plain_install, tmp_path, influxd_binary):
    """`dsmr-ts run` on a first start: the config it writes is the example, with a generated key."""
    api_port, influx_port = free_port(), free_port()
    config_path = tmp_path / "dsmr-ts.yaml"
    env = _environment(
        DSMR_TS_INFLUXD=str(influxd_binary),
        DSMR_TS_SERVER_BIND=f"127.0.0.1:{api_port}",
        DSMR_TS_INFLUXDB_URL=f"http://127.0.0.1:{influx_port}",
        DSMR_TS_SERVER_WORKERS="1",
    )
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(plain_install / "dsmr-ts"), "run"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_healthy(
            proc, f"http://127.0.0.1:{api_port}", log, timeout=120, what="`dsmr-ts run` of the plain install to answer"
        )
        written = config_path.read_text()
        example = (REPO / "config" / "dsmr-ts.example.yaml").read_text()
        key = yaml.safe_load(written)["api"]["key"]
        assert re.fullmatch(r"[A-Z0-9]{64}", key)
        # The documented file, every comment kept; only the generated key (and setup's token) added.
        assert len(written) > 0.9 * len(example)
        comments = [line for line in example.splitlines() if line.lstrip().startswith("#")]
        assert comments and all(line in written.splitlines() for line in comments)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise


def test_run_stops_at_once_with_the_last_error_line_of_an_api_that_cannot_start(tmp_path, influxd_binary):
    """gunicorn that fails while starting (here: a worker class that does not exist, as gunicorn 27
    without `packaging` failed on gevent): `run` ends at once, naming the child and its error."""
    config_path = tmp_path / "dsmr-ts.yaml"
    config_path.write_text(
        f"api:\n  key: {TEST_KEY}\n"
        f"server:\n  bind: 127.0.0.1:{free_port()}\n  workers: 1\n"
        f"influxdb:\n  url: http://127.0.0.1:{free_port()}\n  data_dir: ./influx-data\n"
        "reader:\n  enabled: false\n"
    )
    env = _environment(
        DSMR_TS_CONFIG=str(config_path),
        DSMR_TS_INFLUXD=str(influxd_binary),
        GUNICORN_CMD_ARGS="--worker-class no_such_module.Worker",
    )
    # Within the 120 s `run` used to wait for /health before it gave up in silence.
    result = subprocess.run(
        [sys.executable, "-m", "dsmr_ts.cli", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dsmr-ts: the API (gunicorn) exited with status "), last
    assert "while starting: " in last and "no_such_module" in last, last
