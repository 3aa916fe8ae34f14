"""A hit must look exactly like a live answer to the official SDKs, in either form."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.servers import Sidecar

TOOLS_OPENAI = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "look it up",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]
TOOLS_ANTHROPIC = [
    {
        "name": "lookup",
        "description": "look it up",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


def _status(raw) -> str:
    return raw.headers["x-llm-sidecar-cache"]


@pytest.mark.parametrize("tools", [False, True])
def test_openai_sync_hits_equal_live_answers(cached_sidecar, mock_provider, tools: bool) -> None:
    client = cached_sidecar().openai()
    extra = {"tools": TOOLS_OPENAI} if tools else {}
    messages = [{"role": "user", "content": f"cache me please {tools}"}]
    live = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, **extra)
    hit = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, **extra)
    assert (_status(live), _status(hit)) == ("miss", "hit")
    assert hit.parse().model_dump() == live.parse().model_dump()
    assert hit.headers["Age"] == "0"
    if tools:
        assert hit.parse().choices[0].message.tool_calls[0].function.name == "lookup"
    # The same question, streamed: served from the JSON entry as SSE.
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}, **extra
        )
    )
    assert mock_provider.calls() == 1
    reply = live.parse()
    if tools:
        deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
        assert (
            "".join(d[0].function.arguments or "" for d in deltas)
            == reply.choices[0].message.tool_calls[0].function.arguments
        )
        assert deltas[0][0].id == reply.choices[0].message.tool_calls[0].id
    else:
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
        )
    assert chunks[-1].usage.model_dump() == reply.usage.model_dump()
    assert {c.id for c in chunks} == {reply.id}


@pytest.mark.parametrize("tools", [False, True])
def test_openai_stream_hit_is_the_recorded_stream(cached_sidecar, mock_provider, tools: bool) -> None:
    sidecar = cached_sidecar()
    client = sidecar.openai()
    extra = {"tools": TOOLS_OPENAI} if tools else {}
    messages = [{"role": "user", "content": f"stream me {tools}"}]
    first = [
        c.model_dump()
        for c in client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}, **extra
        )
    ]
    again = [
        c.model_dump()
        for c in client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}, **extra
        )
    ]
    assert again == first
    # Without include_usage the usage chunk is left out, as the provider would.
    plain = [
        c.model_dump()
        for c in client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True, **extra)
    ]
    assert plain == first[:-1]
    # Served as one JSON body from the stored stream.
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages, **extra)
    assert reply.id == first[0]["id"]
    assert reply.usage.model_dump() == first[-1]["usage"]
    if tools:
        assert reply.choices[0].finish_reason == "tool_calls"
        assert reply.choices[0].message.tool_calls[0].function.arguments.startswith('{"query"')
    else:
        assert reply.choices[0].message.content == "".join(
            c["choices"][0]["delta"]["content"] or "" for c in first if c["choices"]
        )
    assert mock_provider.calls() == 1


def test_stream_hit_matches_frame_by_frame(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar()
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "frames"}],
    }

    def frames() -> tuple[str, list[bytes]]:
        with httpx.stream("POST", sidecar.openai_base + "/chat/completions", json=body) as response:
            raw = b"".join(response.iter_bytes())
            return response.headers["x-llm-sidecar-cache"], [f for f in raw.split(b"\n\n") if f]

    (miss, original), (hit, replayed) = frames(), frames()
    assert (miss, hit) == ("miss", "hit")
    assert replayed == original
    assert original[-1] == b"data: [DONE]"
    assert mock_provider.calls() == 1


@pytest.mark.parametrize("tools", [False, True])
def test_anthropic_hits_in_both_forms(cached_sidecar, mock_provider, tools: bool) -> None:
    client = cached_sidecar().anthropic()
    extra = {"tools": TOOLS_ANTHROPIC} if tools else {}
    kwargs = {
        "model": "claude-sonnet",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": f"hi {tools}"}],
        **extra,
    }
    with client.messages.stream(**kwargs) as stream:
        events = [e.model_dump() for e in stream]
        streamed = stream.get_final_message()
    with client.messages.stream(**kwargs) as stream:
        again = [e.model_dump() for e in stream]
    assert again == events
    live_json = client.messages.with_raw_response.create(**kwargs)
    assert _status(live_json) == "hit"
    assert live_json.parse().model_dump() == streamed.model_dump()
    if tools:
        assert streamed.content[0].type == "tool_use" and streamed.content[0].input
    assert mock_provider.calls() == 1


def test_anthropic_json_entry_served_as_stream(cached_sidecar, mock_provider) -> None:
    client = cached_sidecar().anthropic()
    kwargs = {
        "model": "claude-sonnet",
        "max_tokens": 100,
        "tools": TOOLS_ANTHROPIC,
        "messages": [{"role": "user", "content": "json first"}],
    }
    message = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.model_dump() == message.model_dump()
    assert mock_provider.calls() == 1


async def test_async_sdks_get_hits(cached_sidecar, mock_provider) -> None:
    sidecar: Sidecar = cached_sidecar()
    openai_client, anthropic_client = sidecar.async_openai(), sidecar.async_anthropic()
    for _ in range(2):
        reply = await openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "async"}], tools=TOOLS_OPENAI
        )
        stream = await openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "async"}], stream=True, tools=TOOLS_OPENAI
        )
        chunks = [c async for c in stream]
        message = await anthropic_client.messages.create(
            model="claude-sonnet", max_tokens=50, messages=[{"role": "user", "content": "async"}]
        )
        async with anthropic_client.messages.stream(
            model="claude-sonnet", max_tokens=50, messages=[{"role": "user", "content": "async"}]
        ) as events:
            final = await events.get_final_message()
        assert chunks[0].id == reply.id
        assert final.model_dump() == message.model_dump()
    assert mock_provider.calls() == 2  # one per dialect
    await asyncio.sleep(0)


def test_completions_and_responses_cross_forms(cached_sidecar, mock_provider) -> None:
    client = cached_sidecar().openai()
    text = client.completions.create(model="gpt-4o-mini", prompt="legacy").choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="gpt-4o-mini", prompt="legacy", stream=True)
        if c.choices
    )
    assert streamed == text
    events = list(client.responses.create(model="gpt-4o-mini", input="resp", stream=True))
    completed = [e for e in events if e.type == "response.completed"][0].response
    reply = client.responses.create(model="gpt-4o-mini", input="resp")
    assert reply.output_text == completed.output_text and reply.id == completed.id
    deltas = "".join(
        e.delta
        for e in client.responses.create(model="gpt-4o-mini", input="resp", stream=True)
        if e.type == "response.output_text.delta"
    )
    assert deltas == reply.output_text
    assert mock_provider.calls() == 2


def test_embeddings_are_cached(cached_sidecar, mock_provider) -> None:
    client = cached_sidecar().openai()
    first = client.embeddings.create(model="gpt-4o-mini", input="vector").data[0].embedding
    assert client.embeddings.create(model="gpt-4o-mini", input="vector").data[0].embedding == first
    assert mock_provider.calls() == 1
