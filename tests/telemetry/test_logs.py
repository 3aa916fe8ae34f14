"""Logs: one JSON access line per call; no provider key or prompt text anywhere, at any level."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import orjson
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.telemetry.logs import JSONFormatter
from tests.servers import PROVIDER_KEY, SidecarProcess, default_config
from tests.telemetry.conftest import exposition

PROMPT = "purple-elephant-7 confidential prompt"
#: the test's own clients log requests (prompts included) at debug: those lines are not the sidecar's
CLIENT_LOGGERS = ("openai", "anthropic", "httpx", "httpcore")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JSONFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(CLIENT_LOGGERS):
            self.lines.append(self.format(record))

    def access(self) -> list[dict]:
        return [e for e in map(orjson.loads, self.lines) if e["logger"] == "llm_sidecar.access"]


@pytest.fixture
def logs() -> Iterator[Capture]:
    """Every record of every logger, at debug."""
    capture = Capture()
    root = logging.getLogger()
    sidecar_logger = logging.getLogger("llm_sidecar")
    saved = root.level, sidecar_logger.level, sidecar_logger.propagate
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    sidecar_logger.setLevel(logging.DEBUG)
    sidecar_logger.propagate = True
    yield capture
    root.removeHandler(capture)
    root.setLevel(saved[0])
    sidecar_logger.setLevel(saved[1])
    sidecar_logger.propagate = saved[2]


def test_access_line_per_call(sidecar, logs) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    list(
        sidecar.openai().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": "req-log-1", "traceparent": traceparent},
        )
    )
    with pytest.raises(openai.NotFoundError):
        sidecar.openai().chat.completions.create(model="nope", messages=[{"role": "user", "content": PROMPT}])
    first, second = logs.access()
    assert first["request_id"] == "req-log-1"
    assert first["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert first["model_group"] == "gpt-4o-mini" and first["endpoint"] == "mock-openai"
    assert first["outcome"] == "upstream" and first["status"] == 200 and first["stream"] is True
    assert first["output_tokens"] == 20 and first["input_tokens"] > 0
    assert first["attempts"] == 1 and first["cache"] in ("off", "miss", "bypass")
    assert first["latency_ms"] >= first["ttfb_ms"] > 0
    assert first["level"] == "info" and first["msg"] == "call"
    assert second["outcome"] == "error" and second["status"] == 404 and second["model_group"] == "unknown"
    assert second["error_type"] == "not_found_error"


def test_upstream_failure_logs_an_error_event(sidecar, logs) -> None:
    with pytest.raises(openai.InternalServerError):
        sidecar.openai().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers={"x-mock-status": "503"}
        )
    events = [e for e in map(orjson.loads, logs.lines) if e["msg"] == "call failed"]
    assert events and events[0]["level"] == "warning" and events[0]["status"] == 503


def test_access_log_can_be_turned_off(make_sidecar, logs) -> None:
    sidecar = make_sidecar(telemetry={"access_log": False})
    sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert logs.access() == []


def test_prompts_only_when_asked(make_sidecar, logs) -> None:
    sidecar = make_sidecar(telemetry={"log_prompts": True})
    sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    (line,) = logs.access()
    assert line["prompt"]["messages"][0]["content"] == PROMPT


def test_no_key_or_prompt_anywhere(make_sidecar, mock_provider, logs, refused_port) -> None:
    """Every outcome at debug level, tracing on: logs, /metrics, error bodies and spans stay clean."""
    config = default_config(
        mock_provider.url, telemetry={"log_level": "debug", "tracing": {"enabled": True, "exporter": "none"}}
    )
    config["model_groups"]["dead"] = {
        "endpoints": [{"name": "nowhere", "url": refused_port.url + "/v1", "api_key": PROVIDER_KEY}]
    }
    sidecar = make_sidecar(config=config)
    spans = InMemorySpanExporter()
    sidecar.pipeline.telemetry.tracing.provider.add_span_processor(SimpleSpanProcessor(spans))
    client, messages = sidecar.openai(), [{"role": "user", "content": PROMPT}]
    bodies: list[str] = []

    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    with sidecar.anthropic().messages.stream(model="claude-sonnet", max_tokens=50, messages=messages) as stream:
        stream.get_final_message()
    for model, headers in (
        ("gpt-4o-mini", {"x-mock-status": "500"}),
        ("dead", {}),
        ("missing", {}),
        ("gpt-4o-mini", {"x-mock-cut-after": "3"}),
    ):
        try:
            list(client.chat.completions.create(model=model, messages=messages, stream=True, extra_headers=headers))
        except openai.APIError as error:
            bodies.append(str(error.body) + str(error))
    with pytest.raises(anthropic.APIStatusError) as raised:
        sidecar.anthropic().messages.create(
            model="claude-sonnet", max_tokens=5, messages=messages, extra_headers={"x-mock-status": "429"}
        )
    bodies.append(raised.value.response.text)
    bodies.append(
        httpx.post(
            sidecar.openai_base + "/chat/completions",
            content=b'{"model": "gpt-4o-mini", "messages": [{"content": "' + PROMPT.encode() + b'"',
        ).text
    )

    assert len(bodies) == 6
    places = {
        "logs": "\n".join(logs.lines),
        "metrics": exposition(sidecar)[0],
        "error bodies": "\n".join(bodies),
        "spans": "\n".join(s.to_json() for s in spans.get_finished_spans()),
    }
    assert len(logs.access()) == 9
    assert spans.get_finished_spans()
    for place, text in places.items():
        assert PROVIDER_KEY not in text, place
        assert "purple-elephant" not in text, place


def test_serve_writes_the_access_line_to_stderr(tmp_path, mock_provider) -> None:
    """``llm-sidecar serve`` writes each access line straight to its own handler: the same line a record would make."""
    sidecar = SidecarProcess(default_config(mock_provider.url, server={"drain_timeout": 1}), tmp_path)
    try:
        client = openai.OpenAI(base_url=sidecar.url + "/v1", api_key="x", max_retries=0)
        list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": PROMPT}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-request-id": "req-serve-1"},
            )
        )
    finally:
        sidecar.stop()
    stderr = sidecar.log.read_text()
    (line,) = [e for e in map(orjson.loads, stderr.splitlines()) if e["logger"] == "llm_sidecar.access"]
    formatter = JSONFormatter()
    record = logging.LogRecord("llm_sidecar.access", logging.INFO, "", 0, "call", (), None)
    record.fields = {k: v for k, v in line.items() if k not in ("ts", "level", "logger", "msg")}
    assert list(line) == list(orjson.loads(formatter.format(record)))  # the same fields, in the same order
    assert line["level"] == "info" and line["msg"] == "call" and abs(line["ts"] - time.time()) < 60
    assert line["request_id"] == "req-serve-1" and line["outcome"] == "upstream" and line["status"] == 200
    assert line["output_tokens"] == 20 and line["stream"] is True and PROMPT not in stderr
