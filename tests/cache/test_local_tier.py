"""The in-process tier in front of Redis (``local_ttl``), against a real redis-server."""

from __future__ import annotations

import subprocess
import time

import httpx

from tests.cache.conftest import redis_cache, stored
from tests.servers import RedisServer


def _post(base: str, content: str = "local", headers: dict | None = None) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    return httpx.post(base + "/chat/completions", json=payload, headers=headers or {}, timeout=10)


def _status(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-llm-sidecar-cache"]


def _snapshot(sidecar) -> dict:
    return sidecar.pipeline.cache.snapshot()


def _redis_gets(port: int) -> int:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "commandstats"], capture_output=True, text=True, timeout=5
    ).stdout
    for line in out.splitlines():
        if line.startswith("cmdstat_get:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def test_hit_is_served_locally_after_a_redis_hit(cached_sidecar, mock_provider, redis) -> None:
    writer = cached_sidecar(cache=redis_cache(redis.url))
    reader = cached_sidecar(cache=redis_cache(redis.url))
    first = _post(writer.openai_base)
    assert _status(first) == "miss"
    stored(writer)
    gets = _redis_gets(redis.port)
    assert _status(_post(reader.openai_base)) == "hit"  # from Redis: one GET
    assert _redis_gets(redis.port) == gets + 1 and _snapshot(reader)["local_hits"] == 0
    for _ in range(3):
        again = _post(reader.openai_base)
        assert _status(again) == "hit" and again.json() == first.json()
    assert _redis_gets(redis.port) == gets + 1  # no round trip for the local hits
    snapshot = _snapshot(reader)
    assert snapshot["hits"] == 4 and snapshot["local_hits"] == 3 and snapshot["entries"] == 1
    metrics = httpx.get(reader.admin_url + "/metrics", timeout=5).text
    assert "llm_sidecar_cache_local_hits_total 3.0" in metrics
    # The writer kept what it stored: its own hit is local too.
    assert _status(_post(writer.openai_base)) == "hit" and _snapshot(writer)["local_hits"] == 1
    assert mock_provider.calls() == 1


def test_local_copy_never_outlives_the_entry(cached_sidecar, mock_provider, redis, clock) -> None:
    sidecar = cached_sidecar(cache=redis_cache(redis.url, local_ttl=30), clock=clock)
    assert _status(_post(sidecar.openai_base, headers={"x-llm-sidecar-cache-ttl": "1"})) == "miss"
    stored(sidecar)
    assert _status(_post(sidecar.openai_base)) == "hit"
    clock.advance(1.1)
    assert _status(_post(sidecar.openai_base)) == "miss"  # expired, though local_ttl is 30 s
    assert mock_provider.calls() == 2


def test_no_cache_and_max_age_with_the_local_tier(cached_sidecar, mock_provider, redis, clock) -> None:
    sidecar = cached_sidecar(cache=redis_cache(redis.url, local_ttl=30), clock=clock)
    first = _post(sidecar.openai_base)
    stored(sidecar)
    assert _status(_post(sidecar.openai_base)) == "hit" and _snapshot(sidecar)["local_hits"] == 1
    # no-cache skips both tiers and stores the fresh answer in both.
    fresh = _post(sidecar.openai_base, headers={"Cache-Control": "no-cache"})
    assert _status(fresh) == "bypass" and fresh.json()["id"] != first.json()["id"]
    stored(sidecar, 2)
    again = _post(sidecar.openai_base)
    assert _status(again) == "hit" and again.json()["id"] == fresh.json()["id"]
    clock.advance(1.1)
    # max-age: the local copy (and Redis's) is too old, so the call goes upstream.
    assert _status(_post(sidecar.openai_base, headers={"Cache-Control": "max-age=0"})) == "miss"
    assert mock_provider.calls() == 3


def test_refresh_in_another_pod_is_seen_within_local_ttl(cached_sidecar, mock_provider, redis, clock) -> None:
    one = cached_sidecar(cache=redis_cache(redis.url, local_ttl=0.5), clock=clock)
    two = cached_sidecar(cache=redis_cache(redis.url, local_ttl=0.5), clock=clock)
    original = _post(one.openai_base)
    stored(one)
    assert _post(two.openai_base).json()["id"] == original.json()["id"]  # two keeps a local copy
    refreshed = _post(one.openai_base, headers={"Cache-Control": "no-cache"})
    stored(one, 2)
    assert _post(two.openai_base).json()["id"] == original.json()["id"]  # the documented lag…
    clock.advance(0.6)
    assert _post(two.openai_base).json()["id"] == refreshed.json()["id"]  # …bounded by local_ttl


def test_redis_dead_local_hits_served_misses_fail_open(cached_sidecar, mock_provider) -> None:
    server = RedisServer()
    try:
        # Redis's own timeout made long: a call that waited on it would take 5 s or more, one
        # that did not takes a small part of that even on a loaded machine.
        timeout = 5.0
        sidecar = cached_sidecar(cache=redis_cache(server.url, local_ttl=30, operation_timeout=timeout))
        assert _status(_post(sidecar.openai_base, "kept")) == "miss"
        stored(sidecar)
        server.kill()
        for index in range(10):
            for content, status in (("kept", "hit"), (f"new {index}", "miss")):
                started = time.perf_counter()
                assert _status(_post(sidecar.openai_base, content)) == status
                assert time.perf_counter() - started < timeout
        snapshot = _snapshot(sidecar)
        assert snapshot["local_hits"] == 10 and snapshot["errors"] > 0
        assert mock_provider.calls() == 11
    finally:
        server.kill()


def test_local_tier_off(cached_sidecar, mock_provider, redis) -> None:
    sidecar = cached_sidecar(cache=redis_cache(redis.url, local_ttl=0))
    _post(sidecar.openai_base)
    stored(sidecar)
    gets = _redis_gets(redis.port)
    for _ in range(3):
        assert _status(_post(sidecar.openai_base)) == "hit"
    assert _redis_gets(redis.port) == gets + 3
    assert _snapshot(sidecar)["local_hits"] == 0 and _snapshot(sidecar)["entries"] is None
