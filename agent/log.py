"""Logging in Consul's shape: ``2026-11-25T01:02:03.456Z [INFO]  agent.raft: message``."""

from __future__ import annotations

import logging
import sys
import time

_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN", "ERROR": "ERROR", "CRITICAL": "ERROR"}


class _Formatter(logging.Formatter):
    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        level = f"[{_LEVELS.get(record.levelname, record.levelname)}]"
        name = record.name.removeprefix("proconsul.")
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return f"{ts} {level:<7} agent.{name}: {msg}"


def setup(level: str) -> None:
    """Route every logger to stderr at ``level``; pysyncobj and uvicorn are quieted to warnings."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn", "uvicorn.error", "uvicorn.access", "pysyncobj", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
