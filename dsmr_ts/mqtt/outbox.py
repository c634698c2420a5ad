"""Messages waiting for the MQTT broker: a SQLite file beside the reader's spools.

The publisher adds each tick's messages together with its cursors (how far it got in the
readings, gas values and quarters) in one transaction, so a crash can neither lose messages
whose cursor moved nor send them twice from the producer's side. The sender deletes messages once
the broker acknowledged them (QoS 1/2) or they were written to the socket (QoS 0). Sequence
numbers only grow (AUTOINCREMENT), so the sender can tell the messages it has handed to the
client from the ones still waiting.

Bounded: above max_messages the older messages of a topic go first (every topic is retained:
only its newest value is what a subscriber ends up with), then the oldest of all; one log line
per time it fills up. Nothing outside dsmr_ts.mqtt writes the file; other processes read its state
through dsmr_ts.spool_dir.outbox_state().
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dsmr_ts.spool_dir import OUTBOX_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str


class Outbox:
    def __init__(self, directory: Path, max_messages: int):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / OUTBOX_FILE
        self.max_messages = max_messages
        self._lock = threading.Lock()
        fresh = not self.path.exists()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        if fresh:
            os.chmod(self.path, 0o600)  # payloads describe a household
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS message (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " topic TEXT NOT NULL, payload BLOB NOT NULL, added REAL NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._full = False
        self.handed_out = 0  # the sender's highest seq given to the client: never compacted away

    def add(self, messages: list[Message], state: dict[str, str] | None = None) -> None:
        """Messages (in order) and the producer's cursors, in one transaction."""
        if not messages and not state:
            return
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO message (topic, payload, added) VALUES (?, ?, ?)",
                    [(m.topic, m.payload.encode(), now) for m in messages],
                )
                if state:
                    self._db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", state.items())
                self._compact()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _compact(self) -> None:
        (count,) = self._db.execute("SELECT count(*) FROM message").fetchone()
        if count <= self.max_messages:
            if self._full and count < self.max_messages // 2:
                self._full = False
            return
        floor = self.handed_out
        dropped = self._db.execute(
            "DELETE FROM message WHERE seq > ? AND seq NOT IN"
            " (SELECT max(seq) FROM message WHERE seq > ? GROUP BY topic)",
            (floor, floor),
        ).rowcount
        excess = count - dropped - self.max_messages
        if excess > 0:
            dropped += self._db.execute(
                "DELETE FROM message WHERE seq IN (SELECT seq FROM message WHERE seq > ? ORDER BY seq LIMIT ?)",
                (floor, excess),
            ).rowcount
        if not self._full:
            self._full = True
            log.warning(
                "MQTT outbox full (%d messages waiting for the broker): dropped %d older messages of"
                " topics that have newer ones",
                count,
                dropped,
            )

    def state(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM state").fetchall())

    def after(self, seq: int, limit: int) -> list[tuple[int, Message]]:
        """The next waiting messages after `seq`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload FROM message WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [(seq, Message(topic, payload.decode())) for seq, topic, payload in rows]

    def delivered(self, upto: int) -> None:
        """Every message up to seq `upto` has been delivered."""
        with self._lock:
            self._db.execute("DELETE FROM message WHERE seq <= ?", (upto,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM message").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
