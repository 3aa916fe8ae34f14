"""Structured logs: one JSON object per line, on stderr."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

ACCESS = logging.getLogger("llm_sidecar.access")
EVENTS = logging.getLogger("llm_sidecar")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger("llm_sidecar")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # aiohttp's own access log repeats ours without the fields that matter.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    EVENTS.log(level, message, extra={"fields": fields})
