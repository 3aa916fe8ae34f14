"""The observers ``Telemetry`` gives calls.

Steps of the pipeline (cache, router, relay) report moments of a call to
``call.observer``. The seam itself, ``Observer`` (every method, doing nothing) and
``NOOP``, is defined with the call (``proxy/call.py``), which thus does not need to
know this module; here are the observers that do something. ``Telemetry`` picks, once
at start, which observer every call gets:

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
from typing import TYPE_CHECKING, Any

from proxy.call import NOOP, Observer

if TYPE_CHECKING:
    from proxy.telemetry.metrics import Metrics, _Buckets

__all__ = ["NOOP", "MetricsObserver", "Observer"]


#: step names a ``MetricsObserver`` keeps the histogram child of (unknown names share ``other``)
_MAX_STEP_NAMES = 64


class _Timed:
    """Times one step into its step histogram's child (cheaper than a generator-based context manager)."""

    __slots__ = ("buckets", "started")

    def __init__(self, buckets: _Buckets) -> None:
        self.buckets = buckets

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.buckets.observe(time.perf_counter() - self.started)


class MetricsObserver(Observer):
    """Times steps and counts events; keeps no per-call state, so one instance serves every call."""

    __slots__ = ("metrics", "_steps")

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        #: step name → its histogram child, found once (bounded: unknown names share ``other``)
        self._steps: dict[str, _Buckets] = {}

    def span(self, name: str, **attributes: Any) -> _Timed:
        buckets = self._steps.get(name)
        if buckets is None:
            buckets = self.metrics.step_buckets(name)
            if len(self._steps) < _MAX_STEP_NAMES:
                self._steps[name] = buckets
        return _Timed(buckets)

    def event(self, name: str, **attributes: Any) -> None:
        self.metrics.event(name)
