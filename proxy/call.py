"""``Call``: the one object that flows through the pipeline for one client request."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from aiohttp import web

from proxy.dialects import Dialect, Operation
from proxy.errors import UpstreamError


def new_request_id() -> str:
    """32 hex digits, unique per call: a random per-process prefix and a counter.

    A quarter of the cost of ``uuid4().hex`` (no ``os.urandom`` call per call); the
    64 random bits keep ids of different processes and pods apart.
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _new_id_prefix() -> None:
    global _ID_PREFIX
    _ID_PREFIX = os.urandom(8).hex()


_ID_PREFIX = ""
_ID_COUNTER = itertools.count()
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)  # a forked worker must not repeat its parent's ids


_NOTHING = nullcontext()  # reusable: it holds no state


class Observer:
    """What the steps of a call report to: this no-op, or what ``proxy/telemetry`` picks.

    Every method exists and does nothing here, so the hot path never asks "is tracing
    on?"; ``proxy/telemetry/observer.py`` lists the span and event names in use.
    """

    __slots__ = ()

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[object]:
        """A timed step of the call: ``cache.lookup``, ``router.queue``, ``upstream.attempt``…"""
        return _NOTHING

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Add trace context (``traceparent``) for the upstream attempt in progress."""

    def event(self, name: str, **attributes: Any) -> None:
        """A point-in-time moment: ``fallback``, ``retry``, ``cooldown``…"""

    @property
    def trace_id(self) -> str | None:
        """The call's trace id (32 hex digits) when it is traced."""
        return None

    def end(self, call: Call) -> None:
        """The call is over (``Telemetry.finish`` calls this once)."""


NOOP = Observer()


class Call:
    """One client request on its way through the pipeline; the steps fill in what happened.

    A plain class with its own ``__init__``, not a dataclass: the generated one passes and
    checks 24 defaults and 5 factories on every call (~2,000 instructions more).
    """

    __slots__ = (
        "request",
        "dialect",
        "operation",
        "request_id",
        "body",
        "payload",
        "model_group",
        "stream",
        "client_key",
        "started",
        "outcome",
        "cache_status",
        "endpoint",
        "attempts",
        "status",
        "first_byte_at",
        "upstream_seconds",
        "attempt_log",
        "queue_wait",
        "fallbacks",
        "retries",
        "usage",
        "error_type",
        "upstream_failure",
        "response_headers",
        "observer",
        "fleet_grant",
        "cache_ticket",
    )

    def __init__(self, request: web.Request, dialect: Dialect, operation: Operation, request_id: str) -> None:
        self.request = request
        self.dialect = dialect
        self.operation = operation
        self.request_id = request_id
        #: the body exactly as the client sent it; forwarded as is when nothing must change
        self.body = b""
        self.payload: dict[str, Any] = {}
        #: the model group the client named; "unknown" until it is read and known
        self.model_group = "unknown"
        self.stream = False
        #: the credential the client sent, if any (used only for pass-through and tenancy)
        self.client_key: str | None = None
        self.started = time.perf_counter()

        # What happened, filled in along the way; the observer reads them once at the end.
        #: cached | coalesced | upstream | error | cancelled (the client left before its answer ended)
        self.outcome = "error"
        #: hit | miss | coalesced | bypass | stale | off
        self.cache_status = "off"
        self.endpoint: str | None = None
        self.attempts = 0
        self.status = 0
        self.first_byte_at: float | None = None
        #: seconds spent waiting on upstreams (attempts), so the sidecar's own overhead is the rest
        self.upstream_seconds = 0.0
        #: one entry per upstream attempt: (endpoint name, status or 0, seconds, error type or None)
        self.attempt_log: list[tuple[str, int, float, str | None]] = []
        self.queue_wait = 0.0
        self.fallbacks = 0
        self.retries = 0
        #: token counts read from the answer: input_tokens, output_tokens
        self.usage: dict[str, int] = {}
        self.error_type: str | None = None
        #: the upstream failure that ended an answer after it began (the router counts it against the endpoint)
        self.upstream_failure: UpstreamError | None = None
        #: headers the steps add to the client's response (e.g. how many passages were added)
        self.response_headers: dict[str, str] = {}
        self.observer: Observer = NOOP
        #: the fleet budget granted to the attempt in progress (``proxy.fleet.budget.Grant``)
        self.fleet_grant: Any = None
        #: the cache's per-call state (``proxy.cache.response_cache.Ticket``) once the call is cacheable
        self.cache_ticket: Any = None
