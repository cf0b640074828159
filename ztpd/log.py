"""Logging: one line per event, ``key=value``, to stderr (journald adds its own timestamp)."""

from __future__ import annotations

import logging
import sys
import time


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (
            f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f"logger={record.name} {record.getMessage()}"
        )
        if record.exc_info:
            # Keep the one-line rule: the traceback is folded into a quoted field.
            exc = self.formatException(record.exc_info).replace("\n", " | ")
            line += f' exc="{exc}"'
        return line


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log duplicates ztpd's own boot/request events.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # tftpy logs several lines per transfer in its own format; ztpd records transfers itself.
    logging.getLogger("tftpy").setLevel(logging.WARNING)
