"""Structured logs: one JSON object per line, on stderr.

Two loggers: ``llm_sidecar.access`` (one line per call, at info) and
``llm_sidecar`` (lifecycle and error events). Neither ever carries a provider
key; prompt text appears only with ``telemetry.log_prompts: true``. Every other
library's records (aiohttp, asyncio, warnings) go through the same handler, as one
JSON line each, without the request bytes a parser error would quote.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from proxy.call import Call

ACCESS_NAME = "llm_sidecar.access"
ACCESS = logging.getLogger(ACCESS_NAME)
EVENTS = logging.getLogger("llm_sidecar")

#: the request fields that hold prompt text, in either dialect
PROMPT_FIELDS = ("system", "messages", "prompt", "input", "instructions")


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


class LoopBufferedHandler(logging.StreamHandler):
    """Writes the lines of one event-loop turn together: one ``write`` per turn, not per call.

    A line waits at most until the loop's next turn; outside a running loop (start-up,
    shutdown) it is written at once. ``flush()`` (called by ``logging.shutdown``)
    writes whatever is pending.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.emit_line(line)

    def emit_line(self, line: str) -> None:
        """Write one formatted line (with this turn's others)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._pending.append(line)
        if loop is None:
            self.flush()
        elif len(self._pending) == 1:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        if not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        with self.lock:  # type: ignore[union-attr]  # Handler.__init__ always creates it; typeshed allows None
            self.stream.write(text)
            self.stream.flush()


class WithoutRequestData(logging.Filter):
    """Another library's exception keeps only its type and HTTP status.

    aiohttp logs a malformed request (from any client of a listener) with a traceback
    whose message quotes the offending request line or header, which may hold a key.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not record.name.startswith("llm_sidecar"):
            exc = record.exc_info[1]
            fields: dict[str, Any] = {"error": type(exc).__name__}
            if isinstance(code := getattr(exc, "code", None), int):
                fields["status"] = code
            record.fields = {**(getattr(record, "fields", None) or {}), **fields}
            record.exc_info = record.exc_text = None
        return True


def setup_logging(level: str) -> None:
    handler = LoopBufferedHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(WithoutRequestData())
    ours = logging.getLogger("llm_sidecar")
    ours.handlers[:] = [handler]
    ours.setLevel(level.upper())
    ours.propagate = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    # The JSON lines carry none of these; skipping them makes every record cheaper.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # aiohttp's own access log repeats ours without the fields that matter.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _only_handler() -> LoopBufferedHandler | None:
    """The handler ``setup_logging`` installed, when an access record would reach it and nothing else."""
    if ACCESS.handlers or ACCESS.filters or not ACCESS.propagate or EVENTS.propagate or EVENTS.filters:
        return None
    handlers = EVENTS.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if type(handler) is not LoopBufferedHandler or handler.level > logging.INFO:
        return None
    if type(handler.formatter) is not JSONFormatter:
        return None
    filters = handler.filters  # WithoutRequestData alone (it leaves the sidecar's own records alone)
    if filters and (len(filters) > 1 or type(filters[0]) is not WithoutRequestData):
        return None
    return handler


def log_access(call: Call, now: float, log_prompts: bool) -> None:
    """Write one call's access line (the caller checked that the access logger is enabled for info).

    Where the line goes only to the sidecar's own handler (the set-up ``serve`` makes), it
    is written there as ``JSONFormatter`` would write its record, without making one: the
    ``LogRecord``, its filters and formatter cost ~31,000 instructions a line, half of the
    line's whole cost. Any other set-up (a test's handler, a library's) gets the record, as before.
    """
    entry = access_entry(call, now, log_prompts)
    handler = _only_handler()
    if handler is not None:
        handler.emit_line(orjson.dumps(entry, default=str).decode())
        return
    for key in _HEAD:  # the record brings its own
        del entry[key]
    # ``Logger.info`` would first search the stack for the caller's file and line (about
    # half its cost), which the JSON line never shows: the record is made and handled directly.
    ACCESS.handle(ACCESS.makeRecord(ACCESS.name, logging.INFO, "", 0, "call", (), None, extra={"fields": entry}))


def event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    EVENTS.log(level, message, extra={"fields": fields})


#: the keys ``JSONFormatter`` puts before a record's fields
_HEAD = ("ts", "level", "logger", "msg")


#: the access line's keys in their order, the constant ones filled in: a line is a copy of
#: this (the keys table copied at once) with values stored in place, not a 25-key literal,
#: which Python builds key by key, resizing the dict twice on the way
_ACCESS_LINE: dict[str, Any] = {
    **dict.fromkeys(_HEAD),
    "level": "info",
    "logger": ACCESS_NAME,
    "msg": "call",
    **dict.fromkeys(
        (
            "request_id",
            "trace_id",
            "dialect",
            "path",
            "model_group",
            "endpoint",
            "outcome",
            "status",
            "cache",
            "stream",
            "attempts",
            "fallbacks",
            "retries",
            "latency_ms",
            "ttfb_ms",
            "upstream_ms",
            "overhead_ms",
            "queue_ms",
            "input_tokens",
            "output_tokens",
            "error_type",
        )
    ),
}


_round = float.__round__


def access_entry(call: Call, now: float, log_prompts: bool) -> dict[str, Any]:
    """The access line of one call, as ``JSONFormatter`` lays it out: one dict, built once.

    Milliseconds to 2 decimals, inline: ``_round(seconds * 100_000.0) / 100``, not ``round(x, 2)``
    (with digits, a float is rounded through its decimal string, ~10x the cost; k / 100 is
    the same nearest double), and not a helper (a Python call for each of five fields).
    ``_round`` is ``float.__round__`` itself: the builtin ``round`` looks the method up on
    every call, which doubles its cost (a float factor keeps every argument a float).
    """
    started = call.started
    latency = now - started
    upstream = call.upstream_seconds
    first_byte_at = call.first_byte_at
    usage = call.usage
    entry = _ACCESS_LINE.copy()
    entry["ts"] = _round(time.time() * 1000.0) / 1000
    entry["request_id"] = call.request_id
    entry["trace_id"] = call.observer.trace_id or _caller_trace_id(call)
    entry["dialect"] = call.dialect.name
    entry["path"] = call.operation.path
    entry["model_group"] = call.model_group
    entry["endpoint"] = call.endpoint
    entry["outcome"] = call.outcome
    entry["status"] = call.status
    entry["cache"] = call.cache_status
    entry["stream"] = call.stream
    entry["attempts"] = call.attempts
    entry["fallbacks"] = call.fallbacks
    entry["retries"] = call.retries
    entry["latency_ms"] = _round(latency * 100_000.0) / 100
    if first_byte_at is not None:
        entry["ttfb_ms"] = _round((first_byte_at - started) * 100_000.0) / 100
    entry["upstream_ms"] = _round(upstream * 100_000.0) / 100
    entry["overhead_ms"] = _round((latency - upstream) * 100_000.0) / 100 if latency > upstream else 0.0
    entry["queue_ms"] = _round(call.queue_wait * 100_000.0) / 100
    entry["input_tokens"] = usage.get("input_tokens")
    entry["output_tokens"] = usage.get("output_tokens")
    entry["error_type"] = call.error_type
    if log_prompts:
        entry["prompt"] = {k: call.payload[k] for k in PROMPT_FIELDS if k in call.payload}
    return entry


def _caller_trace_id(call: Call) -> str | None:
    """Untraced here, the caller's own trace id still ties the line to its trace."""
    traceparent = call.request.headers.get("traceparent")
    if traceparent is None:
        return None
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32:
        return None
    try:
        int(parts[1], 16)
    except ValueError:
        return None
    return parts[1]
