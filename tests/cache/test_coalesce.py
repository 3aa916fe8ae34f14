"""Identical calls in flight are answered once; followers stream the leader's frames as they arrive."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.waiting import wait_until_async

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "the same question"}]}


async def _burst(url: str, count: int, body: dict, stream: bool = False, headers: dict | None = None):
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=count)) as client:

        async def one() -> tuple[int, str, bytes, float]:
            """Status, cache status, body, and how long before the end the first byte came."""
            async with client.stream(
                "POST", url + "/chat/completions", json={**body, "stream": stream}, headers=headers
            ) as response:
                first = None
                data = b""
                async for chunk in response.aiter_bytes():
                    first = first or time.perf_counter()
                    data += chunk
                ahead = time.perf_counter() - first if first is not None else 0.0
                return response.status_code, response.headers.get("x-llm-sidecar-cache", ""), data, ahead

        return await asyncio.gather(*(one() for _ in range(count)))


async def test_fifty_identical_calls_make_one_upstream_call(cached_sidecar, mock_provider) -> None:
    mock_provider.set_behaviour("mock-gpt", latency_ms=300)
    sidecar = cached_sidecar()
    results = await _burst(sidecar.openai_base, 50, BODY)
    assert all(status == 200 for status, *_ in results)
    assert mock_provider.calls() == 1
    statuses = sorted(cache for _, cache, *_ in results)
    assert statuses.count("miss") == 1 and statuses.count("coalesced") == 49
    assert len({data for *_, data, _ in results}) == 1


async def test_streaming_followers_get_frames_as_the_leader_does(cached_sidecar, mock_provider) -> None:
    # 200 ms to the first token, then 10 chunks 50 ms apart: about 650 ms in all.
    mock_provider.set_behaviour("mock-gpt", ttft_ms=200, chunk_delay_ms=50, chunks=10)
    sidecar = cached_sidecar()
    results = await _burst(sidecar.openai_base, 20, BODY, stream=True)
    assert mock_provider.calls() == 1
    followers = [r for r in results if r[1] == "coalesced"]
    assert len(followers) == 19
    # Fan-out: a follower's first byte comes with the leader's first token, long before the end
    # (the 10 chunks take 450 ms; a follower answered only at the end would get its first byte then).
    # Measured from the follower's own first byte, so a loaded machine's slow start cannot fail it.
    assert min(ahead for *_, ahead in followers) > 0.3, [round(a, 3) for *_, a in followers]
    assert len({data for *_, data, _ in results}) == 1
    assert results[0][2].endswith(b"data: [DONE]\n\n")


async def test_a_failed_leader_does_not_fail_its_followers(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar()
    # The leader (first in) fails by its own header; followers must still get answers.
    async with httpx.AsyncClient(timeout=30) as client:
        leader = asyncio.create_task(
            client.post(
                sidecar.openai_base + "/chat/completions",
                json=BODY,
                headers={"x-mock-latency-ms": "300", "x-mock-status": "500"},
            )
        )
        flights = sidecar.pipeline.cache.flights
        await wait_until_async(lambda: flights, what="the leader's call in flight")
        followers = await asyncio.gather(
            *(client.post(sidecar.openai_base + "/chat/completions", json=BODY) for _ in range(5))
        )
        assert (await leader).status_code == 500
    assert [r.status_code for r in followers] == [200] * 5
    # One new leader among the followers, the rest follow it (the router may retry the failing leader).
    assert sum("x-mock-status" not in r["headers"] for r in mock_provider.requests()) == 1
    assert sorted(r.headers["x-llm-sidecar-cache"] for r in followers) == ["coalesced"] * 4 + ["miss"]


async def test_a_rejected_request_is_shared_not_repeated(cached_sidecar, mock_provider) -> None:
    mock_provider.set_behaviour("mock-gpt", latency_ms=300, status=400)
    sidecar = cached_sidecar()
    results = await _burst(sidecar.openai_base, 10, BODY)
    assert {status for status, *_ in results} == {400}
    assert mock_provider.calls() == 1


async def test_leader_cut_mid_stream_ends_followers_streams_with_an_error(cached_sidecar, mock_provider) -> None:
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=60, chunks=10, cut_after=4)
    sidecar = cached_sidecar()
    results = await _burst(sidecar.openai_base, 5, BODY, stream=True)
    assert mock_provider.calls() == 1
    for _, _, data, _ in results:
        assert b'"error"' in data  # the OpenAI SDK raises on it, as for the leader


@pytest.mark.parametrize(
    ("model", "base", "path", "body", "event"),
    [
        ("mock-gpt", "openai_base", "/chat/completions", {**BODY, "stream": True}, b'data: {"error"'),
        (
            "mock-claude",
            "anthropic_base",
            "/v1/messages",
            {
                "model": "claude-sonnet",
                "max_tokens": 100,
                "stream": True,
                "messages": [{"role": "user", "content": "the same question"}],
            },
            b"event: error",
        ),
    ],
)
async def test_the_upstreams_error_event_ends_every_coalesced_stream_once(
    cached_sidecar, mock_provider, model, base, path, body, event
) -> None:
    # The provider answers, then sends its own error event (overloaded) in place of frame 4.
    mock_provider.set_behaviour(model, ttft_ms=1000, chunk_delay_ms=50, error_after=4)
    sidecar = cached_sidecar()
    url = getattr(sidecar, base) + path
    async with httpx.AsyncClient(timeout=30) as client:

        async def one() -> tuple[str, bytes]:
            async with client.stream("POST", url, json=body) as response:
                return response.headers.get("x-llm-sidecar-cache", ""), await response.aread()

        leader = asyncio.create_task(one())
        await wait_until_async(lambda: sidecar.pipeline.cache.flights, what="the leader's call in flight")
        results = await asyncio.gather(leader, *(one() for _ in range(4)))
    assert mock_provider.calls() == 1
    assert sorted(status for status, _ in results) == ["coalesced"] * 4 + ["miss"]
    for _, data in results:
        # The upstream's own error event, and no second one of the sidecar's after it.
        assert b"mock overloaded mid-stream" in data and data.count(event) == 1, data


async def test_a_leader_whose_client_hangs_up_still_answers_its_followers(cached_sidecar, mock_provider) -> None:
    # 20 chunks 50 ms apart: the leader's client leaves after the first, once a follower is in.
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=50, chunks=20)
    sidecar = cached_sidecar()
    cache = sidecar.pipeline.cache
    url = sidecar.openai_base + "/chat/completions"
    body = {**BODY, "stream": True}
    async with httpx.AsyncClient(timeout=30) as leader_client, httpx.AsyncClient(timeout=30) as client:

        async def leader() -> str:
            async with leader_client.stream("POST", url, json=body) as response:
                async for _ in response.aiter_bytes():
                    await wait_until_async(
                        lambda: any(f.followers for f in cache.flights.values()),
                        what="a follower on the leader's stream",
                    )
                    return response.headers["x-llm-sidecar-cache"]  # leaves mid-stream
            raise AssertionError("the stream ended before the follower came")

        async def follower() -> tuple[str, bytes]:
            await wait_until_async(lambda: cache.flights, what="the leader's call in flight")
            async with client.stream("POST", url, json=body) as response:
                return response.headers["x-llm-sidecar-cache"], await response.aread()

        left, (status, data) = await asyncio.gather(leader(), follower())
        assert (left, status) == ("miss", "coalesced")
        # The follower got the whole answer, not an error event, and it was stored.
        assert data.endswith(b"data: [DONE]\n\n") and b'"error"' not in data
        stored_one = await client.post(url, json=body)
        assert stored_one.headers["x-llm-sidecar-cache"] == "hit"
    assert mock_provider.calls() == 1


@pytest.mark.parametrize("header", ["no-store", "no-cache"])
async def test_no_store_and_no_cache_calls_do_not_coalesce(cached_sidecar, mock_provider, header) -> None:
    mock_provider.set_behaviour("mock-gpt", latency_ms=200)
    sidecar = cached_sidecar()
    await _burst(sidecar.openai_base, 4, BODY, headers={"Cache-Control": header})
    assert mock_provider.calls() == 4


async def test_a_stream_too_large_to_store_is_not_held_whole_for_late_followers(
    cached_sidecar, mock_provider, server_loop
) -> None:
    # A stream over max_entry_bytes (never stored) was still kept whole by its flight for followers that
    # might join late, and joined at its end: ~2x its size, with no bound but the total timeout.
    limit = 2000
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=20, chunks=80)  # ~14 KB of frames
    sidecar = cached_sidecar(max_entry_bytes=limit)
    flights = sidecar.pipeline.cache.flights
    burst = asyncio.create_task(_burst(sidecar.openai_base, 2, BODY, stream=True))  # a leader and a follower

    def runs(flight) -> int:
        return flight.base + len(flight.frames)

    held = []

    async def sample(flight) -> None:
        """What the flight holds each time the leader publishes, before the follower takes it."""
        while not flight.done:
            held.append(flight.held)
            await flight.changed(runs(flight))

    await wait_until_async(lambda: flights, what="the leader's flight")
    (flight,) = flights.values()
    # (on the servers' loop, where the flight's wake-ups happen)
    sampler = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(sample(flight), server_loop.loop))
    # Past the bound (~20 frames of ~150 bytes), a new identical call no longer joins: it goes upstream.
    await wait_until_async(lambda: runs(flight) >= 25, what="the stream past the bound")
    (late,) = await _burst(sidecar.openai_base, 1, BODY, stream=True)
    (leader, follower), _ = await asyncio.gather(burst, sampler)
    assert leader[0] == follower[0] == late[0] == 200
    assert sorted([leader[1], follower[1]]) == ["coalesced", "miss"] and late[1] == "miss"
    # The follower attached before got every frame, and its stream ended cleanly.
    assert follower[2] == leader[2] and leader[2].endswith(b"data: [DONE]\n\n") and len(leader[2]) > 5 * limit
    assert late[2].endswith(b"data: [DONE]\n\n")
    assert mock_provider.calls() == 2
    # What the flight held stayed near the bound (a run or two the follower had not taken yet).
    assert max(held) <= limit, max(held)
    assert sidecar.pipeline.cache.stats.stores == 0
