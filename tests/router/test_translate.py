"""Cross-dialect fallback, seen through both official SDKs, streaming and not."""

from __future__ import annotations

import json

import pytest

from proxy.dialects.translate import OpenAIToAnthropicStream
from tests.router.helpers import config, endpoint
from tests.servers import MockProvider

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def sidecar(make_sidecar, mock_provider: MockProvider):
    """``gpt`` (OpenAI, failing) falls back to ``claude``; ``claude-main`` (failing) falls back to ``gpt-ok``."""
    mock_provider.set_behaviour("broken-gpt", status=503)
    mock_provider.set_behaviour("broken-claude", status=500)
    return make_sidecar(
        config(
            mock_provider,
            {
                "gpt": {"endpoints": [endpoint(mock_provider, "broken-gpt")], "fallbacks": ["claude"]},
                "claude": {"endpoints": [endpoint(mock_provider, "mock-claude", dialect="anthropic")]},
                "claude-main": {
                    "endpoints": [endpoint(mock_provider, "broken-claude", dialect="anthropic")],
                    "fallbacks": ["gpt-ok"],
                },
                "gpt-ok": {"endpoints": [endpoint(mock_provider, "mock-gpt")]},
            },
        )
    )


def test_openai_sdk_over_an_anthropic_endpoint(sidecar, mock_provider: MockProvider) -> None:
    client = sidecar.openai()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    reply = client.chat.completions.create(model="gpt", max_tokens=50, messages=messages)
    assert len(reply.choices[0].message.content.split()) == 20
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 20 and reply.usage.prompt_tokens > 0
    sent = mock_provider.requests()[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["body"]["system"] == "Be brief." and sent["body"]["max_tokens"] == 50
    assert sent["headers"]["x-api-key"] and "authorization" not in sent["headers"]

    stream = client.chat.completions.create(
        model="gpt", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 20


def test_openai_tool_calls_through_anthropic(sidecar, mock_provider: MockProvider) -> None:
    client = sidecar.openai()
    messages = [{"role": "user", "content": "find llamas"}]
    reply = client.chat.completions.create(model="gpt", messages=messages, tools=TOOLS)
    call = reply.choices[0].message.tool_calls[0]
    assert (call.function.name, reply.choices[0].finish_reason) == ("search", "tool_calls")
    assert json.loads(call.function.arguments) == {"query": "find llamas"}
    stream = client.chat.completions.create(model="gpt", messages=messages, tools=TOOLS, stream=True)
    arguments, names = "", []
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            names += [delta.function.name] if delta.function and delta.function.name else []
            arguments += (delta.function.arguments or "") if delta.function else ""
    assert names == ["search"] and json.loads(arguments) == {"query": "find llamas"}
    # The tool's answer goes back across too: tool_calls → tool_use, tool → tool_result.
    follow = client.chat.completions.create(
        model="gpt",
        messages=[
            *messages,
            reply.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "llamas found"},
        ],
    )
    assert follow.choices[0].message.content
    turns = mock_provider.requests()[-1]["body"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][0] == {
        "type": "tool_use",
        "id": call.id,
        "name": "search",
        "input": {"query": "find llamas"},
    }
    assert turns[2]["content"][0] == {"type": "tool_result", "tool_use_id": call.id, "content": "llamas found"}


def test_anthropic_sdk_over_an_openai_endpoint(sidecar, mock_provider: MockProvider) -> None:
    client = sidecar.anthropic()
    message = client.messages.create(
        model="claude-main", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Hello"}]
    )
    assert message.content[0].type == "text" and len(message.content[0].text.split()) == 20
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 20
    sent = mock_provider.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
    with client.messages.stream(
        model="claude-main", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == message.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 20 and final.usage.input_tokens > 0


def test_anthropic_tools_through_openai(sidecar) -> None:
    client = sidecar.anthropic()
    tools = [
        {
            "name": "search",
            "description": "Search",
            "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
        }
    ]
    message = client.messages.create(
        model="claude-main", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "find llamas"}]
    )
    block = message.content[0]
    assert (block.type, block.name, block.input, message.stop_reason) == (
        "tool_use",
        "search",
        {"query": "find llamas"},
        "tool_use",
    )
    with client.messages.stream(
        model="claude-main", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "find llamas"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == {"query": "find llamas"} and final.stop_reason == "tool_use"


def test_embeddings_never_go_to_the_other_dialect(sidecar) -> None:
    import openai

    with pytest.raises(openai.BadRequestError, match="no endpoint"):
        sidecar.openai().embeddings.create(model="claude", input="x")


def test_openai_stream_split_anywhere_translates_the_same() -> None:
    frames = (
        b'data: {"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        b'data: {"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    whole = OpenAIToAnthropicStream().feed(frames)
    for cut in (1, 17, 60, len(frames) - 3):
        translator = OpenAIToAnthropicStream()
        assert translator.feed(frames[:cut]) + translator.feed(frames[cut:]) == whole
    assert b'"stop_reason":"max_tokens"' in whole and whole.endswith(
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
