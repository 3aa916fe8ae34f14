"""Fleet-wide concurrency: several ``llm-sidecar serve`` processes on one real redis-server share
``fleet.max_concurrent``, fairly; a killed sidecar's leases lapse; Redis may die and come back."""

from __future__ import annotations

import asyncio
import time

from tests.fleet.conftest import closed_loop, fleet_config, jain
from tests.telemetry.conftest import Scrape
from tests.waiting import wait_until


def _gauge(metrics: str, name: str) -> float:
    scrape = Scrape(metrics)
    assert name in scrape.names(), f"{name} not in /metrics"
    return scrape.value(name)


async def test_four_sidecars_never_exceed_the_fleet_limit_and_share_it_fairly(
    mock_provider, redis, sidecar_processes
) -> None:
    mock_provider.set_behaviour("mock-gpt", latency_ms=50)
    config = fleet_config(mock_provider.url, redis.url, {"max_concurrent": 8}, queue_timeout=30)
    sidecars = sidecar_processes(config, 4)

    # Six callers per sidecar: 24 want what 8 may have (about 150 calls each on a quiet machine).
    load = await closed_loop([s.url for s in sidecars], workers=6, seconds=4)

    assert load.failed() == 0, load.statuses
    assert mock_provider.stats()["max_in_flight"]["mock-gpt"] == 8  # used to the full, never past it
    shares = [load.ok(i) for i in range(4)]
    print(f"calls per sidecar {shares}; Jain's index {jain(shares):.4f}")
    assert max(shares) <= 1.2 * min(shares), shares
    assert jain(shares) > 0.98


async def test_a_killed_sidecar_frees_its_leases_within_the_lease_ttl(mock_provider, redis, sidecar_processes) -> None:
    mock_provider.set_behaviour("mock-gpt", latency_ms=20_000)  # the victim's calls hold their leases
    lease_ttl = 1.5
    config = fleet_config(
        mock_provider.url, redis.url, {"max_concurrent": 3}, queue_timeout=0.2, fleet={"lease_ttl": lease_ttl}
    )
    victim, survivor = sidecar_processes(config, 2)
    stop = asyncio.Event()
    holding = asyncio.create_task(closed_loop([victim.url], workers=3, seconds=60, stop=stop))
    await asyncio.to_thread(wait_until, lambda: mock_provider.stats()["in_flight"].get("mock-gpt") == 3)
    mock_provider.set_behaviour("mock-gpt", latency_ms=0)
    refused = await closed_loop([survivor.url], workers=1, seconds=0.5)
    assert refused.ok(0) == 0 and refused.statuses[0][429] >= 1  # the fleet's budget is all the victim's

    victim.kill()
    killed_at = time.monotonic()
    stop.set()

    def served() -> bool:
        return asyncio.run(closed_loop([survivor.url], workers=1, seconds=0.01)).ok(0) > 0

    await asyncio.to_thread(wait_until, served, what="a call through the survivor")
    freed_after = time.monotonic() - killed_at
    print(f"leases freed {freed_after:.2f} s after SIGKILL (lease TTL {lease_ttl} s)")
    assert freed_after <= lease_ttl + 0.5
    assert _gauge(survivor.metrics(), "llm_sidecar_fleet_lease_expiries_total") == 3
    holding.cancel()


async def test_redis_killed_and_restarted_no_call_fails_and_the_limit_returns(
    mock_provider, redis, sidecar_processes
) -> None:
    mock_provider.set_behaviour("mock-gpt", latency_ms=50)
    config = fleet_config(mock_provider.url, redis.url, {"max_concurrent": 4}, queue_timeout=30)
    sidecars = sidecar_processes(config, 2)
    urls = [s.url for s in sidecars]
    await asyncio.to_thread(
        wait_until, lambda: all(s.status()["fleet"]["live_sidecars"] == 2 for s in sidecars), what="both sidecars seen"
    )
    stop = asyncio.Event()
    running = asyncio.create_task(closed_loop(urls, workers=4, seconds=60, stop=stop))
    await asyncio.to_thread(wait_until, lambda: mock_provider.calls() >= 20)

    redis.kill()
    for sidecar in sidecars:
        await asyncio.to_thread(
            wait_until, lambda s=sidecar: _gauge(s.metrics(), "llm_sidecar_fleet_fail_open") == 1, what="fail-open"
        )
    await asyncio.to_thread(wait_until, lambda: mock_provider.calls() >= 40, what="calls without Redis")
    # The local share: 4 over the 2 live sidecars (calls granted before Redis died count in it).
    assert mock_provider.stats()["max_in_flight"]["mock-gpt"] <= 4

    redis.start()
    for sidecar in sidecars:
        await asyncio.to_thread(
            wait_until, lambda s=sidecar: _gauge(s.metrics(), "llm_sidecar_fleet_fail_open") == 0, what="fleet-wide"
        )
    mock_provider.reset()
    await asyncio.to_thread(wait_until, lambda: mock_provider.calls() >= 40, what="calls with Redis back")
    stop.set()
    load = await running

    assert load.failed() == 0, load.statuses
    assert mock_provider.stats()["max_in_flight"]["mock-gpt"] <= 4
    for sidecar in sidecars:
        changes = [e["msg"] for e in sidecar.events() if e.get("msg", "").startswith("fleet limits:")]
        assert changes == [
            "fleet limits: Redis unavailable, each budget falls back to its local share",
            "fleet limits: Redis available again, budgets are fleet-wide",
        ]
