"""OpenTelemetry traces: a server span per call, a child per step, W3C context passed upstream.

The tracer provider is private to the app (not the process-global one), so several
sidecars in one process (tests) keep their spans apart. The OTLP exporter is
imported only when it is configured: the sidecar's memory matters, and most
sidecars never trace.

Span names and attributes follow the OpenTelemetry GenAI semantic conventions
where they exist (``chat gpt-4o``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens`` …); the sidecar's own facts use ``llm_sidecar.*``.
Prompts and keys never go into a span.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanKind,
    Status,
    StatusCode,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy.errors import ProxyError, UpstreamStatus
from proxy.telemetry.config import TracingConfig
from proxy.telemetry.logs import event
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.observer import Observer

if TYPE_CHECKING:
    from proxy.call import Call

PROPAGATOR = TraceContextTextMapPropagator()

#: GenAI ``gen_ai.operation.name`` by the path of the dialect's operation
OPERATION_NAMES = {
    "/chat/completions": "chat",
    "/completions": "text_completion",
    "/embeddings": "embeddings",
    "/responses": "chat",
    "/v1/messages": "chat",
    "/v1/messages/count_tokens": "count_tokens",
}
#: request fields copied to ``gen_ai.request.*`` when present (numbers only: never text)
_REQUEST_FIELDS = (
    ("max_tokens", "max_tokens"),
    ("max_completion_tokens", "max_tokens"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("seed", "seed"),
)


class Tracing:
    """The app's tracer provider and its exporter."""

    def __init__(self, config: TracingConfig) -> None:
        self.config = config
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        self.tracer = self.provider.get_tracer("llm_sidecar")

    def start(self) -> None:
        """Attach the exporter (imported here, only when tracing is on)."""
        if self.config.exporter != "otlp":
            return
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporter = OTLPSpanExporter(
            endpoint=self.config.endpoint, headers=dict(self.config.headers) or None, timeout=self.config.timeout
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        event(
            "tracing",
            exporter="otlp",
            endpoint=self.config.endpoint or "(from OTEL_EXPORTER_OTLP_* env)",
            sample_ratio=self.config.sample_ratio,
        )

    def shutdown(self) -> None:
        """Flush what is buffered and stop the exporter's thread."""
        self.provider.shutdown()


class TracingObserver(Observer):
    """One call's spans. ``span()`` children hang off the call's server span; ``inject``
    passes the innermost open span (the upstream attempt) on as ``traceparent``."""

    __slots__ = ("call", "metrics", "tracer", "root", "_context", "_current")

    def __init__(self, call: Call, tracer: Any, metrics: Metrics | None) -> None:
        self.call = call
        self.metrics = metrics
        self.tracer = tracer
        request = call.request
        parent = PROPAGATOR.extract(request.headers)
        operation = OPERATION_NAMES.get(call.operation.path, "chat")
        self.root: Span = tracer.start_span(
            operation,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.system": call.dialect.name,
                "http.request.method": request.method,
                "url.path": request.path,
                "llm_sidecar.request_id": call.request_id,
            },
        )
        self._context: Context = set_span_in_context(self.root)
        self._current = self._context

    @property
    def trace_id(self) -> str | None:
        context = self.root.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        kind = SpanKind.CLIENT if name == "upstream.attempt" else SpanKind.INTERNAL
        span = self.tracer.start_span(name, context=self._context, kind=kind, attributes=_attributes(attributes))
        outer = self._current
        self._current = set_span_in_context(span)
        attempts_before = len(self.call.attempt_log)
        started = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            # The router logs an attempt after its span closes, so a failed attempt is read
            # from its exception: the error type, and the upstream's own status if it sent one.
            error_type = exc.type if isinstance(exc, ProxyError) else type(exc).__name__
            span.set_status(Status(StatusCode.ERROR, error_type))
            span.set_attribute("error.type", error_type)
            if isinstance(exc, UpstreamStatus):
                span.set_attribute("http.response.status_code", exc.status)
            raise
        finally:
            if len(self.call.attempt_log) > attempts_before:
                endpoint, status, _seconds, error = self.call.attempt_log[-1]
                span.set_attribute("llm_sidecar.endpoint", endpoint)
                if status:
                    span.set_attribute("http.response.status_code", status)
                if error:
                    span.set_attribute("error.type", error)
                    span.set_status(Status(StatusCode.ERROR, error))
            span.end()
            self._current = outer
            if self.metrics is not None:
                self.metrics.step(name, time.perf_counter() - started)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        PROPAGATOR.inject(headers, context=self._current)

    def event(self, name: str, **attributes: Any) -> None:
        span = _span_of(self._current) or self.root
        span.add_event(name, _attributes(attributes))
        if self.metrics is not None:
            self.metrics.event(name)

    def end(self, call: Call) -> None:
        root = self.root
        operation = OPERATION_NAMES.get(call.operation.path, "chat")
        root.update_name(f"{operation} {call.model_group}")
        attributes: dict[str, Any] = {
            "gen_ai.request.model": call.model_group,
            "llm_sidecar.outcome": call.outcome,
            "llm_sidecar.cache_status": call.cache_status,
            "llm_sidecar.attempts": call.attempts,
            "llm_sidecar.stream": call.stream,
        }
        payload = call.payload
        for field, name in _REQUEST_FIELDS:
            value = payload.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[f"gen_ai.request.{name}"] = value
        if call.endpoint is not None:
            attributes["llm_sidecar.endpoint"] = call.endpoint
        if call.status:
            attributes["http.response.status_code"] = call.status
        if "input_tokens" in call.usage:
            attributes["gen_ai.usage.input_tokens"] = call.usage["input_tokens"]
        if "output_tokens" in call.usage:
            attributes["gen_ai.usage.output_tokens"] = call.usage["output_tokens"]
        if call.fallbacks:
            attributes["llm_sidecar.fallbacks"] = call.fallbacks
        if call.first_byte_at is not None:
            attributes["llm_sidecar.ttfb_ms"] = round((call.first_byte_at - call.started) * 1000, 3)
        if call.error_type is not None:
            attributes["error.type"] = call.error_type
            root.set_status(Status(StatusCode.ERROR, call.error_type))
        root.set_attributes(attributes)
        root.end()


def _span_of(context: Context) -> Span | None:
    span = get_current_span(context)
    return None if isinstance(span, NonRecordingSpan) and not span.get_span_context().is_valid else span


def _attributes(values: dict[str, Any]) -> dict[str, Any]:
    """Span attributes must be primitives; anything else becomes its ``str``."""
    return {k: v if isinstance(v, (str, bool, int, float)) else str(v) for k, v in values.items() if v is not None}
