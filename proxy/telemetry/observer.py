"""The per-call telemetry seam.

Steps of the pipeline (cache, router, relay) report moments of a call to
``call.observer``; the no-op ``Observer`` here has every method and does nothing,
so the hot path never asks "is tracing on?". ``Telemetry`` picks, once at start,
which observer every call gets:

- tracing on: a ``TracingObserver`` per call (spans; step timings into metrics);
- metrics only: the shared ``MetricsObserver`` (step timings and event counts);
- both off: ``NOOP``.

Most numbers need no call at all: they are read off the ``Call`` once, in
``Telemetry.finish`` (outcome, cache status, attempts, latency, tokens…).

Names in use (bounded: metrics count anything else as ``other``):
spans ``cache.lookup``, ``cache.store``, ``coalesce.wait``, ``router.queue``,
``upstream.attempt``; events ``fallback``, ``retry``, ``cooldown``,
``circuit_open``, ``circuit_close``, ``coalesce.join``, ``cache.error``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.call import Call
    from proxy.telemetry.metrics import Metrics


class Observer:
    __slots__ = ()

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        """A timed step of the call: ``cache.lookup``, ``router.queue``, ``upstream.attempt``…"""
        yield

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


class _Timed:
    """Times one step into the step histogram (cheaper than a generator-based context manager)."""

    __slots__ = ("metrics", "name", "started")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.metrics = metrics
        self.name = name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.metrics.step(self.name, time.perf_counter() - self.started)


class MetricsObserver(Observer):
    """Times steps and counts events; keeps no per-call state, so one instance serves every call."""

    __slots__ = ("metrics",)

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def span(self, name: str, **attributes: Any) -> _Timed:  # type: ignore[override]
        return _Timed(self.metrics, name)

    def event(self, name: str, **attributes: Any) -> None:
        self.metrics.event(name)
