"""The Redis backend behind Sentinel, against a real deployment: a master, a replica, three Sentinels.

The deployment (``redis_sentinel`` in conftest.py) is shared by the session; the failover
test kills the master and the fixture restores a healthy master and replica before each test.
"""

from __future__ import annotations

import time

import httpx
import redis

from proxy import DistributedCacheDecorator
from proxy.cache.config import CacheConfig
from proxy.cache.redis import RedisBackend, SyncRedisBackend
from tests.cache.conftest import NotSettled, RedisSentinel
from tests.waiting import wait_until


def _post(base: str, content: str) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    response = httpx.post(base + "/chat/completions", json=payload, timeout=10)
    assert response.status_code == 200, response.text
    return response


def _keys(port: int, db: int = 0) -> int:
    with redis.Redis(port=port, db=db, socket_timeout=2) as client:
        return client.dbsize()


def test_sentinel_stores_and_serves_hits(cached_sidecar, mock_provider, redis_sentinel: RedisSentinel) -> None:
    # The in-process tier off: a hit is a GET on the master the Sentinels named.
    sidecar = cached_sidecar(cache=redis_sentinel.cache(local_ttl=0))
    first = _post(sidecar.openai_base, "sentinel")
    assert first.headers["x-llm-sidecar-cache"] == "miss"
    wait_until(
        lambda: _keys(redis_sentinel.master().port) == 1, 5, interval=0.05, what="the entry never reached the master"
    )
    hit = _post(sidecar.openai_base, "sentinel")
    assert hit.headers["x-llm-sidecar-cache"] == "hit" and hit.json() == first.json()
    assert mock_provider.calls() == 1
    snapshot = sidecar.pipeline.cache.snapshot()
    assert snapshot["local_hits"] == 0 and snapshot["errors"] == 0 and snapshot["available"]
    # Written to the master, replicated to the replica.
    replica = next(port for port in redis_sentinel.servers if port != redis_sentinel.master_port())
    wait_until(lambda: _keys(replica) == 1, 5, interval=0.05, what="the entry never reached the replica")


def test_sentinel_failover_fails_open_then_hits_come_back(
    cached_sidecar, mock_provider, redis_sentinel: RedisSentinel
) -> None:
    sidecar = cached_sidecar(cache=redis_sentinel.cache(local_ttl=0))
    assert _post(sidecar.openai_base, "before").headers["x-llm-sidecar-cache"] == "miss"
    wait_until(
        lambda: _post(sidecar.openai_base, "before").headers["x-llm-sidecar-cache"] == "hit",
        5,
        interval=0.05,
        what="no hit before the failover",
    )
    old = redis_sentinel.master()
    old.kill()

    def promoted() -> bool:
        try:
            return redis_sentinel.master_port() != old.port
        except NotSettled:
            return False

    # Calls keep answering (``_post`` asserts 200) while the master is gone and Sentinel fails over.
    calls = 0
    deadline = time.monotonic() + 15
    while not promoted():
        assert time.monotonic() < deadline, "Sentinel did not promote the replica"
        _post(sidecar.openai_base, f"during {calls % 3}")
        calls += 1
    assert calls > 0
    new = redis_sentinel.master()
    assert new is not old
    # A new question is stored on the new master and answered from it...
    wait_until(
        lambda: _post(sidecar.openai_base, "after").headers["x-llm-sidecar-cache"] == "hit",
        10,
        interval=0.05,
        what="no hit through the promoted master",
    )
    assert _keys(new.port) >= 2
    # ...and the entry stored before the failover survived on the promoted replica.
    assert _post(sidecar.openai_base, "before").headers["x-llm-sidecar-cache"] == "hit"
    snapshot = sidecar.pipeline.cache.snapshot()
    assert snapshot["errors"] > 0 and snapshot["available"]


def _sentinel_config(deployment: RedisSentinel, **extra) -> CacheConfig:
    return CacheConfig(
        backend="redis",
        redis_mode="sentinel",
        redis_sentinels=deployment.addresses,
        redis_service_name=deployment.service_name,
        operation_timeout=0.5,
        **extra,
    )


def test_decorator_with_sentinel_backends(redis_sentinel: RedisSentinel) -> None:
    backend = SyncRedisBackend.from_config(_sentinel_config(redis_sentinel))
    calls: list[str] = []

    @DistributedCacheDecorator(ttl=60, cache_backend=backend)
    def answer(prompt: str) -> dict:
        calls.append(prompt)
        return {"answer": prompt.upper()}

    try:
        assert answer("hi") == answer(prompt="hi") == {"answer": "HI"}
        assert calls == ["hi"] and answer.stats.hits == 1 and backend.errors == 0
        assert _keys(redis_sentinel.master().port) == 1
    finally:
        backend.close()


async def test_async_decorator_with_sentinel_backend_and_db(redis_sentinel: RedisSentinel) -> None:
    # ``redis_url`` gives only the db (and a password) in Sentinel mode: db 3 here.
    backend = RedisBackend.from_config(_sentinel_config(redis_sentinel, redis_url="redis://ignored/3"))
    assert backend.gets is None  # the pipelined road is for a single server only
    calls: list[str] = []

    @DistributedCacheDecorator(ttl=60, cache_backend=backend)
    async def embed(text: str) -> list[float]:
        calls.append(text)
        return [float(len(text))]

    try:
        assert await embed("abc") == await embed("abc") == [3.0]
        assert calls == ["abc"] and embed.stats.hits == 1 and backend.errors == 0
        master = redis_sentinel.master().port
        assert (_keys(master, db=0), _keys(master, db=3)) == (0, 1)
    finally:
        await backend.close()
