"""Traces: a server span per call, children per step, W3C context from the caller to the upstream."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import openai
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy.call import Call
from proxy.config import parse_config
from proxy.dialects import OPENAI
from proxy.telemetry import Telemetry
from proxy.telemetry.observer import NOOP
from tests.servers import PROVIDER_KEY, default_config
from tests.waiting import wait_until

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def traced(make_sidecar):
    """A sidecar that traces every call into an in-memory exporter."""
    sidecar = make_sidecar(telemetry={"tracing": {"enabled": True, "exporter": "none"}})
    exporter = InMemorySpanExporter()
    sidecar.pipeline.telemetry.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return sidecar, exporter


def test_call_span_continues_the_callers_trace(traced, mock_provider) -> None:
    sidecar, exporter = traced
    list(
        sidecar.openai().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "secret prompt words"}],
            stream=True,
            stream_options={"include_usage": True},
            temperature=0.2,
            extra_headers={"traceparent": TRACEPARENT},
        )
    )
    # A stream's last bytes reach the client before the sidecar's handler returns and ends the span.
    spans = wait_until(
        lambda: (
            [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER] and exporter.get_finished_spans()
        ),
        what="the call's span",
    )
    (root,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert root.name == "chat gpt-4o-mini"
    assert format(root.context.trace_id, "032x") == CALLER_TRACE
    assert format(root.parent.span_id, "016x") == CALLER_SPAN
    attributes = root.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.request.temperature"] == 0.2
    assert attributes["gen_ai.usage.output_tokens"] == 20
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["http.response.status_code"] == 200
    assert attributes["llm_sidecar.outcome"] == "upstream"
    assert root.status.status_code is not StatusCode.ERROR
    # The upstream sees the same trace.
    sent = mock_provider.requests()[-1]["headers"]["traceparent"].split("-")
    assert sent[1] == CALLER_TRACE
    # Children of the call span: one per attempt (client kind) whose id went upstream.
    (attempt,) = [s for s in spans if s.name == "upstream.attempt"]
    assert attempt.kind is SpanKind.CLIENT
    assert attempt.parent.span_id == root.context.span_id
    assert attempt.attributes["endpoint"] == "mock-openai"
    assert sent[2] == format(attempt.context.span_id, "016x")
    for span in spans:
        assert "secret prompt" not in str(span.to_json())
        assert PROVIDER_KEY not in str(span.to_json())


def test_failed_call_span_is_an_error(traced) -> None:
    sidecar, exporter = traced
    with pytest.raises(openai.InternalServerError):
        sidecar.openai().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers={"x-mock-status": "500"}
        )
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["error.type"] == "api_error"
    assert root.attributes["http.response.status_code"] == 500
    attempts = [s for s in spans if s.name == "upstream.attempt"]
    assert attempts and all(s.attributes["http.response.status_code"] == 500 for s in attempts)
    assert all(s.status.status_code is StatusCode.ERROR for s in attempts)


def test_new_trace_without_a_caller_context(traced) -> None:
    sidecar, exporter = traced
    reply = sidecar.anthropic().messages.with_raw_response.create(
        model="claude-sonnet", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    (root,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert root.parent is None
    assert root.name == "chat claude-sonnet"
    assert root.attributes["llm_sidecar.request_id"] == reply.headers["x-request-id"]


def _call() -> Call:
    return Call(_Request(), OPENAI, OPENAI.operations["/chat/completions"], "req-1")


class _Request:
    method = "POST"
    path = "/v1/chat/completions"
    headers = {"traceparent": TRACEPARENT}


def test_steps_nest_and_inject_the_innermost_span() -> None:
    config = parse_config(
        default_config("http://127.0.0.1:1", telemetry={"tracing": {"enabled": True, "exporter": "none"}})
    )
    telemetry = Telemetry(config.telemetry)
    exporter = InMemorySpanExporter()
    telemetry.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    call = _call()
    observer = call.observer = telemetry.observe(call)
    with observer.span("cache.lookup"):
        pass
    with observer.span("router.queue", endpoint="a"):
        pass
    headers: dict[str, str] = {}
    with observer.span("upstream.attempt", endpoint="a"):
        observer.inject(headers)
        call.attempt_log.append(("a", 503, 0.1, "api_error"))
        observer.event("fallback", to="b")
    with pytest.raises(RuntimeError), observer.span("upstream.attempt", endpoint="b"):
        raise RuntimeError("boom")
    outside: dict[str, str] = {}
    observer.inject(outside)
    call.model_group, call.outcome, call.status = "gpt-4o-mini", "upstream", 200
    telemetry.finish(call)
    spans = {(s.name, s.attributes.get("endpoint")): s for s in exporter.get_finished_spans()}
    root = spans[("chat gpt-4o-mini", None)]
    first = spans[("upstream.attempt", "a")]
    assert {s.parent.span_id for name, s in spans.items() if name != ("chat gpt-4o-mini", None)} == {
        root.context.span_id
    }
    assert headers["traceparent"] == f"00-{CALLER_TRACE}-{first.context.span_id:016x}-01"
    assert outside["traceparent"] == f"00-{CALLER_TRACE}-{root.context.span_id:016x}-01"
    assert first.kind is SpanKind.CLIENT and spans[("cache.lookup", None)].kind is SpanKind.INTERNAL
    assert first.attributes["http.response.status_code"] == 503
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["fallback"]
    assert spans[("upstream.attempt", "b")].status.status_code is StatusCode.ERROR
    assert observer.trace_id == CALLER_TRACE


def test_tracing_off_is_the_noop_observer_and_imports_nothing() -> None:
    config = parse_config(default_config("http://127.0.0.1:1", telemetry={"metrics": False}))
    assert Telemetry(config.telemetry).observe(_call()) is NOOP
    script = textwrap.dedent("""
        import sys
        from proxy.server import build_app
        from tests.servers import default_config
        from proxy.config import parse_config
        build_app(parse_config(default_config("http://127.0.0.1:1")))
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_export_over_otlp_http(make_sidecar, server_loop) -> None:
    """Spans reach a real OTLP/HTTP receiver on loopback, as protobuf."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    with server_loop.serving(app) as url:
        sidecar = make_sidecar(
            telemetry={
                "tracing": {
                    "enabled": True,
                    "endpoint": f"{url}/v1/traces",
                    "service_name": "sidecar-test",
                    "headers": {"x-tenant": "t1"},
                }
            }
        )
        sidecar.openai().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers={"traceparent": TRACEPARENT}
        )
        sidecar.stop()  # flushes the batch
        spans = [
            (resource.resource, span)
            for message in received
            for resource in message.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]
        assert spans, "no spans reached the receiver"
        names = {span.name for _, span in spans}
        assert "chat gpt-4o-mini" in names
        assert {span.trace_id.hex() for _, span in spans} == {CALLER_TRACE}
        service = {
            a.value.string_value for resource, _ in spans for a in resource.attributes if a.key == "service.name"
        }
        assert service == {"sidecar-test"}
