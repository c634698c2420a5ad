"""The outcome of the last daily backup, in a small file beside the backups: `dsmr-ts run` writes
it, the API's monitoring and /metrics read it (like the spool's state, it is not in InfluxDB: a
backup that failed because InfluxDB did must still be reported)."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "last-backup.json"


@dataclass(frozen=True)
class BackupState:
    time: dt.datetime  # when the last attempt ended
    ok: bool
    message: str  # the backup's path and size, or why it failed
    last_success: dt.datetime | None


def read_state(folder: Path) -> BackupState | None:
    """None before the first daily backup (or when the file is unreadable)."""
    try:
        raw = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        success = raw.get("last_success")
        return BackupState(
            time=dt.datetime.fromisoformat(raw["time"]),
            ok=bool(raw["ok"]),
            message=str(raw.get("message", "")),
            last_success=dt.datetime.fromisoformat(success) if success else None,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_state(folder: Path, ok: bool, message: str) -> None:
    """Replace the state atomically (a reader never sees half a file); a failure keeps the time of
    the last success."""
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    previous = read_state(folder)
    success = now if ok else (previous.last_success if previous else None)
    record = {
        "time": now.isoformat(),
        "ok": ok,
        "message": message,
        "last_success": success.isoformat() if success else None,
    }
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{STATE_FILE}.tmp"
    temporary.write_text(json.dumps(record), encoding="utf-8")
    os.replace(temporary, folder / STATE_FILE)
