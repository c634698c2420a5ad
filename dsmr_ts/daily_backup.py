"""The daily backup `dsmr-ts run` makes (config `backup`): a backup, the oldest beyond `keep`
removed, then `command` with the new backup's path. Each outcome is one log line and the state file
(backup_state.py) that monitoring and /metrics report; nothing is retried in a loop: the next
attempt is the next day's (or `dsmr-ts backup` by hand)."""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from dsmr_ts.backup_state import write_state
from dsmr_ts.config import Config, without_secrets
from dsmr_ts.influx.backup import PARTIAL, PREFIX, BackupError, Backups, backups, folder_bytes, human_size
from dsmr_ts.influx.client import InfluxClient, StoreUnavailable

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 3600.0  # an off-machine copy of a large backup over a slow line
HEADROOM = 1.2  # a backup is about as large as the last one; ask for a fifth more free space


class DailyBackup:
    def __init__(self, config: Config, admin_token: Callable[[], str]):
        self.config = config
        self.folder = config.resolve_path(config.backup.dir)
        self.admin_token = admin_token  # read when the backup runs: setup may have made it since

    def run(self) -> bool:
        """One daily backup; True when it and its command succeeded."""
        try:
            self._check_space()
            client = InfluxClient(self.config.influxdb)
            try:
                config_text = without_secrets(self.config.path) if self.config.path else ""
                result = Backups(client, self.admin_token()).backup(self.folder, config_text)
            finally:
                client.close()
        except (BackupError, StoreUnavailable, OSError) as exc:
            return self._failed(f"The daily backup failed: {exc}")
        removed = self._remove_old()
        made = f"{result.path} ({human_size(result.bytes)}, {result.seconds:.1f} s)"
        log.info("daily backup %s; %d old backup(s) removed", made, len(removed))
        if self.config.backup.command:
            problem = self._run_command(result.path)
            if problem:
                return self._failed(f"The daily backup {result.path.name} was made, but {problem}")
        write_state(self.folder, True, made)
        return True

    def _failed(self, message: str) -> bool:
        log.error("%s", message)
        try:
            write_state(self.folder, False, message)
        except OSError as exc:  # a full disk: the log line is all that can be left
            log.error("cannot record the backup's failure in %s: %s", self.folder, exc.strerror)
        return False

    def _check_space(self) -> None:
        """Refuse before starting when the last backup's size (with headroom) is more than is free."""
        made = backups(self.folder)
        if not made:
            return
        last = folder_bytes(made[-1])
        free = shutil.disk_usage(self.folder).free
        if free < last * HEADROOM:
            raise BackupError(
                f"it would not fit: {human_size(free)} free in {self.folder}, the last backup took {human_size(last)}"
            )

    def _remove_old(self) -> list[Path]:
        """All but the newest `keep` backups, and any `.partial` left by a crash."""
        made = backups(self.folder)
        old = made[: max(0, len(made) - self.config.backup.keep)]
        old += [p for p in self.folder.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(PARTIAL)]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        return old

    def _run_command(self, path: Path) -> str:
        """'' when backup.command succeeded, else what went wrong (its last output line)."""
        argv = [*shlex.split(self.config.backup.command), str(path)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"backup.command could not run: {exc}"
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            return f"backup.command exited with status {done.returncode}" + (f": {lines[-1]}" if lines else "")
        log.info("backup.command done for %s", path.name)
        return ""
