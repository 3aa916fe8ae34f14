"""Cross-dialect fallback keeps what the other dialect can express and refuses the rest with a 400
in the caller's dialect, before the endpoint is called."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from proxy.dialects.translate import AnthropicToOpenAIStream, OpenAIToAnthropicStream, Translation
from tests.router.helpers import config, endpoint
from tests.servers import MockProvider

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Where is the Eiffel tower?"}]


@pytest.fixture
def sidecar(make_sidecar, mock_provider: MockProvider):
    """``gpt``/``claude`` are served only by the other dialect; ``gpt-fallback`` fails over to it."""
    mock_provider.set_behaviour("broken-gpt", status=503)
    return make_sidecar(
        config(
            mock_provider,
            {
                "gpt": {"endpoints": [endpoint(mock_provider, "mock-claude", dialect="anthropic")]},
                "claude": {"endpoints": [endpoint(mock_provider, "mock-gpt")]},
                "gpt-fallback": {"endpoints": [endpoint(mock_provider, "broken-gpt")], "fallbacks": ["gpt"]},
            },
        )
    )


def test_openai_json_schema_output_reaches_an_anthropic_endpoint(sidecar, mock_provider: MockProvider) -> None:
    client = sidecar.openai()
    response_format = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}}
    reply = client.chat.completions.create(model="gpt", messages=ASK, response_format=response_format)
    assert reply.choices[0].message.content
    sent = mock_provider.requests()[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["body"]["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    stream = client.chat.completions.create(model="gpt", messages=ASK, response_format=response_format, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply.choices[0].message.content
    assert mock_provider.requests()[-1]["body"]["output_config"]["format"]["schema"] == SCHEMA
    # Plain text asks for nothing.
    client.chat.completions.create(model="gpt", messages=ASK, response_format={"type": "text"})
    assert "output_config" not in mock_provider.requests()[-1]["body"]


def test_anthropic_json_output_reaches_an_openai_endpoint(sidecar, mock_provider: MockProvider) -> None:
    client = sidecar.anthropic()
    output_config = {"format": {"type": "json_schema", "schema": SCHEMA}}
    message = client.messages.create(model="claude", max_tokens=50, messages=ASK, output_config=output_config)
    assert message.content[0].text
    sent = mock_provider.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }


def test_stop_sequences_and_tool_choice_cross(sidecar, mock_provider: MockProvider) -> None:
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    sidecar.openai().chat.completions.create(
        model="gpt",
        messages=ASK,
        stop=["\n\n", "END"],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "search"}},
        parallel_tool_calls=False,
    )
    sent = mock_provider.requests()[-1]["body"]
    assert sent["stop_sequences"] == ["\n\n", "END"]
    assert sent["tool_choice"] == {"type": "tool", "name": "search", "disable_parallel_tool_use": True}
    sidecar.anthropic().messages.create(
        model="claude",
        max_tokens=50,
        messages=ASK,
        stop_sequences=["END"],
        tools=[{"name": "search", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any"},
    )
    sent = mock_provider.requests()[-1]["body"]
    assert (sent["stop"], sent["tool_choice"]) == (["END"], "required")


OPENAI_REFUSED = {
    "logprobs": {"logprobs": True, "top_logprobs": 3},
    "n": {"n": 2},
    "presence_penalty": {"presence_penalty": 0.5},
    "logit_bias": {"logit_bias": {"50256": -100}},
    "temperature": {"temperature": 1.5},
    "response_format": {"response_format": {"type": "json_object"}},
    "reasoning_effort": {"reasoning_effort": "high"},
    "tools": {"tools": [{"type": "custom", "custom": {"name": "grammar"}}]},
    "messages": {
        "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}
        ]
    },
    "a_new_provider_knob": {"a_new_provider_knob": True},
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("field", sorted(OPENAI_REFUSED))
def test_openai_fields_with_no_anthropic_counterpart_are_refused_before_the_call(
    sidecar, mock_provider: MockProvider, field: str, stream: bool
) -> None:
    body = {"model": "gpt", "messages": ASK, "stream": stream, **OPENAI_REFUSED[field]}
    response = httpx.post(sidecar.openai_base + "/chat/completions", json=body, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == field
    assert "Anthropic" in error["message"]
    assert mock_provider.calls() == 0


ANTHROPIC_REFUSED = {
    "top_k": {"top_k": 5},
    "thinking": {"thinking": {"type": "enabled", "budget_tokens": 2048}},
    "stop_sequences": {"stop_sequences": ["a", "b", "c", "d", "e"]},
    "tools": {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
    "output_config": {"output_config": {"effort": "high"}},
    "messages": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "a contract"}},
                    {"type": "text", "text": "summarise"},
                ],
            }
        ]
    },
    "container": {"container": "container_1"},
}


@pytest.mark.parametrize("field", sorted(ANTHROPIC_REFUSED))
def test_anthropic_fields_with_no_openai_counterpart_are_refused_before_the_call(
    sidecar, mock_provider: MockProvider, field: str
) -> None:
    body = {"model": "claude", "max_tokens": 50, "messages": ASK, **ANTHROPIC_REFUSED[field]}
    response = httpx.post(sidecar.anthropic_base + "/v1/messages", json=body, timeout=10)
    assert response.status_code == 400, response.text
    document = response.json()
    assert document["type"] == "error" and document["error"]["type"] == "invalid_request_error"
    assert "OpenAI" in document["error"]["message"]
    assert mock_provider.calls() == 0


def test_the_sdks_raise_their_bad_request_errors(sidecar, mock_provider: MockProvider) -> None:
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        sidecar.openai().chat.completions.create(model="gpt", messages=ASK, logprobs=True)
    with pytest.raises(anthropic.BadRequestError, match="top_k"):
        sidecar.anthropic().messages.create(model="claude", max_tokens=50, messages=ASK, extra_body={"top_k": 5})
    assert mock_provider.calls() == 0


def test_what_cannot_change_the_answer_is_left_out(sidecar, mock_provider: MockProvider) -> None:
    sidecar.openai().chat.completions.create(
        model="gpt",
        messages=ASK,
        seed=7,
        store=True,
        metadata={"team": "a"},
        n=1,
        logprobs=False,
        presence_penalty=0,
        user="u-1",
    )
    sent = mock_provider.requests()[-1]["body"]
    assert sent["metadata"] == {"user_id": "u-1"}
    assert not {"seed", "store", "n", "logprobs", "presence_penalty"} & set(sent)


def test_a_non_object_stream_options_is_400_before_the_billed_call(sidecar, mock_provider: MockProvider) -> None:
    for options in ("yes", ["include_usage"], 1):
        body = {"model": "gpt", "messages": ASK, "stream": True, "stream_options": options}
        response = httpx.post(sidecar.openai_base + "/chat/completions", json=body, timeout=10)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "stream_options"
    assert mock_provider.calls() == 0


def test_after_a_failed_endpoint_its_error_stands_rather_than_the_refusal(sidecar, mock_provider: MockProvider) -> None:
    """The endpoint's 503 may pass; a 400 would tell the SDK never to retry."""
    with pytest.raises(openai.InternalServerError) as info:
        sidecar.openai().chat.completions.create(model="gpt-fallback", messages=ASK, logprobs=True)
    assert info.value.status_code == 503
    assert mock_provider.calls("broken-gpt") >= 1 and mock_provider.calls("mock-claude") == 0
    reply = sidecar.openai().chat.completions.create(model="gpt-fallback", messages=ASK)  # translatable: falls back
    assert reply.choices[0].message.content and mock_provider.calls("mock-claude") == 1


def test_usage_keeps_cached_tokens_both_ways() -> None:
    anthropic_usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 90,
        "cache_creation_input_tokens": 5,
        "output_tokens": 7,
    }
    reply = json.loads(
        Translation("openai", "anthropic", "/v1/messages").response(
            json.dumps(
                {
                    "id": "msg_1",
                    "model": "m",
                    "content": [{"type": "text", "text": "hi"}],
                    "stop_reason": "end_turn",
                    "usage": anthropic_usage,
                }
            ).encode()
        )
    )
    assert reply["usage"] == {
        "prompt_tokens": 105,
        "completion_tokens": 7,
        "total_tokens": 112,
        "prompt_tokens_details": {"cached_tokens": 90},
    }
    openai_usage = {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    message = json.loads(
        Translation("anthropic", "openai", "/chat/completions").response(
            json.dumps(
                {
                    "id": "chatcmpl-1",
                    "model": "m",
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
                    ],
                    "usage": openai_usage,
                }
            ).encode()
        )
    )
    assert message["usage"] == {"input_tokens": 36, "cache_read_input_tokens": 64, "output_tokens": 7}
    # Streams too.
    stream = OpenAIToAnthropicStream()
    events = stream.feed(
        b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"hi"},'
        b'"finish_reason":"stop"}]}\n\n'
        b'data: {"id":"c","model":"m","choices":[],"usage":'
        + json.dumps(openai_usage).encode()
        + b"}\n\ndata: [DONE]\n\n"
    )
    assert b'"usage":{"output_tokens":7,"input_tokens":36,"cache_read_input_tokens":64}' in events
    chunks = AnthropicToOpenAIStream(include_usage=True)
    out = chunks.feed(
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"m",'
        b'"usage":{"input_tokens":10,"cache_read_input_tokens":90,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":7}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert (
        b'"prompt_tokens":100,"completion_tokens":7,"total_tokens":107,"prompt_tokens_details":{"cached_tokens":90}'
        in out
    )
