"""The mock provider behaves like the real APIs, as the official SDKs see them."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest

from proxy.mock_provider import Behaviour


def openai_client(mock) -> openai.OpenAI:
    return openai.OpenAI(base_url=mock.url + "/v1", api_key="k", max_retries=0)


def test_answers_are_deterministic_per_prompt(mock_provider) -> None:
    client = openai_client(mock_provider)
    ask = lambda text: client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    assert ask("one").choices[0].message.content == ask("one").choices[0].message.content
    assert ask("one").choices[0].message.content != ask("two").choices[0].message.content
    reply = ask("a longer prompt with several words")
    assert reply.usage.prompt_tokens == len("a longer prompt with several words") // 4 + 1
    assert reply.usage.completion_tokens == 20


def test_tool_calls_in_both_dialects(mock_provider) -> None:
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    reply = openai_client(mock_provider).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "find it"}], tools=tools)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.tool_calls[0].function.name == "search"
    stream = openai_client(mock_provider).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "find it"}], tools=tools, stream=True)
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                        for c in stream if c.choices and c.choices[0].delta.tool_calls)
    assert arguments == reply.choices[0].message.tool_calls[0].function.arguments
    client = anthropic.Anthropic(base_url=mock_provider.url, api_key="k", max_retries=0)
    with client.messages.stream(model="c", max_tokens=50, messages=[{"role": "user", "content": "find it"}],
                                tools=[{"name": "search", "input_schema": {"type": "object"}}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"query": "find it"}


def test_programmable_errors_and_retry_after(mock_provider) -> None:
    mock_provider.set_behaviour("limited", status=429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as info:
        openai_client(mock_provider).chat.completions.create(model="limited", messages=[])
    assert info.value.response.headers["retry-after"] == "3"
    response = httpx.post(mock_provider.url + "/v1/messages", json={"model": "m", "messages": []},
                          headers={"x-mock-status": "529"})
    assert response.status_code == 529 and response.json()["error"]["type"] == "overloaded_error"


def test_latency_and_time_to_first_token(mock_provider) -> None:
    started = time.perf_counter()
    stream = openai_client(mock_provider).chat.completions.create(
        model="m", messages=[], stream=True, extra_headers={"x-mock-ttft-ms": "300", "x-mock-chunks": "3"})
    chunks = list(stream)
    assert time.perf_counter() - started >= 0.3
    assert len(chunks) == 1 + 3 + 1  # role, three words, finish


def test_counts_calls_and_concurrency(mock_provider) -> None:
    import concurrent.futures

    mock_provider.set_behaviour("busy", latency_ms=200)
    client = openai_client(mock_provider)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: client.chat.completions.create(model="busy", messages=[]), range(4)))
    stats = mock_provider.stats()
    assert stats["calls"]["busy"] == 4 and stats["max_in_flight"]["busy"] == 4 and stats["in_flight"]["busy"] == 0


def test_behaviour_spec_parsing() -> None:
    model, behaviour = Behaviour.parse("slow:ttft_ms=200,chunk_delay_ms=10,status=503")
    assert model == "slow" and behaviour == Behaviour(ttft_ms=200, chunk_delay_ms=10, status=503)
    with pytest.raises(ValueError, match="unknown mock behaviour"):
        Behaviour.parse("x:speed=1")
