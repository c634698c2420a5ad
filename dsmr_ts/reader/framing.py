"""Cut a P1 byte stream into telegrams.

Bytes before the first '/' (a reader that started mid-telegram, line noise) are dropped; a '/'
before the previous telegram's '!' starts over (the partial one is dropped); a telegram ends with
the line after '!' (the CRC, or nothing on DSMR 2.2). Reads may split telegrams anywhere or hold
several. The buffer is bounded, so garbage without a '/' cannot grow memory.
"""

from __future__ import annotations

MAX_TELEGRAM_BYTES = 16 * 1024  # real telegrams are 0.5-3 KB


class TelegramFramer:
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.dropped_bytes = 0  # noise and partial telegrams, for the counters

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes from the meter; returns the telegrams they completed, in order."""
        self.buffer += data
        telegrams = []
        while True:
            start = self.buffer.find(b"/")
            if start < 0:
                self._drop(len(self.buffer))
                break
            if start:
                self._drop(start)
            end = self.buffer.find(b"!")
            restart = self.buffer.find(b"/", 1)
            if 0 <= restart and (end < 0 or restart < end):
                self._drop(restart)  # a new telegram began before this one ended
                continue
            if end < 0:
                break
            line_end = self.buffer.find(b"\n", end)
            if line_end < 0:
                break  # the CRC line is still on its way
            telegrams.append(bytes(self.buffer[: line_end + 1]))
            del self.buffer[: line_end + 1]
        if len(self.buffer) > MAX_TELEGRAM_BYTES:
            self._drop(len(self.buffer))
        return telegrams

    def _drop(self, count: int) -> None:
        self.dropped_bytes += count
        del self.buffer[:count]
