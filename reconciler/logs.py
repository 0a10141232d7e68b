"""Logging set-up: human-readable on a terminal, one JSON object per line with --log-format json.

Logs always go to stderr: a CNI plugin's stdout carries only its result.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

# Attributes a log call may carry via `extra=` that JSON lines expose as fields.
FIELDS = ("network", "container_id", "ifname", "action", "outcome", "duration", "netns", "file")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = [f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None) is not None]
        return f"{base} {' '.join(extras)}" if extras else base


def stderr_handler(level: str | None = None, fmt: str | None = None) -> logging.Handler:
    """A handler writing to stderr at `level` (else RECONCILER_LOG_LEVEL, else WARNING; a name logging
    does not know counts as WARNING), formatted as `fmt` (else RECONCILER_LOG_FORMAT) says: json or text."""
    name = (level or os.environ.get("RECONCILER_LOG_LEVEL") or "WARNING").upper()
    fmt = fmt or os.environ.get("RECONCILER_LOG_FORMAT") or "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(name if isinstance(logging.getLevelName(name), int) else logging.WARNING)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    return handler


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """The root logger writes to stderr only, through `stderr_handler(level, fmt)`."""
    handler = stderr_handler(level, fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(handler.level)
