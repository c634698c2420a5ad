"""Small helpers shared by the tests (import as `from helpers import ...`)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TELEGRAMS = SHARED / "telegrams"
TEST_KEY = "TESTKEY0123456789TESTKEY0123456789TESTKEY0123456789TESTKEY012345"


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Poll until condition() is truthy; fail the test naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def dsmr_ts_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dsmr_ts.cli", *args]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
