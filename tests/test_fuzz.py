"""Schema fuzzing: schemathesis generates a few thousand requests from the served OpenAPI document,
valid ones and invalid ones (every check it has), over every route, sent with the key to a real
gunicorn + influxd of their own. No response may be a 5xx or differ from the document, every
request the document allows must be taken and every one it forbids refused: the document says
exactly what the validators take. What JSON Schema cannot say (a telegram's CRC, a day that
exists already, a timestamp more than a day ahead, a key that is not the key, a range of prices
without an area or longer than 400 days, no prices for the cheapest window) is a documented 4xx of
six operations."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TEST_KEY, start_api

from dsmr_ts.config import load_config
from dsmr_ts.influx.bootstrap import bootstrap
from dsmr_ts.influx.server import ManagedInfluxd, free_port

SEED = "20261206"
# The operations whose valid-looking input may still be refused for a reason their document gives.
CONFIG = """
request-timeout = 60.0  # a loaded CI machine is slow, not wrong

[[operations]]
include-name = "POST /api/v1/datalogger/dsmrreading"
checks.positive_data_acceptance.expected-statuses = [201, 400]

[[operations]]
include-name = "POST /api/v2/datalogger/dsmrreading"
checks.positive_data_acceptance.expected-statuses = [201, 400]

[[operations]]
include-name = "POST /api/v2/statistics/day"
checks.positive_data_acceptance.expected-statuses = [201, 400]

[[operations]]
include-name = "POST /web/login"
checks.positive_data_acceptance.expected-statuses = [204, 403, 429]

[[operations]]
include-name = "GET /api/v2/prices"
checks.positive_data_acceptance.expected-statuses = [200, 400]

[[operations]]
include-name = "GET /api/v2/prices/cheapest"
checks.positive_data_acceptance.expected-statuses = [200, 400, 404]
"""


@pytest.fixture
def stack(influxd_binary, tmp_path_factory):
    """(base URL, the folder schemathesis runs in, the API's access log) of a stack of its own (per
    test: wrong keys one run sends lock its client out for a minute)."""
    folder = tmp_path_factory.mktemp("fuzz")
    influxd = ManagedInfluxd(influxd_binary, folder / "influxd", port=free_port()).start()
    config_path = folder / "dsmr-ts.yaml"
    config_path.write_text(
        # No lock-out: schemathesis sends a wrong key to every operation, and a locked-out client's
        # 429 is not the 401/403 its ignored_auth check looks for (tests/test_api_ingest.py tests it).
        f"api:\n  enabled: true\n  key: {TEST_KEY}\n  wrong_keys_per_minute: 0\n"
        f"influxdb:\n  managed: false\n  url: {influxd.url}\n"
    )
    bootstrap(load_config(config_path))
    (folder / "schemathesis.toml").write_text(CONFIG)
    # The access log (off by default) shows every status the fuzzer got.
    api, url = start_api(load_config(config_path), folder / "api.log", DSMR_TS_SERVER_ACCESS_LOG="true")
    yield url, folder, folder / "api.log"
    api.terminate()
    api.wait(30)
    influxd.stop()


def schemathesis(url: str, folder: Path, *options: str) -> str:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{url}/api/v2/schema?format=json",
            "-H",
            f"X-AUTHKEY: {TEST_KEY}",
            "--seed",
            SEED,
            "--no-color",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=folder,  # its config here, and its cache stays out of the repo
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-6000:]
    return report


def test_schemathesis_with_every_check_and_invalid_data_finds_nothing(stack):
    url, folder, api_log = stack
    report = schemathesis(url, folder, "--checks", "all", "--exclude-checks", "ignored_auth", "--mode", "all",
                          "--max-examples", "100")  # fmt: skip
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated, report[-2000:]
    assert int(generated.group(1)) >= 3000 and generated.group(1) == generated.group(2)
    assert re.search(r"Selected: (\d+)/\1", report)  # every operation of the document was tested
    log = api_log.read_text()
    assert "Traceback" not in log
    statuses = re.findall(r'HTTP/1\.1" (\d{3}) ', log)  # access log: "request" status size time
    assert len(statuses) >= 3000 and not [s for s in statuses if s.startswith("5")]
    assert {"400", "201", "200"} <= set(statuses)  # invalid data was refused, valid data taken


def test_schemathesis_finds_no_route_that_ignores_a_missing_or_wrong_key(stack):
    url, folder, _ = stack
    report = schemathesis(url, folder, "--checks", "ignored_auth", "--max-examples", "20")
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated and generated.group(1) == generated.group(2), report[-2000:]
