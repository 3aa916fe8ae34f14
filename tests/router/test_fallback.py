"""Fallback, retries, cool-downs, balance and concurrency limits, against the mock provider."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import openai
import pytest

from tests.router.helpers import config, endpoint, gather
from tests.servers import MockProvider, RefusedPort
from tests.waiting import wait_until, wait_until_async

HELLO = [{"role": "user", "content": "hello"}]


def status_of(sidecar, name: str, group: str = "chat") -> dict:
    groups = httpx.get(sidecar.admin_url + "/status").json()["groups"]
    return next(e for e in groups[group]["endpoints"] if e["name"] == name)


def test_failing_endpoint_makes_no_failed_calls(make_sidecar, mock_provider: MockProvider) -> None:
    mock_provider.set_behaviour("mock-a", status=500)
    sidecar = make_sidecar(
        config(
            mock_provider,
            {"chat": {"endpoints": [endpoint(mock_provider, "mock-a"), endpoint(mock_provider, "mock-b")]}},
        )
    )
    client = sidecar.async_openai()
    results = gather(30, lambda i: client.chat.completions.create(model="chat", messages=HELLO), concurrency=8)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert mock_provider.calls("mock-b") == 30
    assert mock_provider.calls("mock-a") >= 1


def test_dead_endpoint_falls_back(make_sidecar, mock_provider: MockProvider, refused_port: RefusedPort) -> None:
    dead = refused_port.url
    sidecar = make_sidecar(
        config(
            mock_provider,
            {
                "chat": {
                    "endpoints": [endpoint(dead, "dead", priority=0), endpoint(mock_provider, "mock-b", priority=1)]
                }
            },
        )
    )
    reply = sidecar.openai().chat.completions.with_raw_response.create(model="chat", messages=HELLO)
    assert reply.parse().choices[0].message.content
    assert status_of(sidecar, "dead")["last_error"] == "UpstreamConnectError"


def test_4xx_is_not_retried(make_sidecar, mock_provider: MockProvider) -> None:
    mock_provider.set_behaviour("mock-a", status=400)
    sidecar = make_sidecar(
        config(
            mock_provider,
            {
                "chat": {
                    "endpoints": [
                        endpoint(mock_provider, "mock-a", priority=0),
                        endpoint(mock_provider, "mock-b", priority=1),
                    ]
                }
            },
        )
    )
    with pytest.raises(openai.BadRequestError):
        sidecar.openai().chat.completions.create(model="chat", messages=HELLO)
    assert (mock_provider.calls("mock-a"), mock_provider.calls("mock-b")) == (1, 0)
    assert status_of(sidecar, "mock-a")["circuit"] == "closed"


def test_retry_after_cools_the_endpoint(make_sidecar, mock_provider: MockProvider) -> None:
    mock_provider.set_behaviour("mock-a", status=429, retry_after=2)
    sidecar = make_sidecar(
        config(
            mock_provider,
            {
                "chat": {
                    "endpoints": [
                        endpoint(mock_provider, "mock-a", priority=0),
                        endpoint(mock_provider, "mock-b", priority=1),
                    ]
                }
            },
        )
    )
    client = sidecar.openai()
    asked_at = time.monotonic()
    client.chat.completions.create(model="chat", messages=HELLO)
    # The 2 s rest began while the call was answered: at most the time since it was sent has passed.
    rest = status_of(sidecar, "mock-a")["cooldown_for_s"]
    assert 2.0 - (time.monotonic() - asked_at) - 0.001 <= rest <= 2.0
    mock_provider.set_behaviour("mock-a")  # healthy again, but still resting
    client.chat.completions.create(model="chat", messages=HELLO)
    # Late in the rest (over a second of it gone) calls still go elsewhere...
    wait_until(lambda: status_of(sidecar, "mock-a")["cooldown_for_s"] < 1.0, what="the rest half over")
    client.chat.completions.create(model="chat", messages=HELLO)
    assert mock_provider.calls("mock-a") == 1
    # ...and once it is over, the endpoint takes calls again.
    wait_until(lambda: status_of(sidecar, "mock-a")["cooldown_for_s"] == 0, what="the rest to end")
    assert time.monotonic() - asked_at >= 2.0 - 0.001  # not before the 2 s the upstream asked for
    client.chat.completions.create(model="chat", messages=HELLO)
    assert mock_provider.calls("mock-a") == 2


def test_slow_endpoint_loses_traffic(make_sidecar, mock_provider: MockProvider) -> None:
    # Slow by far more than a loaded machine slows the fast one: least-in-flight keeps sending the
    # slow endpoint a call whenever the fast one has more in flight, so the share it gets grows
    # with the fast endpoint's latency; at 1.5 s against tens of ms the split is clear-cut.
    mock_provider.set_behaviour("mock-slow", latency_ms=1500)
    sidecar = make_sidecar(
        config(
            mock_provider,
            {"chat": {"endpoints": [endpoint(mock_provider, "mock-slow"), endpoint(mock_provider, "mock-fast")]}},
        )
    )
    client = sidecar.async_openai()
    results = gather(40, lambda i: client.chat.completions.create(model="chat", messages=HELLO), concurrency=4)
    assert not [r for r in results if isinstance(r, BaseException)]
    slow, fast = mock_provider.calls("mock-slow"), mock_provider.calls("mock-fast")
    assert fast > 4 * slow, (slow, fast)


def test_max_concurrent_is_never_exceeded(make_sidecar, mock_provider: MockProvider) -> None:
    mock_provider.set_behaviour("mock-a", latency_ms=150)
    sidecar = make_sidecar(
        config(
            mock_provider,
            {"chat": {"endpoints": [endpoint(mock_provider, "mock-a", max_concurrent=3)]}},
            queue_timeout=10,
        )
    )
    client = sidecar.async_openai()

    async def streamed(i: int) -> str:
        # Streams too: the slot is held until the last chunk is relayed.
        stream = await client.chat.completions.create(model="chat", messages=HELLO, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    results = gather(
        12, lambda i: streamed(i) if i % 2 else client.chat.completions.create(model="chat", messages=HELLO)
    )
    assert not [r for r in results if isinstance(r, BaseException)]
    assert mock_provider.stats()["max_in_flight"]["mock-a"] == 3
    assert mock_provider.calls("mock-a") == 12


def test_queue_timeout_is_429_with_retry_after(make_sidecar, mock_provider: MockProvider) -> None:
    mock_provider.set_behaviour("mock-a", latency_ms=1500)
    sidecar = make_sidecar(
        config(
            mock_provider,
            {"chat": {"endpoints": [endpoint(mock_provider, "mock-a", max_concurrent=1)]}},
            queue_timeout=0.3,
        )
    )

    async def post(i: int) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as http:
            return await http.post(sidecar.openai_base + "/chat/completions", json={"model": "chat", "messages": HELLO})

    first, second = gather(2, post)
    statuses = sorted([first.status_code, second.status_code])
    assert statuses == [200, 429]
    refused = first if first.status_code == 429 else second
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert mock_provider.calls("mock-a") == 1


def test_stream_cut_midway_is_not_retried(make_sidecar, mock_provider: MockProvider) -> None:
    mock_provider.set_behaviour("mock-a", cut_after=5, chunk_delay_ms=20)
    sidecar = make_sidecar(
        config(
            mock_provider,
            {
                "chat": {
                    "endpoints": [
                        endpoint(mock_provider, "mock-a", priority=0),
                        endpoint(mock_provider, "mock-b", priority=1),
                    ]
                }
            },
        )
    )
    stream = sidecar.openai().chat.completions.create(model="chat", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert (mock_provider.calls("mock-a"), mock_provider.calls("mock-b")) == (1, 0)
    assert status_of(sidecar, "mock-a")["failures"] == 1


def test_first_token_timeout_falls_back(make_sidecar, mock_provider: MockProvider) -> None:
    mock_provider.set_behaviour("mock-a", ttft_ms=5000)
    sidecar = make_sidecar(
        config(
            mock_provider,
            {
                "chat": {
                    "endpoints": [
                        endpoint(mock_provider, "mock-a", priority=0, timeouts={"first_byte": 0.3}),
                        endpoint(mock_provider, "mock-b", priority=1),
                    ]
                }
            },
        )
    )
    started = time.monotonic()
    stream = sidecar.openai().chat.completions.create(model="chat", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream)
    assert time.monotonic() - started < 3.0  # far sooner than mock-a's 5 s: it was given up at 0.3 s
    assert mock_provider.calls("mock-b") == 1


def test_a_client_gone_before_the_first_byte_ends_the_attempt_with_no_failure_and_no_fallback(
    make_sidecar, mock_provider: MockProvider
) -> None:
    """The client leaves while the sidecar still waits for the answer's head: the attempt ends at
    once (its slot freed long before its first-byte timeout), and a call nobody waits for any more
    is neither a failure of the endpoint nor tried again elsewhere."""
    mock_provider.set_behaviour("mock-a", latency_ms=60_000)
    sidecar = make_sidecar(
        config(
            mock_provider,
            {
                "chat": {
                    "endpoints": [
                        endpoint(mock_provider, "mock-a", priority=0, timeouts={"first_byte": 30.0}),
                        endpoint(mock_provider, "mock-b", priority=1),
                    ]
                }
            },
        )
    )
    body = b'{"model": "chat", "messages": [{"role": "user", "content": "x"}]}'
    with socket.create_connection(("127.0.0.1", sidecar.servers.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        wait_until(lambda: mock_provider.stats()["in_flight"].get("mock-a"), what="the attempt reached mock-a")
    wait_until(lambda: status_of(sidecar, "mock-a")["in_flight"] == 0, what="the attempt ended with its client")
    a = status_of(sidecar, "mock-a")
    assert (a["failures"], a["last_error"]) == (0, None)
    assert mock_provider.calls("mock-b") == 0


def test_preference_header_and_default(make_sidecar, mock_provider: MockProvider) -> None:
    sidecar = make_sidecar(
        config(
            mock_provider,
            {
                "chat": {
                    "prefer": "mock-b",
                    "endpoints": [endpoint(mock_provider, "mock-a"), endpoint(mock_provider, "mock-b")],
                }
            },
        )
    )
    client = sidecar.openai()
    for _ in range(3):
        client.chat.completions.create(model="chat", messages=HELLO)
    assert (mock_provider.calls("mock-a"), mock_provider.calls("mock-b")) == (0, 3)
    client.chat.completions.create(model="chat", messages=HELLO, extra_headers={"x-llm-sidecar-prefer": "mock-a"})
    assert mock_provider.calls("mock-a") == 1
    # The control header is for the sidecar only.
    assert "x-llm-sidecar-prefer" not in mock_provider.requests()[-1]["headers"]


def test_bounded_attempts(make_sidecar, mock_provider: MockProvider) -> None:
    mock_provider.set_behaviour("mock-a", status=503)
    sidecar = make_sidecar(
        config(mock_provider, {"chat": {"endpoints": [endpoint(mock_provider, "mock-a")]}}, max_attempts=3)
    )
    with pytest.raises(openai.InternalServerError) as info:
        sidecar.openai().chat.completions.create(model="chat", messages=HELLO)
    assert info.value.status_code == 503
    assert mock_provider.calls("mock-a") == 3


def test_queued_call_that_leaves_gives_up_its_place(make_sidecar, mock_provider: MockProvider) -> None:
    # One slot: a slow call holds it, a second call queues and its client leaves. The slot then
    # goes to the next call (not to the one gone), and nothing stays held or queued.
    mock_provider.set_behaviour("mock-a", latency_ms=800)
    sidecar = make_sidecar(
        config(
            mock_provider,
            {"chat": {"endpoints": [endpoint(mock_provider, "mock-a", max_concurrent=1)]}},
            queue_timeout=10,
        )
    )
    url = sidecar.openai_base + "/chat/completions"

    async def main() -> tuple[int, int]:
        async with httpx.AsyncClient(timeout=10) as http:
            post = lambda: http.post(url, json={"model": "chat", "messages": HELLO})  # noqa: E731
            holder = asyncio.ensure_future(post())
            await wait_until_async(lambda: asyncio.to_thread(lambda: status_of(sidecar, "mock-a")["in_flight"] == 1))
            leaver = asyncio.ensure_future(post())
            await wait_until_async(lambda: asyncio.to_thread(lambda: status_of(sidecar, "mock-a")["queued"] == 1))
            leaver.cancel()  # the client goes away while its call waits for the slot
            await wait_until_async(lambda: asyncio.to_thread(lambda: status_of(sidecar, "mock-a")["queued"] == 0))
            after = await post()
            return (await holder).status_code, after.status_code

    assert asyncio.run(main()) == (200, 200)
    assert mock_provider.calls("mock-a") == 2  # the call that left never reached the provider
    state = status_of(sidecar, "mock-a")
    assert (state["in_flight"], state["queued"]) == (0, 0)
