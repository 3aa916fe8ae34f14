"""The per-call telemetry seam.

Steps of the pipeline (cache, router, relay) report moments of a call to
``call.observer``; the no-op ``Observer`` here has every method and does nothing,
so the hot path never asks "is tracing on?". The metrics and tracing observers
implement the same methods.

Most numbers need no call at all: they are read off the ``Call`` once, in
``Telemetry.finish`` (outcome, cache status, attempts, latency, tokens…).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any


class Observer:
    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        """A timed step of the call: ``cache.lookup``, ``router.queue``, ``upstream.attempt``…"""
        yield

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Add trace context (``traceparent``) for the upstream attempt in progress."""

    def event(self, name: str, **attributes: Any) -> None:
        """A point-in-time moment: ``fallback``, ``retry``, ``cooldown``…"""


NOOP = Observer()
