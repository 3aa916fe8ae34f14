"""The mock provider behaves like the real APIs, as the official SDKs see them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from proxy.mock_provider import Behaviour
from tests.servers import LLM_SIDECAR, answers, start_on_free_ports


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
        model="m", messages=[{"role": "user", "content": "find it"}], tools=tools
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.tool_calls[0].function.name == "search"
    stream = openai_client(mock_provider).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "find it"}], tools=tools, stream=True
    )
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in stream
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert arguments == reply.choices[0].message.tool_calls[0].function.arguments
    client = anthropic.Anthropic(base_url=mock_provider.url, api_key="k", max_retries=0)
    with client.messages.stream(
        model="c",
        max_tokens=50,
        messages=[{"role": "user", "content": "find it"}],
        tools=[{"name": "search", "input_schema": {"type": "object"}}],
    ) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"query": "find it"}


def test_programmable_errors_and_retry_after(mock_provider) -> None:
    mock_provider.set_behaviour("limited", status=429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as info:
        openai_client(mock_provider).chat.completions.create(model="limited", messages=[])
    assert info.value.response.headers["retry-after"] == "3"
    response = httpx.post(
        mock_provider.url + "/v1/messages", json={"model": "m", "messages": []}, headers={"x-mock-status": "529"}
    )
    assert response.status_code == 529 and response.json()["error"]["type"] == "overloaded_error"


def test_latency_and_time_to_first_token(mock_provider) -> None:
    started = time.perf_counter()
    stream = openai_client(mock_provider).chat.completions.create(
        model="m", messages=[], stream=True, extra_headers={"x-mock-ttft-ms": "300", "x-mock-chunks": "3"}
    )
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


def test_responses_stream_reads_in_the_sdk(mock_provider) -> None:
    """``responses.stream()`` needs the item and its text part opened before the deltas."""
    client = openai_client(mock_provider)
    whole = client.responses.create(model="m", input="say something")
    with client.responses.stream(model="m", input="say something") as stream:
        deltas = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas == final.output_text == whole.output_text
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_faults_on_demand_from_the_command_line(tmp_path: Path) -> None:
    """``llm-sidecar mock-provider --behaviour`` plays each stream fault, as documented."""
    specs = [
        "cut:truncate=1",
        "bad:malformed=2",
        "none:empty=1",
        "split:crlf=1",
        "slow:linger_ms=300",
        "busy:error_after=3",
    ]
    process, (port,) = start_on_free_ports(
        lambda port: [
            LLM_SIDECAR,
            "mock-provider",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *(arg for spec in specs for arg in ("--behaviour", spec)),
        ],
        lambda port: answers(f"http://127.0.0.1:{port}/v1/models"),
        tmp_path / "mock-provider.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def stream(model: str) -> tuple[bytes, float]:
            started = time.monotonic()
            response = httpx.post(
                url + "/v1/chat/completions",
                timeout=10,
                json={"model": model, "stream": True, "messages": [{"role": "user", "content": "x"}]},
            )
            assert response.status_code == 200
            return response.content, time.monotonic() - started

        plain = stream("plain")[0]
        assert plain.endswith(b"data: [DONE]\n\n")
        assert stream("cut")[0].count(b"\n\n") == plain.count(b"\n\n") - 1 and b"[DONE]" not in stream("cut")[0]
        frames = stream("bad")[0].split(b"\n\n")
        with pytest.raises(json.JSONDecodeError):
            json.loads(frames[2].removeprefix(b"data: "))
        assert all(json.loads(f.removeprefix(b"data: ")) for f in frames[3:-2])  # the rest is whole
        assert stream("none")[0] == b""
        split = stream("split")[0]
        assert split.endswith(b"data: [DONE]\r\n\r\n") and b"\n\n" not in split.replace(b"\r\n\r\n", b"")
        assert stream("slow")[1] >= 0.3
        busy = stream("busy")[0].split(b"\n\n")
        assert all("choices" in json.loads(f.removeprefix(b"data: ")) for f in busy[:3]) and busy[4:] == [b""]
        assert json.loads(busy[3].removeprefix(b"data: "))["error"]["type"] == "server_error"
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", []),
        ("/v1/chat/completions", {"model": "m", "messages": [], "tools": "x"}),
        ("/v1/chat/completions", {"model": "m", "messages": [], "tools": [None]}),
        ("/v1/chat/completions", {"model": "m", "messages": [], "stream_options": "x"}),
        ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [], "tools": {"name": "t"}}),
        ("/v1/responses", {"model": "m", "input": "x", "tools": ["search"]}),
    ],
)
def test_a_body_of_the_wrong_shape_is_a_400_as_a_provider_answers_it(mock_provider, path, body, stream) -> None:
    # The mock crashed on these (aiohttp's text 500), which counted against the endpoint as a
    # provider failure would, where a real provider answers 400 invalid_request_error.
    if stream and isinstance(body, dict):
        body = {**body, "stream": True}
    response = httpx.post(mock_provider.url + path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert (error["error"]["type"]) == "invalid_request_error"
