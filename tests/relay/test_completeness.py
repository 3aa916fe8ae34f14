"""Only a complete, well-formed answer is relayed as one and stored.

Each fault is played by the mock provider; the clients are the official SDKs (or raw
HTTP where the SDK hides what is checked). After a broken answer, the same call
again must go upstream (a miss): nothing was stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.relay.helpers import endpoint_status
from tests.relay.helpers import endpoint_status as status_of
from tests.relay.helpers import wait_for as wait_until
from tests.servers import PROVIDER_KEY, ServerLoop, Sidecar, default_config

USER = [{"role": "user", "content": "tell me something"}]


def cache_header(sidecar: Sidecar, path: str, body: dict) -> str:
    with httpx.stream("POST", sidecar.url + path, json=body, timeout=10) as response:
        response.read()
        return response.headers["x-llm-sidecar-cache"]


def openai_chat(sidecar: Sidecar) -> str:
    stream = sidecar.openai().chat.completions.create(
        model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def openai_responses(sidecar: Sidecar) -> str:
    with sidecar.openai().responses.stream(model="gpt-4o-mini", input="tell me something") as stream:
        return stream.get_final_response().output_text


def anthropic_messages(sidecar: Sidecar) -> str:
    with sidecar.anthropic().messages.stream(model="claude-sonnet", max_tokens=100, messages=USER) as stream:
        return stream.get_final_text()


# (the SDK call, the mock model, the sidecar endpoint, the raw path and body of the same call)
CALLS = [
    pytest.param(
        openai_chat,
        "mock-gpt",
        "mock-openai",
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": USER, "stream": True, "stream_options": {"include_usage": True}},
        openai.APIError,
        id="openai-chat",
    ),
    pytest.param(
        openai_responses,
        "mock-gpt",
        "mock-openai",
        "/v1/responses",
        {"model": "gpt-4o-mini", "input": "tell me something", "stream": True},
        openai.APIError,
        id="openai-responses",
    ),
    pytest.param(
        anthropic_messages,
        "mock-claude",
        "mock-anthropic",
        "/anthropic/v1/messages",
        {"model": "claude-sonnet", "max_tokens": 100, "messages": USER, "stream": True},
        anthropic.APIError,
        id="anthropic",
    ),
]


@pytest.mark.parametrize(("call", "model", "endpoint", "path", "body", "raised"), CALLS)
@pytest.mark.parametrize("fault", [{"truncate": 1}, {"malformed": 3}], ids=["truncated", "malformed"])
def test_a_broken_stream_is_an_error_and_is_not_stored(
    cached_sidecar, mock_provider, call, model, endpoint, path, body, raised, fault
) -> None:
    sidecar = cached_sidecar()
    mock_provider.set_behaviour(model, **fault)
    with pytest.raises(raised):
        call(sidecar)
    state = status_of(sidecar, endpoint)
    assert (state["failures"], state["last_error"]) == (1, "UpstreamBroken")
    mock_provider.set_behaviour(model)
    assert cache_header(sidecar, path, body) == "miss"
    assert call(sidecar)  # the whole answer, now stored: a hit
    assert mock_provider.calls(model) == 2


@pytest.mark.parametrize(("call", "model", "endpoint", "path", "body", "raised"), CALLS)
def test_a_stream_in_crlf_pieces_reads_whole_and_is_stored(
    cached_sidecar, mock_provider, call, model, endpoint, path, body, raised
) -> None:
    """Every line end cut between its \\r and \\n by the network: the answer is whole, and stored."""
    sidecar = cached_sidecar()
    mock_provider.set_behaviour(model)
    plain = call(sidecar)
    sidecar = cached_sidecar()  # a fresh, empty cache
    mock_provider.set_behaviour(model, crlf=1)
    assert call(sidecar) == plain
    assert wait_until(lambda: sidecar.pipeline.cache.stats.stores == 1)
    assert cache_header(sidecar, path, body) == "hit"


def test_a_truncated_stream_translated_gets_no_made_up_end(make_sidecar, mock_provider) -> None:
    """An OpenAI caller served by an Anthropic endpoint whose stream stops before ``message_stop``,
    and the other way round: the caller's SDK raises, it never sees ``[DONE]``/``message_stop``."""
    config = default_config(mock_provider.url)
    config["model_groups"] = {
        "gpt-4o-mini": {
            "endpoints": [
                {
                    "name": "to-anthropic",
                    "url": mock_provider.url,
                    "dialect": "anthropic",
                    "model": "mock-claude",
                    "api_key": PROVIDER_KEY,
                }
            ],
            "cache": {"mode": "always"},
        },
        "claude-sonnet": {
            "endpoints": [
                {
                    "name": "to-openai",
                    "url": mock_provider.url + "/v1",
                    "dialect": "openai",
                    "model": "mock-gpt",
                    "api_key": PROVIDER_KEY,
                }
            ],
            "cache": {"mode": "always"},
        },
    }
    config["cache"] = {"backend": "memory"}
    sidecar = make_sidecar(config=config)
    mock_provider.set_behaviour("mock-claude", truncate=1)
    mock_provider.set_behaviour("mock-gpt", truncate=1)
    with httpx.stream(
        "POST",
        sidecar.openai_base + "/chat/completions",
        timeout=10,
        json={"model": "gpt-4o-mini", "messages": USER, "stream": True},
    ) as response:
        text = response.read()
    assert b"[DONE]" not in text and b'"error"' in text
    with pytest.raises(openai.APIError):
        openai_chat(sidecar)
    with httpx.stream(
        "POST",
        sidecar.anthropic_base + "/v1/messages",
        timeout=10,
        json={"model": "claude-sonnet", "max_tokens": 50, "messages": USER, "stream": True},
    ) as response:
        text = response.read()
    assert b"message_stop" not in text and b"event: error" in text
    with pytest.raises(anthropic.APIError):
        anthropic_messages(sidecar)
    assert status_of(sidecar, "to-anthropic")["failures"] == 2
    assert status_of(sidecar, "to-openai")["failures"] == 2
    assert sidecar.pipeline.cache.stats.stores == 0
    # Complete answers translate and are stored as before.
    mock_provider.set_behaviour("mock-claude")
    mock_provider.set_behaviour("mock-gpt")
    assert openai_chat(sidecar) and anthropic_messages(sidecar)
    assert wait_until(lambda: sidecar.pipeline.cache.stats.stores == 2)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_empty_200_is_a_502_in_the_callers_dialect(cached_sidecar, mock_provider, stream) -> None:
    sidecar = cached_sidecar()
    mock_provider.set_behaviour("mock-gpt", empty=1)
    mock_provider.set_behaviour("mock-claude", empty=1)
    with pytest.raises(openai.APIStatusError) as raised:
        result = sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=USER, stream=stream)
        list(result) if stream else None
    assert raised.value.status_code == 502
    assert raised.value.body["type"] == "api_error" and "empty" in raised.value.body["message"]
    with pytest.raises(anthropic.APIStatusError) as raised_a:
        sidecar.anthropic().messages.create(model="claude-sonnet", max_tokens=20, messages=USER, stream=stream)
    assert raised_a.value.status_code == 502
    assert raised_a.value.body["error"]["type"] == "api_error"
    state = status_of(sidecar, "mock-openai")  # every attempt (the router retries) failed as broken
    assert state["failures"] == state["attempts"] >= 1 and state["last_error"] == "UpstreamBroken"
    assert sidecar.pipeline.cache.stats.stores == 0


def test_an_empty_200_falls_back_to_the_next_endpoint(make_sidecar, mock_provider) -> None:
    config = default_config(mock_provider.url)
    config["model_groups"]["gpt-4o-mini"]["endpoints"] = [
        {
            "name": "empty",
            "url": mock_provider.url + "/v1",
            "model": "mock-empty",
            "api_key": PROVIDER_KEY,
            "priority": 0,
        },
        {"name": "fine", "url": mock_provider.url + "/v1", "model": "mock-gpt", "api_key": PROVIDER_KEY, "priority": 1},
    ]
    sidecar = make_sidecar(config=config)
    mock_provider.set_behaviour("mock-empty", empty=1)
    reply = sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert reply.choices[0].message.content
    assert status_of(sidecar, "empty")["failures"] == 1


def test_a_translated_stream_in_crlf_pieces_reads_whole(make_sidecar, mock_provider) -> None:
    """The translator reads the endpoint's frames: a line end cut between ``\\r`` and ``\\n``
    must not merge two of them."""
    config = default_config(mock_provider.url)
    config["model_groups"]["gpt-4o-mini"] = {
        "endpoints": [
            {
                "name": "to-anthropic",
                "url": mock_provider.url,
                "dialect": "anthropic",
                "model": "mock-claude",
                "api_key": PROVIDER_KEY,
            }
        ]
    }
    sidecar = make_sidecar(config=config)
    plain = openai_chat(sidecar)
    mock_provider.set_behaviour("mock-claude", crlf=1)
    assert openai_chat(sidecar) == plain
    assert endpoint_status(sidecar, "to-anthropic")["failures"] == 0


BROKEN_ANSWERS = [
    pytest.param(b'{"id": "chatcmpl-1", "choices": [}', id="syntax"),
    pytest.param(b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "caf\xc3"}}]}', id="bad-utf8-in-a-string"),
    pytest.param(b'[{"id": "chatcmpl-1"}]', id="not-an-object"),
]


def _chat_path(dialect: str) -> str:
    """Where an endpoint of ``dialect`` takes a chat call."""
    return "/v1/messages" if dialect == "anthropic" else "/v1/chat/completions"


@contextlib.contextmanager
def canned_upstream(
    server_loop: ServerLoop, answer: bytes, path: str = "/v1/chat/completions", content_type: str = "application/json"
) -> Iterator[str]:
    """A loopback upstream that answers every POST to ``path`` with ``answer`` (status 200): its URL."""
    from aiohttp import web

    async def answer_it(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type=content_type)

    app = web.Application()
    app.router.add_post(path, answer_it)
    with server_loop.serving(app) as url:
        yield url


@pytest.mark.parametrize("answer", BROKEN_ANSWERS)
def test_a_json_answer_that_is_not_one_json_object_is_a_502_and_not_stored(answer, server_loop, make_sidecar) -> None:
    """Checked whole, the parts no one reads included: a 502 for the SDK, a broken attempt, nothing stored."""
    with canned_upstream(server_loop, answer) as url:
        config = default_config(url, cache={"backend": "memory"})
        sidecar = make_sidecar(config=config)
        for _ in range(2):  # the second call goes upstream again: nothing was stored
            with pytest.raises(openai.APIStatusError) as raised:
                sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=USER, temperature=0)
            assert raised.value.status_code == 502 and raised.value.body["type"] == "api_error"
        state = status_of(sidecar, "mock-openai")
        assert state["failures"] == state["attempts"] >= 2 and state["last_error"] == "UpstreamBroken"
        assert sidecar.pipeline.cache.stats.stores == 0


def _translated_config(url: str, endpoint_dialect: str) -> dict:
    """Model group ``g``: the endpoint ``odd`` at ``url``, which speaks ``endpoint_dialect``."""
    endpoint = {
        "name": "odd",
        "url": url + ("/v1" if endpoint_dialect == "openai" else ""),
        "dialect": endpoint_dialect,
        "model": "m",
        "api_key": PROVIDER_KEY,
    }
    return default_config(url, model_groups={"g": {"endpoints": [endpoint]}}, cache={"backend": "memory"})


WRONG_SHAPES = [
    pytest.param("anthropic", b"{}", id="anthropic-no-content"),
    pytest.param("anthropic", b'{"content": [null]}', id="anthropic-block-null"),
    pytest.param("anthropic", b'{"content": [{"type": "text", "text": "hi"}], "usage": "x"}', id="anthropic-usage-str"),
    pytest.param("openai", b"{}", id="openai-no-choices"),
    pytest.param("openai", b'{"choices": []}', id="openai-choices-empty"),
    pytest.param("openai", b'{"choices": [null]}', id="openai-choice-null"),
]


@pytest.mark.parametrize("endpoint_dialect, answer", WRONG_SHAPES)
def test_a_translated_json_answer_of_the_wrong_shape_is_a_502_and_not_stored(
    endpoint_dialect, answer, server_loop, make_sidecar
) -> None:
    # Translating it raised (a 500 "the sidecar failed to handle this call", a traceback in the
    # log) or made an empty answer up from nothing, relayed and stored as a complete one.
    with canned_upstream(server_loop, answer, _chat_path(endpoint_dialect)) as url:
        sidecar = make_sidecar(config=_translated_config(url, endpoint_dialect))
        for _ in range(2):  # the second call goes upstream again: nothing was stored
            if endpoint_dialect == "anthropic":
                with pytest.raises(openai.APIStatusError) as raised:
                    sidecar.openai().chat.completions.create(model="g", messages=USER)
                assert raised.value.status_code == 502 and raised.value.body["type"] == "api_error"
            else:
                with pytest.raises(anthropic.APIStatusError) as caught:
                    sidecar.anthropic().messages.create(model="g", max_tokens=10, messages=USER)
                assert caught.value.status_code == 502 and caught.value.body["error"]["type"] == "api_error"
        state = status_of(sidecar, "odd")
        assert state["failures"] == state["attempts"] >= 2 and state["last_error"] == "UpstreamBroken"
        assert sidecar.pipeline.cache.stats.stores == 0


@pytest.mark.parametrize(
    "endpoint_dialect, frames",
    [
        pytest.param("openai", [b'data: {"choices": [null]}\n\n', b"data: [DONE]\n\n"], id="openai-choice-null"),
        pytest.param(
            "anthropic",
            [
                b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_1"}}\n\n',
                b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": "x"}\n\n',
            ],
            id="anthropic-delta-str",
        ),
    ],
)
def test_a_translated_stream_event_of_the_wrong_shape_ends_with_an_error_event(
    endpoint_dialect, frames, server_loop, make_sidecar
) -> None:
    # The translator raised mid-stream: the connection was dropped with its chunked body unfinished,
    # no error event, where a malformed frame ends the stream with one in the caller's dialect.
    from aiohttp import web

    async def stream_it(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(_chat_path(endpoint_dialect), stream_it)
    with server_loop.serving(app) as url:
        sidecar = make_sidecar(config=_translated_config(url, endpoint_dialect))
        if endpoint_dialect == "openai":  # the caller speaks Anthropic
            path, body = "/anthropic/v1/messages", {"model": "g", "max_tokens": 10}
        else:
            path, body = "/v1/chat/completions", {"model": "g"}
        answer = httpx.post(sidecar.url + path, json={**body, "messages": USER, "stream": True}, timeout=10)
        assert answer.status_code == 200
        # One error event in the caller's dialect, the last frame of a stream that ended properly.
        last = answer.text.rstrip().rsplit("\n\n", 1)[-1]
        if endpoint_dialect == "openai":
            assert last.startswith("event: error\ndata: ") and '"type":"error"' in last
        else:
            assert last.startswith('data: {"error":')
        assert "cannot translate the upstream stream" in last
        assert status_of(sidecar, "odd")["last_error"] == "UpstreamBroken"
        assert sidecar.pipeline.cache.stats.stores == 0


CHUNK = b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}'
MISMATCHED = [
    # A streaming call answered with a JSON body: the SDK's stream would end with no frame and no error.
    pytest.param(
        True,
        b'{"id":"c","object":"chat.completion","created":1,"model":"m",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}',
        "application/json",
        id="json-to-a-stream",
    ),
    # A JSON call answered with a stream: the SDK would get event-stream text where it parses JSON.
    pytest.param(False, b"data: " + CHUNK + b"\n\ndata: [DONE]\n\n", "text/event-stream", id="stream-to-json"),
]


@pytest.mark.parametrize(("stream", "answer", "content_type"), MISMATCHED)
def test_an_answer_in_the_other_form_than_the_call_asked_is_a_502(
    stream, answer, content_type, server_loop, make_sidecar
) -> None:
    """An upstream (a gateway, a server) that ignores ``stream``: a broken attempt, not a silent nothing."""
    with canned_upstream(server_loop, answer, content_type=content_type) as url:
        sidecar = make_sidecar(config=default_config(url))
        with pytest.raises(openai.APIStatusError) as raised:
            answered = sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=USER, stream=stream)
            if stream:
                list(answered)
        assert raised.value.status_code == 502
        state = status_of(sidecar, "mock-openai")
        assert state["failures"] == state["attempts"] >= 1 and state["last_error"] == "UpstreamBroken"


@pytest.mark.parametrize(
    "dialect, answer",
    [
        ("openai", b'{"error": {"message": "The server is overloaded", "type": "server_error"}}'),
        (
            "anthropic",
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "The server is overloaded"}}',
        ),
    ],
)
def test_an_error_answered_with_a_200_is_a_failed_attempt_and_not_stored(
    dialect, answer, server_loop, make_sidecar
) -> None:
    # An error object under a 200 was relayed as the answer and stored: with mode always, the
    # same call got the provider's "overloaded" from the cache for the entry's whole ttl.
    with canned_upstream(server_loop, answer, _chat_path(dialect)) as url:
        endpoint = {"name": "odd", "url": url + ("/v1" if dialect == "openai" else ""), "dialect": dialect}
        group = {"endpoints": [{**endpoint, "api_key": PROVIDER_KEY}], "cache": {"mode": "always"}}
        sidecar = make_sidecar(config=default_config(url, model_groups={"g": group}, cache={"backend": "memory"}))
        for _ in range(2):  # the second call goes upstream again: nothing was stored
            if dialect == "openai":
                with pytest.raises(openai.InternalServerError) as raised:
                    sidecar.openai().chat.completions.create(model="g", messages=USER)
            else:
                with pytest.raises(anthropic.InternalServerError) as raised:
                    sidecar.anthropic().messages.create(model="g", max_tokens=10, messages=USER)
            assert raised.value.status_code == 502 and "The server is overloaded" in raised.value.message
        assert status_of(sidecar, "odd")["attempts"] >= 2
        assert sidecar.pipeline.cache.stats.stores == 0


ANSWER = (
    b'{"id":"c","object":"chat.completion","created":1,"model":"m",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'
)
LIMIT = 1024 * 1024


@pytest.mark.parametrize(
    ("chunked", "status"),
    [
        pytest.param(False, 200, id="content-length"),
        pytest.param(True, 200, id="chunked"),
        pytest.param(True, 500, id="chunked-error"),
    ],
)
def test_a_json_answer_over_max_answer_bytes_is_a_502_and_not_read_whole(
    chunked, status, server_loop, make_sidecar
) -> None:
    # A JSON (or error) answer was read whole with no bound: a broken or hostile upstream sending
    # gigabytes had the sidecar OOM-killed, cutting every call of the pod.
    from aiohttp import web

    sent = []  # the bytes the upstream got out for each oversized answer before the sidecar hung up

    async def chat(request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        if payload["messages"][0]["content"] != "big":
            return web.Response(body=ANSWER, content_type="application/json")
        if not chunked:
            return web.Response(status=status, body=b"x" * (LIMIT + 1), content_type="application/json")
        answer = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        answer.enable_chunked_encoding()
        await answer.prepare(request)
        written = 0
        try:
            while written < 1024 * LIMIT:  # 1 GiB, unless the sidecar stops reading
                await answer.write(b"x" * 65536)
                written += 65536
        except (ConnectionError, RuntimeError):
            pass
        sent.append(written)
        return answer

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    with server_loop.serving(app) as url:
        endpoint = {"name": "big", "url": url + "/v1", "api_key": PROVIDER_KEY, "max_answer_bytes": LIMIT}
        group = {"endpoints": [endpoint], "cache": {"mode": "always"}}
        sidecar = make_sidecar(config=default_config(url, model_groups={"g": group}, cache={"backend": "memory"}))
        with pytest.raises(openai.InternalServerError) as raised:
            sidecar.openai().chat.completions.create(model="g", messages=[{"role": "user", "content": "big"}])
        assert raised.value.status_code == 502
        assert f"larger than max_answer_bytes ({LIMIT} bytes)" in raised.value.message
        state = status_of(sidecar, "big")
        assert state["failures"] == state["attempts"] >= 1 and state["last_error"] == "UpstreamBroken"
        if chunked:
            # The sidecar hung up near the bound, not once the upstream had sent it all.
            assert wait_until(lambda: len(sent) == state["attempts"])
            assert max(sent) < 64 * LIMIT
        # The sidecar goes on serving, and stored nothing.
        answer = sidecar.openai().chat.completions.create(model="g", messages=USER)
        assert answer.choices[0].message.content == "hi"
        assert wait_until(lambda: sidecar.pipeline.cache.stats.stores == 1)  # stored after the answer went out
