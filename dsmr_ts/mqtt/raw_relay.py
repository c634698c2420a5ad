"""Raw telegrams from the API's workers to the publisher in `dsmr-ts reader` (the `raw` source).

A datagram on a Unix socket in the reader's spool_dir, sent without waiting: a v1 POST never
waits for MQTT. While the reader is not running the datagram is dropped (and counted); readings
themselves are always published from InfluxDB, so only raw telegram text can be missed then.
"""

from __future__ import annotations

import socket
from pathlib import Path

from dsmr_ts import metrics

RAW_SOCKET = "mqtt-raw.sock"


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
