"""Schema fuzzing: schemathesis generates a few thousand requests from the served OpenAPI
document, over every route, sent with the key to a real gunicorn + influxd of their own.
No response may be a 5xx, and every one must match the document."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import TEST_KEY, start_api

from dsmr_ts.config import load_config
from dsmr_ts.influx.bootstrap import bootstrap
from dsmr_ts.influx.server import ManagedInfluxd, free_port

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
    "response_headers_conformance"
)


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(influxd_binary, tmp_path):
    influxd = ManagedInfluxd(influxd_binary, tmp_path / "influxd", port=free_port()).start()
    config_path = tmp_path / "dsmr-ts.yaml"
    config_path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\ninfluxdb:\n  managed: false\n  url: {influxd.url}\n"
    )
    bootstrap(load_config(config_path))
    # The access log (off by default) shows every status the fuzzer got.
    api, url = start_api(load_config(config_path), tmp_path / "api.log", DSMR_TS_SERVER_ACCESS_LOG="true")
    try:
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{url}/api/v2/schema?format=json",
                "-H",
                f"X-AUTHKEY: {TEST_KEY}",
                "--max-examples",
                "150",
                "--checks",
                CHECKS,
                "--seed",
                "20261125",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,  # its cache stays out of the repo
        )
    finally:
        api.terminate()
        api.wait(30)
        influxd.stop()
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-4000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated, report[-2000:]
    assert int(generated.group(1)) >= 2000 and generated.group(1) == generated.group(2)
    assert re.search(r"Selected: (\d+)/\1", report)  # every operation of the document was tested
    api_log = (tmp_path / "api.log").read_text()
    assert "Traceback" not in api_log
    statuses = re.findall(r'HTTP/1\.1" (\d{3}) ', api_log)  # access log: "request" status size time
    assert len(statuses) >= 2000 and not [s for s in statuses if s.startswith("5")]
