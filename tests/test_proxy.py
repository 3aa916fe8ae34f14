"""The core data path, driven with the official SDKs through real HTTP on loopback."""

from __future__ import annotations

import pytest

from tests.servers import PROVIDER_KEY, Sidecar


def test_openai_chat_completion(sidecar: Sidecar, mock_provider) -> None:
    reply = sidecar.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 20
    sent = mock_provider.requests()[-1]
    # The endpoint's model name and credential replace the client's.
    assert sent["body"]["model"] == "mock-gpt"
    assert sent["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"


def test_openai_stream_arrives_frame_by_frame(sidecar: Sidecar) -> None:
    stream = sidecar.openai().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 20
    assert chunks[-1].usage.total_tokens > 20


def test_stream_is_not_buffered(sidecar: Sidecar, mock_provider) -> None:
    """The first chunk reaches the client long before the last one is produced upstream."""
    import time

    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=100, chunks=10)
    started = time.perf_counter()
    stream = sidecar.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "slow"}], stream=True
    )
    arrivals = [time.perf_counter() - started for _ in stream]
    # The mock sends a chunk every 100 ms: the second chunk comes ~0.8 s before the last one,
    # where a buffered stream would bring them together. Measured between chunks, not from the
    # start, so a slow first call on a loaded machine cannot fail it.
    assert arrivals[-1] - arrivals[1] > 0.5, arrivals
    assert arrivals[-1] > 0.8


@pytest.mark.parametrize("kind", ["completions", "embeddings", "responses"])
def test_other_openai_operations(sidecar: Sidecar, kind: str) -> None:
    client = sidecar.openai()
    if kind == "completions":
        assert client.completions.create(model="gpt-4o-mini", prompt="Say hi").choices[0].text
    elif kind == "embeddings":
        vector = client.embeddings.create(model="gpt-4o-mini", input="hello").data[0].embedding
        assert len(vector) == 8
    else:
        assert client.responses.create(model="gpt-4o-mini", input="Hello").output_text


def test_models_lists_model_groups(sidecar: Sidecar) -> None:
    ids = {m.id for m in sidecar.openai().models.list()}
    assert ids == {"gpt-4o-mini", "claude-sonnet"}


def test_anthropic_message_and_stream(sidecar: Sidecar, mock_provider) -> None:
    client = sidecar.anthropic()
    message = client.messages.create(
        model="claude-sonnet", max_tokens=100, messages=[{"role": "user", "content": "Hello"}]
    )
    assert message.content[0].text
    sent = mock_provider.requests()[-1]
    assert sent["headers"]["x-api-key"] == PROVIDER_KEY
    assert sent["body"]["model"] == "mock-claude"
    with client.messages.stream(
        model="claude-sonnet", max_tokens=100, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == message.content[0].text
    assert final.usage.output_tokens == 20


def test_anthropic_count_tokens(sidecar: Sidecar) -> None:
    count = sidecar.anthropic().messages.count_tokens(
        model="claude-sonnet", messages=[{"role": "user", "content": "Hello world, how are you?"}]
    )
    assert count.input_tokens > 0


async def test_async_clients(sidecar: Sidecar) -> None:
    async with sidecar.async_openai() as client:
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}])
    assert reply.choices[0].message.content
    async with sidecar.async_anthropic() as client:
        stream = await client.messages.create(
            model="claude-sonnet", max_tokens=50, messages=[{"role": "user", "content": "async"}], stream=True
        )
        kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"


def test_request_id_is_kept_and_forwarded(sidecar: Sidecar, mock_provider) -> None:
    raw = sidecar.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "id"}], extra_headers={"x-request-id": "req-42"}
    )
    assert raw.headers["x-request-id"] == "req-42"
    assert mock_provider.requests()[-1]["headers"]["x-request-id"] == "req-42"
    generated = sidecar.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "id"}]
    )
    assert len(generated.headers["x-request-id"]) == 32


def test_hop_by_hop_and_control_headers_stay_here(sidecar: Sidecar, mock_provider) -> None:
    import httpx

    httpx.post(
        sidecar.openai_base + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": []},
        headers={
            "Connection": "keep-alive, x-secret-hop",
            "x-secret-hop": "1",
            "x-llm-sidecar-cache": "no",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    sent = {k.lower(): v for k, v in mock_provider.requests()[-1]["headers"].items()}
    assert "x-secret-hop" not in sent and "x-llm-sidecar-cache" not in sent
    assert sent["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert sent["user-agent"].startswith("python-httpx/")  # the client's own, as it came


_CLIENT_HEADERS = [
    ("User-Agent", "test-sdk/1.0"),
    ("X-Dup", "1"),
    ("X-Dup", "2"),
    ("Authorization", "Bearer sk-client-not-for-the-provider"),
    ("X-Api-Key", "sk-client-not-for-the-provider"),
    ("API-KEY", "sk-client-not-for-the-provider"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Proxy-Authorization", "Basic cHJveHk6cGFzcw=="),
    ("X-Private-Hop", "1"),
    ("X-LLM-Sidecar-Cache", "no"),
    ("X-Stainless-Lang", "python"),
    ("Content-Type", "application/json; charset=utf-8"),
]
#: what aiohttp adds and the sidecar sets itself, left out of the comparison
_ADDED = {"host", "accept", "accept-encoding", "content-length", "x-request-id"}


@pytest.mark.parametrize("key", ["own", "pass-through", "pass-through, translated"])
def test_the_headers_that_reach_the_upstream_exactly(make_sidecar, server_loop, key: str) -> None:
    """Names as the client spelled them, in its order, a repeated one kept; then the same names
    with another Connection header, so what is worked out for one layout of names is not reused."""
    import http.client

    from aiohttp import web

    received: list[list[tuple[str, str]]] = []

    async def openai(request: web.Request) -> web.Response:
        received.append(list(request.headers.items()))
        usage = {"prompt_tokens": 1, "completion_tokens": 1}
        return web.json_response({"id": "x", "object": "chat.completion", "choices": [], "usage": usage})

    async def anthropic(request: web.Request) -> web.Response:
        received.append(list(request.headers.items()))
        content = [{"type": "text", "text": "hi"}]
        usage = {"input_tokens": 1, "output_tokens": 1}
        return web.json_response(
            {"id": "m", "type": "message", "role": "assistant", "content": content, "model": "m", "usage": usage}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", openai)
    app.router.add_post("/v1/messages", anthropic)
    with server_loop.serving(app) as upstream:
        if key == "pass-through, translated":
            endpoint = {"name": "e", "url": upstream, "dialect": "anthropic", "pass_through_key": True}
        else:
            endpoint = {"name": "e", "url": f"{upstream}/v1", "dialect": "openai"}
            endpoint |= {"pass_through_key": True} if key == "pass-through" else {"api_key": PROVIDER_KEY}
        sidecar = make_sidecar(model_groups={"gpt-4o-mini": {"endpoints": [endpoint]}})
        for connection in ("keep-alive, x-private-hop", "Keep-Alive, X-DUP"):
            client = http.client.HTTPConnection("127.0.0.1", sidecar.servers.port, timeout=10)
            client.putrequest("POST", "/v1/chat/completions")
            for name, value in [*_CLIENT_HEADERS, ("Connection", connection)]:
                client.putheader(name, value)
            body = b'{"model": "gpt-4o-mini", "messages": []}'
            client.putheader("Content-Length", str(len(body)))
            client.endheaders(body)
            assert client.getresponse().status == 200
            client.close()

    client_key = "sk-client-not-for-the-provider"
    first, second = ([(k, v) for k, v in headers if k.lower() not in _ADDED] for headers in received)
    # The client's credentials as they came, or none: the endpoint's own, or the client's restated.
    credentials, added = {
        "own": ([], [("Authorization", f"Bearer {PROVIDER_KEY}")]),
        "pass-through": (
            [("Authorization", f"Bearer {client_key}"), ("X-Api-Key", client_key), ("API-KEY", client_key)],
            [],
        ),
        "pass-through, translated": ([], [("x-api-key", client_key), ("anthropic-version", "2023-06-01")]),
    }[key]
    common = [("User-Agent", "test-sdk/1.0")]
    rest = [("X-Stainless-Lang", "python"), ("Content-Type", "application/json"), *added]
    assert first == [*common, ("X-Dup", "1"), ("X-Dup", "2"), *credentials, *rest]
    assert second == [*common, *credentials, ("X-Private-Hop", "1"), *rest]
    assert all(len({k.lower(): v for k, v in headers}["x-request-id"]) == 32 for headers in received)


def test_a_call_without_user_agent_goes_upstream_as_the_sidecars(sidecar: Sidecar, mock_provider) -> None:
    """Not as the HTTP library's (``Python/3.x aiohttp/…``)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", sidecar.servers.port, timeout=10)
    connection.request("POST", "/v1/chat/completions", body=b'{"model": "gpt-4o-mini", "messages": []}', headers={})
    assert connection.getresponse().status == 200
    sent = {k.lower(): v for k, v in mock_provider.requests()[-1]["headers"].items()}
    assert sent["user-agent"] == "llm-sidecar"


def test_pass_through_key(make_sidecar, mock_provider) -> None:
    config_groups = {
        "gpt-4o-mini": {"endpoints": [{"name": "m", "url": f"{mock_provider.url}/v1", "pass_through_key": True}]}
    }
    sidecar = make_sidecar(model_groups=config_groups)
    sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert mock_provider.requests()[-1]["headers"]["authorization"] == "Bearer sk-client-placeholder"


def test_never_an_open_proxy(sidecar: Sidecar, mock_provider) -> None:
    """No path, header or body field can point the proxy at another host."""
    import httpx

    for path in ("/v1/../../etc/passwd", "/v1/http://169.254.169.254/latest", "/v1/chat/completions/../../x"):
        response = httpx.post(sidecar.url + path, json={"model": "gpt-4o-mini"})
        assert response.status_code == 404
    response = httpx.post(
        sidecar.openai_base + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [], "url": "http://example.invalid"},
        headers={"Host": "example.invalid", "X-Forwarded-Host": "example.invalid"},
    )
    assert response.status_code == 200
    assert mock_provider.requests()[-1]["path"] == "/v1/chat/completions"
