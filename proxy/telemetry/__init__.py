"""Telemetry: what each call did, recorded once when it ends.

``Telemetry`` is built once per app. ``observe(call)`` gives a starting call its
observer (chosen once, at start: no "is tracing on?" per call); ``finish(call)``
records the ended call: metrics, the span's last attributes, the access line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from proxy.telemetry.config import TelemetryConfig
from proxy.telemetry.logs import ACCESS, event, log_access
from proxy.telemetry.metrics import LiveCollector, Metrics, NullMetrics
from proxy.telemetry.observer import NOOP, MetricsObserver, Observer

if TYPE_CHECKING:
    from proxy.call import Call
    from proxy.telemetry.tracing import Tracing

__all__ = ["Telemetry", "TelemetryConfig", "Observer", "NOOP"]

#: what ``/metrics`` answers with when metrics are off
EMPTY_EXPOSITION = b""


def _version() -> str:
    try:
        return version("llm-sidecar")
    except PackageNotFoundError:
        return "unknown"


class Telemetry:
    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config
        self.metrics: Metrics | None = Metrics(config, _version()) if config.metrics else None
        self._record: Metrics | NullMetrics = self.metrics or NullMetrics()
        self._live: LiveCollector | None = None
        self.tracing: Tracing | None = None
        #: a traced call's own observer; untraced, one observer serves every call (``_shared``)
        self._observe: Callable[[Call], Observer] | None = None
        self._shared: Observer = NOOP
        if config.tracing.enabled:
            from proxy.telemetry.tracing import Tracing, TracingObserver

            tracing = self.tracing = Tracing(config.tracing)
            tracer, metrics = tracing.tracer, self.metrics
            self._observe = lambda call: TracingObserver(call, tracer, metrics)
        elif self.metrics is not None:
            self._shared = MetricsObserver(self.metrics)
        # What ``finish`` does, decided here once.
        self._log_access = config.access_log
        self._log_prompts = config.log_prompts

    def bind(self, model_groups: Collection[str], router: Any, cache: Any) -> None:
        """Name the configured model groups and the live objects ``/metrics`` reads.

        Called again by a config reload: the one collector then reads the new router and cache.
        """
        if self.metrics is None:
            return
        self.metrics.bind(model_groups)
        if self._live is None:
            self._live = LiveCollector(router, cache)
            self.metrics.registry.register(self._live)
        else:
            self._live.router, self._live.cache = router, cache

    def reloaded(self, ok: bool) -> None:
        """A config reload was applied (``ok``) or rejected."""
        if self.metrics is not None:
            self.metrics.reloads("ok" if ok else "error").inc()

    def start(self) -> None:
        if self.tracing is not None:
            self.tracing.start()

    async def close(self) -> None:
        """Flush and stop the exporter, off the event loop: the export is blocking HTTP."""
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)

    def observe(self, call: Call) -> Observer:
        """The observer of a call that starts now."""
        self._record.start()
        observe = self._observe
        return self._shared if observe is None else observe(call)

    def finish(self, call: Call) -> None:
        """Record one ended call: exactly once per call, whatever its outcome."""
        now = time.perf_counter()
        self._record.record(call, now)
        call.observer.end(call)
        if self._log_access and ACCESS.isEnabledFor(logging.INFO):
            log_access(call, now, self._log_prompts)
        if call.status >= 500:
            event(
                "call failed",
                logging.WARNING,
                request_id=call.request_id,
                model_group=call.model_group,
                endpoint=call.endpoint,
                status=call.status,
                error_type=call.error_type,
                attempts=call.attempts,
            )

    def exposition(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and its content type."""
        # Every name here is a classic one, so the 0.0.4 text format says it all, and every
        # Prometheus and agent version reads it.
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

        if self.metrics is None:
            return EMPTY_EXPOSITION, CONTENT_TYPE_PLAIN_0_0_4
        return generate_latest(self.metrics.registry), CONTENT_TYPE_PLAIN_0_0_4
