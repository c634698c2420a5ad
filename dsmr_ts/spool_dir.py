"""The reader's spool_dir as other processes see it: what waits there (telegrams in the spools,
MQTT messages in the outbox) and the socket that hands raw telegrams to the MQTT publisher.

The API's monitoring and metrics read the state here, and its workers relay raw telegrams through
RawRelay, without importing the reader or the MQTT publisher (other processes' code). Everything
here only reads, or sends without waiting: nothing writes the spools or the outbox but their owners
(dsmr_ts.reader.spool, dsmr_ts.mqtt.outbox).

Raw telegrams (MQTT's `raw` source): a datagram on a Unix socket in spool_dir, sent without
waiting, so a v1 POST never waits for MQTT. While the reader is not running the datagram is dropped
(and counted); readings themselves are always published from InfluxDB, so only raw telegram text
can be missed then.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from dsmr_ts import metrics

OUTBOX_FILE = "mqtt-outbox.sqlite3"
RAW_SOCKET = "mqtt-raw.sock"
# Written by whoever saw influxd refuse a write for lack of space (API workers, the reader); `run`
# restarts influxd once the disk has room again, and /health and monitoring say the disk is full.
STORE_FULL_FILE = "influxdb-out-of-space"


# --- spools ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpoolState:
    """What waits in one spool, for monitoring and metrics (read-only, safe from any process)."""

    name: str
    waiting: int
    oldest: dt.datetime | None  # when the oldest waiting telegram was received


def spool_states(directory: Path) -> list[SpoolState]:
    """The state of every spool in a reader's spool_dir: the one interface other processes (the
    API's monitoring and metrics) use; nothing outside dsmr_ts.reader opens the spool files."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    states = []
    for path in sorted(directory.glob("*.spool")):
        count, oldest = _waiting(directory, path.stem)
        states.append(SpoolState(path.stem, count, oldest))
    return states


def waiting(directory: Path, name: str) -> int:
    """How many complete records wait in spool `name` (read-only, safe from any process)."""
    return _waiting(directory, name)[0]


def _waiting(directory: Path, name: str) -> tuple[int, dt.datetime | None]:
    """(complete records waiting, when the first of them was received)."""
    if not has_pending(directory, name):
        return 0, None
    offset = read_offset(Path(directory) / f"{name}.offset")
    count, oldest = 0, None
    try:
        with open(Path(directory) / f"{name}.spool", "rb") as fh:
            fh.seek(offset)
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                if oldest is None:
                    oldest = dt.datetime.fromisoformat(json.loads(line)["received"])
                count += 1
    except (OSError, ValueError, KeyError):
        pass
    return count, oldest


def has_pending(directory: Path, name: str) -> bool:
    """Is anything waiting in spool `name`? Reads two sizes, changes nothing (safe from any process)."""
    path = Path(directory) / f"{name}.spool"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    return size > read_offset(Path(directory) / f"{name}.offset")


def read_offset(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


# --- the MQTT outbox --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxState:
    """What waits for the broker (read-only, safe from any process)."""

    waiting: int
    oldest: dt.datetime | None  # when the oldest waiting message was added


def outbox_state(directory: Path) -> OutboxState | None:
    """The state of the outbox in a reader's spool_dir; None when there is none."""
    path = Path(directory) / OUTBOX_FILE
    if not path.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2) as db:
            count, oldest = db.execute("SELECT count(*), min(added) FROM message").fetchone()
    except sqlite3.Error:
        return None
    return OutboxState(count, dt.datetime.fromtimestamp(oldest, dt.timezone.utc) if oldest else None)


# --- raw telegrams to the MQTT publisher ----------------------------------------------------------


class RawRelay:
    def __init__(self, spool_dir: Path):
        self.path = str(Path(spool_dir) / RAW_SOCKET)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def send(self, telegram: str) -> None:
        try:
            self._socket.sendto(telegram.encode("latin-1", "replace"), self.path)
        except OSError:  # no reader listening, or its queue is full
            metrics.MQTT_RAW_DROPPED.inc()


class StoreFullMarker:
    """The out-of-space marker in a spool_dir: set on a write influxd refused for lack of space,
    cleared by a write it takes once the marker is HELD_SECONDS old (or by `run` restarting influxd).

    Held for a while because writes to other shards may well succeed meanwhile (the live meter's
    shard, while a backfill's shard failed): cleared at once, the marker would flicker between the
    disk watch's looks and a stuck influxd would go unnoticed."""

    HELD_SECONDS = 10.0

    def __init__(self, directory: Path):
        self.path = directory / STORE_FULL_FILE

    def set(self) -> None:
        if not self.path.exists():
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(dt.datetime.now(dt.timezone.utc).isoformat() + "\n")

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def clear_when_held(self) -> None:
        """A write was taken: clear the marker if it has been set for HELD_SECONDS."""
        if not self.path.exists():  # one stat per write while all is well
            return
        since = self.since()
        if since is None or (dt.datetime.now(dt.timezone.utc) - since).total_seconds() >= self.HELD_SECONDS:
            self.clear()

    def since(self) -> dt.datetime | None:
        try:
            return dt.datetime.fromisoformat(self.path.read_text().strip())
        except (OSError, ValueError):
            return None
