"""``balance: latency`` against ``least_in_flight``: four replicas, one of them slow per token.

Each mode gets a fresh sidecar and the same streamed load, below the replicas' capacity
(where least-in-flight sees idle replicas as equals, and their time to first token is the
same); the slow replica's share of the calls and the calls' mean duration are the figures
quoted in docs/routing.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.router.helpers import config, endpoint
from tests.servers import MockProvider, Sidecar

CALLS = 150
CONCURRENCY = 6


def run(make_sidecar: Callable[..., Sidecar], mocks: list[MockProvider], balance: str) -> tuple[int, float]:
    """The slow replica's calls, and the calls' mean duration in seconds."""
    before = [m.calls("llama-3") for m in mocks]
    group = {
        "balance": balance,
        "endpoints": [endpoint(m, f"replica-{i}", model="llama-3") for i, m in enumerate(mocks)],
    }
    sidecar = make_sidecar(config=config(mocks[0], {"llama": group}))

    async def main() -> list[float | BaseException]:
        gate = asyncio.Semaphore(CONCURRENCY)
        async with sidecar.async_openai() as client:

            async def one(i: int) -> float:
                async with gate:
                    started = time.perf_counter()
                    stream = await client.chat.completions.create(
                        model="llama",
                        messages=[{"role": "user", "content": f"#{i}"}],
                        stream=True,
                        stream_options={"include_usage": True},  # the answer's token count
                    )
                    async for _ in stream:
                        pass
                    return time.perf_counter() - started

            return await asyncio.gather(*(one(i) for i in range(CALLS)), return_exceptions=True)

    results = asyncio.run(main())
    sidecar.stop()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    calls = [m.calls("llama-3") - b for m, b in zip(mocks, before, strict=True)]
    assert sum(calls) == CALLS
    durations = [r for r in results if isinstance(r, float)]
    return calls[0], sum(durations) / len(durations)


@pytest.mark.slow  # ~10 s, and timing-sensitive: it runs in the serial pass, not among parallel workers
def test_the_slow_replica_gets_less_under_latency_balance(
    make_sidecar: Callable[..., Sidecar], replicas: Callable[[int], list[MockProvider]]
) -> None:
    mocks = replicas(4)
    # The same time to first token everywhere; the first replica streams its tokens 15x slower.
    for i, mock in enumerate(mocks):
        mock.set_behaviour("llama-3", ttft_ms=50, chunks=8, chunk_delay_ms=150 if i == 0 else 10)
    least, least_mean = run(make_sidecar, mocks, "least_in_flight")
    latency, latency_mean = run(make_sidecar, mocks, "latency")
    print(
        f"\nslow replica's calls of {CALLS}: least_in_flight {least} (mean call {least_mean * 1000:.0f} ms), "
        f"latency {latency} (mean call {latency_mean * 1000:.0f} ms)"
    )
    assert latency < least
