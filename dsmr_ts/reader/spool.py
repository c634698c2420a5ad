"""A disk spool of telegrams waiting to be delivered (InfluxDB down, or a forward target down).

One append-only file of JSON lines, each fsync'd before append() returns, and an offset file
saying how many bytes have been delivered (written atomically). After a crash or kill -9:
records appended are still there; a half-written last line (the crash hit mid-append) is cut
off; records delivered but not yet marked are delivered again, which is harmless (same
meter+timestamp overwrites). Bounded: over max_bytes new records are refused (and logged once).
Files are private (0600): telegrams identify a household.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dsmr_ts.spool_dir import has_pending, read_offset, waiting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpooledTelegram:
    telegram: str  # latin-1 text, as received
    received: dt.datetime  # UTC; stands in for a missing P1 timestamp when it is parsed later


class Spool:
    def __init__(self, directory: Path, name: str, max_bytes: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.path = self.directory / f"{name}.spool"
        self.offset_path = self.directory / f"{name}.offset"
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.full = False
        self._repair()

    # --- writing -------------------------------------------------------------------------------

    def append(self, telegram: str, received: dt.datetime) -> bool:
        """Store durably; False (and one log line per episode) when the spool is full."""
        line = (json.dumps({"telegram": telegram, "received": received.isoformat()}) + "\n").encode()
        with self.lock:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size + len(line) > self.max_bytes:
                if not self.full:
                    log.error(
                        "spool %s is full (%d bytes): dropping new telegrams until it drains", self.path, self.max_bytes
                    )
                    self.full = True
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True

    # --- reading -------------------------------------------------------------------------------

    def has_pending(self) -> bool:
        """Cheap: is anything waiting? (no file read)"""
        return has_pending(self.directory, self.path.stem)

    def __len__(self) -> int:
        """Telegrams waiting."""
        return waiting(self.directory, self.path.stem)

    def drain(self, deliver: Callable[[SpooledTelegram], None], limit: int = 1000) -> int:
        """Deliver waiting telegrams one by one, in order, until one fails (its exception
        propagates) or `limit` were delivered. Progress is saved after each. Returns how many went."""
        return self.drain_batches(lambda batch: deliver(batch[0]), batch_size=1, limit=limit)

    def drain_batches(
        self, deliver: Callable[[list[SpooledTelegram]], None], batch_size: int = 500, limit: int = 100_000
    ) -> int:
        """Deliver waiting telegrams in order, `batch_size` at a time, until a batch fails (its
        exception propagates; that batch stays waiting) or `limit` were delivered. Progress is
        saved after each batch (one fsync per batch). Returns how many went."""
        delivered = 0
        with self.lock:
            batch: list[SpooledTelegram] = []
            end = 0
            for end_of_record, record in self._pending():
                if delivered + len(batch) >= limit:
                    break
                batch.append(record)
                end = end_of_record
                if len(batch) >= batch_size:
                    deliver(batch)
                    self._save_offset(end)
                    delivered += len(batch)
                    batch = []
            if batch:
                deliver(batch)
                self._save_offset(end)
                delivered += len(batch)
            if delivered and self._offset() >= (self.path.stat().st_size if self.path.exists() else 0):
                self._reset()
        return delivered

    def _pending(self):
        if not self.path.exists():
            return
        offset = self._offset()
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            for line in fh:
                offset += len(line)
                if not line.endswith(b"\n"):
                    break  # cut off by a crash; _repair removes it on the next start
                data = json.loads(line)
                yield offset, SpooledTelegram(data["telegram"], dt.datetime.fromisoformat(data["received"]))

    def _offset(self) -> int:
        return read_offset(self.offset_path)

    def _save_offset(self, offset: int) -> None:
        tmp = self.offset_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(offset).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.offset_path)

    def _reset(self) -> None:
        """Everything delivered: start the file afresh (keeps it from growing forever)."""
        self.path.unlink(missing_ok=True)
        self._save_offset(0)
        if self.full:
            log.info("spool %s drained; accepting telegrams again", self.path)
            self.full = False

    def _repair(self) -> None:
        """Drop a half-written last line left by a crash."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
                os.fsync(fh.fileno())
            log.warning(
                "spool %s: removed a half-written record (%d bytes) left by a crash", self.path, len(data) - keep
            )
