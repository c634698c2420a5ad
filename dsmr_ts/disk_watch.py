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

from dsmr_ts.spool_dir import StoreFullMarker

log = logging.getLogger(__name__)

FULL_BELOW_BYTES = 16 * 1024 * 1024  # a disk with less free than this, or than FULL_BELOW_PERCENT, is full
FULL_BELOW_PERCENT = 2.0
# Room again: this much more free than when writes were refused (a share of the disk, at least
# ROOM_AGAIN_BYTES), so a disk hovering at the edge does not restart influxd over and over.
ROOM_AGAIN_BYTES = 8 * 1024 * 1024
ROOM_AGAIN_PERCENT = 1.0
# A refusal seen while the disk has room restarts influxd at most this often (seconds), so an
# influxd that fails for another reason worded like a full disk is not restarted in a loop.
RESTART_AT_MOST_EVERY = 600.0


def _full_level(total: int) -> float:
    return min(FULL_BELOW_BYTES, total * FULL_BELOW_PERCENT / 100)


def disk_full(folder: Path, marker: StoreFullMarker | None = None) -> bool:
    """Whether the disk holding `folder` is (as good as) full, or influxd refused a write for lack
    of space since it last took one (`marker`); False when the disk cannot be looked at."""
    if marker is not None and marker.since() is not None:
        return True
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return False
    return usage.free < _full_level(usage.total)


class DiskWatch:
    """`run`'s watch over the managed influxd's disk: influxd refusing writes for lack of space
    (the marker the API and reader set) or a full disk is one log line; room again after that
    restarts influxd (restart(reason)) so that it reopens the shards it gave up on."""

    def __init__(
        self,
        folder: Path,
        marker: StoreFullMarker,
        restart: Callable[[str], None],
        every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.folder = folder
        self.marker = marker
        self.restart = restart
        self.every = every
        self.clock = clock
        self.free_when_full: int | None = None  # the least free space seen while writes were refused
        self.next_check = 0.0
        self.last_restart: float | None = None

    def check(self) -> None:
        now = self.clock()
        if now < self.next_check:
            return
        self.next_check = now + self.every
        try:
            usage = shutil.disk_usage(self.folder)
        except OSError:
            return  # not made yet
        full_level = _full_level(usage.total)
        room = max(ROOM_AGAIN_BYTES, usage.total * ROOM_AGAIN_PERCENT / 100)
        refused = self.marker.since() is not None
        if self.free_when_full is None and refused and usage.free >= full_level + room:
            # influxd refused for lack of space, yet the disk has room: it was freed before this
            # watch looked (or influxd gave up on a shard early). Only a restart reopens that shard.
            if self.last_restart is None or now - self.last_restart >= RESTART_AT_MOST_EVERY:
                self._restart(
                    now, f"it refused writes for lack of space, and its disk has room ({usage.free / 1e6:.0f} MB free)"
                )
            return
        if refused or usage.free < full_level:
            if self.free_when_full is None:
                log.warning(
                    "the disk of InfluxDB's data (%s) is full (%.1f MB free): readings are refused (503) and the"
                    " reader spools them until there is room",
                    self.folder,
                    usage.free / 1e6,
                )
                self.free_when_full = usage.free
            self.free_when_full = min(self.free_when_full, usage.free)
        if self.free_when_full is not None and usage.free >= self.free_when_full + room:
            self.free_when_full = None
            self._restart(now, f"the disk of its data has room again ({usage.free / 1e6:.0f} MB free)")

    def _restart(self, now: float, reason: str) -> None:
        self.last_restart = now
        self.marker.clear()
        self.restart(reason)
