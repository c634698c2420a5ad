"""A progress bar for long commands: one updating line at a terminal, a line per 10 % in a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, unit: str, stream: TextIO | None = sys.stderr, width: int = 30):
        self.total = max(total, 1)
        self.unit = unit
        self.stream = stream
        self.width = width
        self.done = 0
        self.started = time.monotonic()
        self.tty = bool(stream and stream.isatty())
        self._last_tenth = -1

    def advance(self, amount: int = 1) -> None:
        self.done = min(self.total, self.done + amount)
        if not self.stream:
            return
        fraction = self.done / self.total
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate else 0.0
        filled = int(fraction * self.width)
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {self.unit}"
            f"  {rate:.1f} {self.unit}/s  ETA {_clock(eta)}"
        )
        if self.tty:
            self.stream.write("\r\033[K" + line)
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif int(fraction * 10) != self._last_tenth or self.done == self.total:
            self._last_tenth = int(fraction * 10)
            print(line, file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"
