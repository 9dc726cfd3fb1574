"""Logging setup: every record has an event name and structured fields; JSON on request.

Call sites log ``log.info("...", extra={"event": "migration_applied", "version": 3})``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from schemad import redact

_STD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(fields(record))
        out.setdefault("event", "log")
        if record.exc_info and record.exc_info[1] is not None:
            out["error"] = repr(record.exc_info[1])
        return redact.scrub(json.dumps(out, default=str))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = fields(record)
        event = extra.pop("event", None)
        tail = " ".join(f"{k}={v}" for k, v in extra.items())
        head = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [head, record.levelname.lower(), f"[{event}]" if event else "", record.getMessage(), tail]
        text = " ".join(p for p in parts if p)
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + self.formatException(record.exc_info)
        return redact.scrub(text)


def setup(*, fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("schemad")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
