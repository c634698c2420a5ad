"""The disk under a managed influxd: when it is full, and getting influxd going again after space
is freed.

influxd does not recover by itself from a full disk: a shard it failed to write or open for lack
of space stays failed ("opening shard previously failed") and writes to it are refused until
influxd restarts, however much room there is again. While the disk is full the API answers 503
and the reader spools (nothing acknowledged is lost); `dsmr-ts run` watches the disk and restarts
influxd once there is room again, so ingest resumes without anyone stepping in.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

FULL_BELOW_BYTES = 16 * 1024 * 1024  # a disk with less free than this, or than FULL_BELOW_PERCENT, is full
FULL_BELOW_PERCENT = 2.0
ROOM_AGAIN_FACTOR = 2  # room again: twice the full level free (no restarts while it hovers at the edge)


def _full_level(total: int) -> float:
    return min(FULL_BELOW_BYTES, total * FULL_BELOW_PERCENT / 100)


def disk_full(folder: Path) -> bool:
    """Whether the disk holding `folder` is (as good as) full; False when it cannot be looked at."""
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return False
    return usage.free < _full_level(usage.total)


class DiskWatch:
    """`run`'s watch over the managed influxd's disk: a full disk is one log line; room again
    after that restarts influxd (restart(reason)) so it reopens the shards it gave up on."""

    def __init__(
        self,
        folder: Path,
        restart: Callable[[str], None],
        every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.folder = folder
        self.restart = restart
        self.every = every
        self.clock = clock
        self.was_full = False
        self.next_check = 0.0

    def check(self) -> None:
        now = self.clock()
        if now < self.next_check:
            return
        self.next_check = now + self.every
        try:
            usage = shutil.disk_usage(self.folder)
        except OSError:
            return  # not made yet
        level = _full_level(usage.total)
        if usage.free < level:
            if not self.was_full:
                log.warning(
                    "the disk of InfluxDB's data (%s) is full (%.1f MB free): readings are refused (503) and the"
                    " reader spools them until there is room",
                    self.folder,
                    usage.free / 1e6,
                )
            self.was_full = True
        elif self.was_full and usage.free >= level * ROOM_AGAIN_FACTOR:
            self.was_full = False
            self.restart(f"the disk of its data has room again ({usage.free / 1e6:.0f} MB free)")
