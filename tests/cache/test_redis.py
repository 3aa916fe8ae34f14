"""The Redis backend against real servers: single, Cluster, failures, several sidecar processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson

from tests.cache.conftest import cache_config, redis_cache, settled, stored
from tests.servers import RedisServer, SidecarProcess
from tests.waiting import wait_until, wait_until_async

ROOT = Path(__file__).resolve().parents[2]


def _post(base: str, content: str = "redis", headers: dict | None = None, **body) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **body}
    return httpx.post(base + "/chat/completions", json=payload, headers=headers or {}, timeout=10)


def test_two_sidecars_share_entries_through_redis(cached_sidecar, mock_provider, redis) -> None:
    one, two = cached_sidecar(cache=redis_cache(redis.url)), cached_sidecar(cache=redis_cache(redis.url))
    first = _post(one.openai_base)
    assert first.headers["x-llm-sidecar-cache"] == "miss"
    stored(one)
    hit = _post(two.openai_base)
    assert hit.headers["x-llm-sidecar-cache"] == "hit" and hit.json() == first.json()
    # A streamed call on the other sidecar is served from the same JSON entry.
    with httpx.stream(
        "POST",
        one.openai_base + "/chat/completions",
        timeout=10,
        json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "redis"}]},
    ) as response:
        assert response.headers["x-llm-sidecar-cache"] == "hit"
        assert response.read().endswith(b"data: [DONE]\n\n")
    assert mock_provider.calls() == 1


def test_tenants_are_isolated_in_redis(cached_sidecar, mock_provider, redis) -> None:
    sidecar = cached_sidecar(cache=redis_cache(redis.url), pass_through=True)
    statuses = []
    for index, key in enumerate(("sk-a", "sk-b", "sk-a", "sk-b")):
        statuses.append(
            _post(sidecar.openai_base, headers={"Authorization": f"Bearer {key}"}).headers["x-llm-sidecar-cache"]
        )
        stored(sidecar, min(index + 1, 2))
    assert statuses == ["miss", "miss", "hit", "hit"]
    keys = subprocess.run(["redis-cli", "-p", str(redis.port), "--scan"], capture_output=True, text=True).stdout
    assert "sk-a" not in keys and "sk-b" not in keys and len(keys.split()) == 2


def test_streaming_hit_from_redis_matches_frame_by_frame(cached_sidecar, mock_provider, redis) -> None:
    sidecar = cached_sidecar(cache=redis_cache(redis.url, compress_threshold=256))
    body = {
        "model": "claude-sonnet",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "frames from redis"}],
    }

    def frames() -> list[bytes]:
        with httpx.stream("POST", sidecar.anthropic_base + "/v1/messages", json=body, timeout=10) as response:
            return [f for f in response.read().split(b"\n\n") if f]

    original = frames()
    stored(sidecar)
    assert frames() == original
    assert mock_provider.calls() == 1


def test_redis_cluster(cached_sidecar, mock_provider, redis_cluster) -> None:
    sidecar = cached_sidecar(cache=redis_cache(redis_cluster.url, redis_mode="cluster"))
    for index in range(12):
        assert _post(sidecar.openai_base, f"cluster {index}").headers["x-llm-sidecar-cache"] == "miss"
    stored(sidecar, 12)
    for index in range(12):
        assert _post(sidecar.openai_base, f"cluster {index}").headers["x-llm-sidecar-cache"] == "hit"
    assert mock_provider.calls() == 12
    per_node = redis_cluster.keys_per_node()
    assert sum(per_node) >= 12 and sum(1 for n in per_node if n) >= 2  # spread over the masters


def test_redis_killed_mid_load_and_restarted(cached_sidecar, mock_provider) -> None:
    server = RedisServer()
    try:
        # The in-process tier off: every lookup goes to Redis (test_local_tier.py covers it with Redis dead).
        sidecar = cached_sidecar(cache=redis_cache(server.url, local_ttl=0))
        failures: list[str] = []
        statuses: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=10) as client:
                index = 0
                while not stop.is_set():
                    index += 1
                    response = client.post(
                        sidecar.openai_base + "/chat/completions",
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{index % 5}"}]},
                    )
                    if response.status_code != 200:
                        failures.append(response.text)
                    statuses.append(response.headers.get("x-llm-sidecar-cache", "?"))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        cache = sidecar.pipeline.cache
        wait_until(lambda: statuses.count("hit") >= 10, what="hits before the kill")
        server.kill()
        wait_until(lambda: not cache.snapshot()["available"], what="the circuit to open")
        killed = len(statuses)
        wait_until(lambda: len(statuses) >= killed + 20, what="calls answered with Redis dead")
        during = len(statuses)
        server.start()
        # Breaker cooldown 0.3 s: the background probe closes the circuit, the empty Redis fills again.
        wait_until(lambda: cache.snapshot()["available"], what="the circuit to close")
        restarted = len(statuses)
        wait_until(
            lambda: len(statuses) >= restarted + 20 and statuses[-20:].count("hit") >= 10,
            what="hits again after the restart",
        )
        stop.set()
        for thread in threads:
            thread.join(10)
        assert not failures
        assert len(statuses) > during > 10
        # The cache came back: the restarted (empty) Redis is filled again and answers hits.
        assert statuses[-20:].count("hit") >= 10, statuses[-20:]
        snapshot = sidecar.pipeline.cache.snapshot()
        assert snapshot["errors"] > 0 and snapshot["available"]
    finally:
        server.kill()


def test_dead_redis_at_start_fails_open_fast(cached_sidecar, mock_provider, refused_port) -> None:
    # Measured against Redis's own timeout, made long, rather than the wall clock: a call that
    # waited on it takes 5 s or more, one that did not takes a small part of that even on a loaded machine.
    timeout = 5.0
    sidecar = cached_sidecar(
        cache=redis_cache(
            f"redis://127.0.0.1:{refused_port.port}/0", local_ttl=0, operation_timeout=timeout, breaker_failures=3
        )
    )
    backend = sidecar.pipeline.cache.backend
    for _ in range(10):
        started = time.perf_counter()
        assert _post(sidecar.openai_base).status_code == 200
        assert time.perf_counter() - started < timeout
        settled(sidecar)  # its background store done too: the operations below are counted in order
    assert mock_provider.calls() == 10
    # What happened: three refused operations opened the circuit, and from then on the calls'
    # lookups and stores were answered without touching the network.
    assert backend.errors == 3 and not backend.available
    assert backend.skipped >= 9 * 2  # at least a lookup and a store for each of the last nine calls


def test_a_redis_that_stops_answering_costs_a_lookup_its_operation_timeout_and_no_more(
    cached_sidecar, mock_provider
) -> None:
    """Redis frozen (SIGSTOP: connections stay open, nothing answers): the lookup gives up after
    ``operation_timeout``, the call goes upstream, and once Redis answers again the stored answer
    is a hit again. Each reply on the pipelined connection has a timer of its own for this."""
    timeout = 0.5
    server = RedisServer()
    try:
        sidecar = cached_sidecar(
            cache=redis_cache(server.url, local_ttl=0, operation_timeout=timeout, breaker_failures=100)
        )
        assert _post(sidecar.openai_base).headers["x-llm-sidecar-cache"] == "miss"
        stored(sidecar)
        assert _post(sidecar.openai_base).headers["x-llm-sidecar-cache"] == "hit"
        backend = sidecar.pipeline.cache.backend
        errors = backend.errors

        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            response = _post(sidecar.openai_base)
            waited = time.perf_counter() - started
            assert response.status_code == 200 and response.headers["x-llm-sidecar-cache"] == "miss"
            # It waited for the lookup's timeout, then went upstream (the bound is loose: a loaded machine).
            assert timeout <= waited < timeout + 4, waited
            assert backend.errors > errors
            assert mock_provider.calls() == 2
        finally:
            os.kill(server.process.pid, signal.SIGCONT)

        # The replies the frozen server owed arrive now and are consumed in step: the next lookup's is its own.
        wait_until(lambda: _post(sidecar.openai_base).headers["x-llm-sidecar-cache"] == "hit", what="a hit again")
    finally:
        server.kill()


async def test_lookups_that_queue_behind_a_connect_to_a_frozen_redis_each_give_up_after_the_timeout(
    cached_sidecar, mock_provider
) -> None:
    """Redis frozen before the first lookup (SIGSTOP: the kernel still accepts connections, nothing
    answers) and a db in the URL, so connecting takes a reply (``SELECT``). Lookups that arrive
    together wait for one connection: each must still give up after ``operation_timeout``, not
    one timeout after another as the connects behind each other fail."""
    timeout, calls = 0.25, 24
    server = RedisServer()
    try:
        sidecar = cached_sidecar(
            cache=redis_cache(server.url[: -len("/0")] + "/1", local_ttl=0, operation_timeout=timeout)
        )
        os.kill(server.process.pid, signal.SIGSTOP)
        try:

            async def call(client: httpx.AsyncClient, index: int) -> float:
                started = time.perf_counter()
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"frozen {index}"}]}
                response = await client.post(sidecar.openai_base + "/chat/completions", json=body)
                assert response.status_code == 200 and response.headers["x-llm-sidecar-cache"] == "miss"
                return time.perf_counter() - started

            async with httpx.AsyncClient(timeout=30) as client:
                waited = await asyncio.gather(*(call(client, i) for i in range(calls)))
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        # One after another, the last would wait calls x timeout (6 s); the bound is loose for a loaded machine.
        assert max(waited) < timeout + 2.5, sorted(waited)
        assert mock_provider.calls() == calls
    finally:
        server.kill()


async def test_three_sidecar_processes_make_one_upstream_call(mock_provider, redis, tmp_path) -> None:
    mock_provider.set_behaviour("mock-gpt", latency_ms=500)
    config = cache_config(mock_provider.url, redis_cache(redis.url))
    started: list[SidecarProcess] = []
    try:
        for _ in range(3):
            started.append(SidecarProcess(config, tmp_path))
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fleet-wide burst"}]}
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(client.post(started[i % 3].url + "/v1/chat/completions", json=body) for i in range(30))
            )
        assert [r.status_code for r in responses] == [200] * 30
        assert mock_provider.calls() == 1
        assert len({r.content for r in responses}) == 1
        statuses = sorted(r.headers["x-llm-sidecar-cache"] for r in responses)
        assert statuses.count("miss") == 1 and statuses.count("coalesced") == 29
    finally:
        for sidecar in started:
            sidecar.stop()


def test_decorator_served_from_redis_by_another_process(redis) -> None:
    env = {**os.environ, "REDIS_URL": redis.url, "PYTHONPATH": str(ROOT)}
    os.environ["REDIS_URL"] = redis.url
    try:
        sys.modules.pop("tests.cache.decorated", None)
        from tests.cache.decorated import fetch_llm_response

        first = fetch_llm_response("What is a sidecar?")
        assert first["computed_by"] == os.getpid() and fetch_llm_response.stats.misses == 1
        assert fetch_llm_response(prompt="What is a sidecar?", model="gpt-4") == first  # same binding, same key
        assert fetch_llm_response.stats.hits == 1
        other = subprocess.run(
            [sys.executable, "-m", "tests.cache.decorated", "What is a sidecar?"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        result = orjson.loads(other.stdout)
        assert result["value"] == first  # computed here, served from Redis there
        assert result["stats"]["hits"] == 1 and result["stats"]["misses"] == 0
        fetch_llm_response.invalidate("What is a sidecar?")
        again = subprocess.run(
            [sys.executable, "-m", "tests.cache.decorated", "What is a sidecar?"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert orjson.loads(again.stdout)["value"]["computed_by"] != os.getpid()
    finally:
        os.environ.pop("REDIS_URL", None)


async def test_pipelined_lookups_with_password_and_db() -> None:
    from proxy.cache.redis import PipelinedGets, RedisBackend

    server = RedisServer()

    def require_password() -> None:  # after start: the fixture's readiness check pings without one
        subprocess.run(
            ["redis-cli", "-p", str(server.port), "config", "set", "requirepass", "s3cret"],
            check=True,
            capture_output=True,
            timeout=5,
        )

    require_password()
    try:
        backend = RedisBackend.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/2")
        assert isinstance(backend.gets, PipelinedGets)
        await backend.set("k", b"value", 60)
        values = await asyncio.gather(*(backend.get(k) for k in ("k", "absent", "k")))
        assert values == [b"value", None, b"value"] and backend.errors == 0
        # db 2 it is: the default db does not have it.
        other = RedisBackend.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        assert await other.get("k") is None and other.errors == 0
        # A restarted server: the lost connection is a miss, the next lookup reconnects.
        server.kill()
        assert await backend.get("k") is None and backend.errors == 1
        server.start()
        require_password()
        await backend.set("k", b"again", 60)
        assert await backend.get("k") == b"again"
        wrong = RedisBackend.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0")
        assert await wrong.get("k") is None and wrong.errors == 1  # fails open
        for each in (backend, other, wrong):
            await each.close()
    finally:
        server.kill()


def _metric(admin_url: str, name: str, labels: str = "") -> float:
    import re

    text = httpx.get(admin_url + "/metrics", timeout=10).text
    match = re.search(rf"^llm_sidecar_{name}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"no {name}{labels} in /metrics"
    return float(match.group(1))


def test_redis_down_and_back_is_logged_once_each_and_counted_honestly(cached_sidecar, mock_provider, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="llm_sidecar")
    server = RedisServer()
    try:
        sidecar = cached_sidecar(cache=redis_cache(server.url, local_ttl=0))
        stores = lambda: _metric(sidecar.admin_url, "cache_events_total", '{event="store"}')  # noqa: E731
        failed = lambda: _metric(sidecar.admin_url, "cache_events_total", '{event="store_failed"}')  # noqa: E731
        assert _post(sidecar.openai_base, "before").status_code == 200
        wait_until(lambda: stores() == 1, interval=0.05, what="the first answer was not stored")
        assert _metric(sidecar.admin_url, "cache_available") == 1
        server.kill()
        for index in range(12):  # past breaker_failures: the circuit opens, later calls skip Redis
            assert _post(sidecar.openai_base, f"while down {index}").status_code == 200
        wait_until(lambda: failed() == 12, interval=0.05, what="failed stores were not counted as such")
        assert stores() == 1  # nothing was stored while Redis was down
        assert _metric(sidecar.admin_url, "cache_available") == 0
        assert _metric(sidecar.admin_url, "cache_errors_total") >= 24  # 12 lookups and 12 stores, none done
        server.start()
        wait_until(
            lambda: _metric(sidecar.admin_url, "cache_available") == 1, interval=0.05, what="Redis did not come back"
        )
        assert _post(sidecar.openai_base, "after").status_code == 200
        wait_until(lambda: stores() == 2, interval=0.05, what="the cache did not store again after Redis came back")
    finally:
        server.kill()
    messages = [r.getMessage() for r in caplog.records if r.name == "llm_sidecar"]
    assert messages.count("redis unavailable") == 1 and messages.count("redis available again") == 1


def test_two_scripts_sharing_redis_keep_their_own_answers(redis, tmp_path: Path) -> None:
    """Every script's functions are __main__.<name>: two scripts with one name must not read each other's."""
    env = {**os.environ, "REDIS_URL": redis.url, "PYTHONPATH": str(ROOT)}
    outputs = []
    for method in ("upper", "lower", "upper"):
        script = tmp_path / f"{method}.py"
        script.write_text(
            "from proxy import DistributedCacheDecorator\n\n\n"
            '@DistributedCacheDecorator(ttl=60, cache_backend="redis")\n'
            "def summarize(text: str) -> str:\n"
            f"    return text.{method}()\n\n\n"
            'print(summarize("Hello World"), summarize.stats.hits)\n'
        )
        run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=30)
        outputs.append(run.stdout.strip())
    # The same script run again is served from Redis; the other one computes its own.
    assert outputs == ["HELLO WORLD 0", "hello world 0", "HELLO WORLD 1"]


def test_decorator_stats_count_what_redis_could_not_do() -> None:
    from proxy import DistributedCacheDecorator

    server = RedisServer()
    try:
        runs = []

        @DistributedCacheDecorator(ttl=60, cache_backend="redis", redis_url=server.url)
        def answer(question: str) -> str:
            runs.append(question)
            return question.upper()

        @DistributedCacheDecorator(ttl=60, cache_backend="redis", redis_url=server.url)
        async def answer_async(question: str) -> str:
            runs.append(question)
            return question.upper()

        assert answer("a") == "A" and answer("a") == "A" and answer.stats.errors == 0
        server.kill()
        for index in range(3):
            assert answer(f"q{index}") == f"Q{index}"
            assert asyncio.run(answer_async(f"q{index}")) == f"Q{index}"
        # Every call ran the function, and its lookup and its store both failed.
        assert answer.stats.errors == 6 and answer.stats.misses == 4
        assert answer_async.stats.errors == 6
    finally:
        server.kill()


def test_a_full_redis_is_not_down_its_entries_still_answer(cached_sidecar, mock_provider, caplog) -> None:
    import logging

    import redis as redis_py

    caplog.set_level(logging.INFO, logger="llm_sidecar")
    server = RedisServer()
    try:
        # One failure opens the circuit here: a write Redis refuses must not count as one.
        cache = redis_cache(server.url, local_ttl=0, breaker_failures=1, breaker_cooldown=60)
        sidecar = cached_sidecar(cache=cache)
        first = _post(sidecar.openai_base, "stored before")
        stored(sidecar)
        # Full, and evicting nothing: Redis answers reads and refuses writes (OOM).
        with redis_py.Redis(port=server.port) as client:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)
        new = _post(sidecar.openai_base, "new while full")
        assert new.status_code == 200 and new.headers["x-llm-sidecar-cache"] == "miss"
        settled(sidecar)
        assert _metric(sidecar.admin_url, "cache_events_total", '{event="store_failed"}') == 1
        hit = _post(sidecar.openai_base, "stored before")
        assert hit.headers["x-llm-sidecar-cache"] == "hit" and hit.json() == first.json()
        assert _metric(sidecar.admin_url, "cache_available") == 1
    finally:
        server.kill()
    assert "redis unavailable" not in [r.getMessage() for r in caplog.records if r.name == "llm_sidecar"]


async def test_a_lock_left_behind_by_a_redis_blip_is_released_when_redis_is_back(cached_sidecar, mock_provider) -> None:
    import signal as signals

    import redis as redis_py

    server = RedisServer()
    assert server.process is not None
    locks = redis_py.Redis(port=server.port)
    try:
        sidecar = cached_sidecar(cache=redis_cache(server.url, local_ttl=0, breaker_failures=1, lock_ttl=30))
        backend = sidecar.pipeline.cache.backend
        url = sidecar.openai_base + "/chat/completions"
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "through the blip"}]}
        async with httpx.AsyncClient(timeout=60) as client:
            # The leader holds the cross-pod lock while its upstream answers (1 s)...
            leader = asyncio.create_task(client.post(url, json=body, headers={"x-mock-latency-ms": "1000"}))
            await wait_until_async(lambda: list(locks.scan_iter("*:lock")), what="the leader's lock")
            # ...Redis stops answering (paused, not gone), the circuit opens, and the leader's answer
            # ends while it is open: neither its entry nor its lock's release reaches Redis.
            server.process.send_signal(signals.SIGSTOP)
            await client.post(url, json={**body, "messages": [{"role": "user", "content": "opens the circuit"}]})
            assert not backend.available
            assert (await leader).status_code == 200
            server.process.send_signal(signals.SIGCONT)
            await wait_until_async(lambda: backend.available, what="Redis back")
            # The lock goes once Redis is back, not lock_ttl later: until then every identical call,
            # in every pod, waits for an answer no one is making (up to coalesce_wait, 30 s).
            await wait_until_async(lambda: not list(locks.scan_iter("*:lock")), 10, what="the lock released")
            again = await client.post(url, json=body, timeout=10)
            assert again.status_code == 200 and again.headers["x-llm-sidecar-cache"] == "miss"
    finally:
        server.process.send_signal(signals.SIGCONT)
        locks.close()
        server.kill()


def test_a_full_redis_is_not_down_for_the_decorator_either() -> None:
    # The decorator's synchronous backend, as the sidecar's async one (90f9ea5): a write a full
    # Redis refuses (OOM) is not Redis down, so its entries go on answering.
    import redis as redis_py

    from proxy import DistributedCacheDecorator
    from proxy.cache.redis import SyncRedisBackend

    server = RedisServer()
    try:
        # One failure opens the circuit here: a write Redis refuses must not count as one.
        backend = SyncRedisBackend(redis_py.Redis(port=server.port), breaker_failures=1, breaker_cooldown=60)
        runs = []

        @DistributedCacheDecorator(ttl=60, cache_backend=backend)
        def answer(question: str) -> str:
            runs.append(question)
            return question.upper()

        assert answer("stored before") == "STORED BEFORE"
        # Full, and evicting nothing: Redis answers reads and refuses writes (OOM).
        with redis_py.Redis(port=server.port) as client:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)
        assert answer("new while full") == "NEW WHILE FULL"
        assert answer.stats.errors == 1  # the refused store, still counted
        assert answer("stored before") == "STORED BEFORE"
        assert runs == ["stored before", "new while full"] and answer.stats.hits == 1
        assert not backend.breaker.is_open
    finally:
        server.kill()


def test_a_redis_on_a_unix_socket_serves_the_sidecar_and_the_decorator(cached_sidecar) -> None:
    # unix:// passes the config's check, but redis-py's socket connection takes no socket_keepalive:
    # every cacheable call was the sidecar's own 500, and the decorator raised a TypeError.
    import tempfile

    from proxy import DistributedCacheDecorator

    directory = tempfile.mkdtemp(prefix="redis-unix-")  # short: a socket's path has ~100 bytes
    server = RedisServer(None, "--unixsocket", f"{directory}/redis.sock")
    url = f"unix://{directory}/redis.sock"
    try:
        sidecar = cached_sidecar(cache=redis_cache(url))
        first = _post(sidecar.openai_base, "over a socket")
        assert first.status_code == 200 and first.headers["x-llm-sidecar-cache"] == "miss"
        stored(sidecar)
        hit = _post(sidecar.openai_base, "over a socket")
        assert hit.headers["x-llm-sidecar-cache"] == "hit" and hit.json() == first.json()

        @DistributedCacheDecorator(ttl=60, cache_backend="redis", redis_url=url)
        def answer(question: str) -> str:
            return question.upper()

        assert answer("a") == "A" and answer("a") == "A"
        assert (answer.stats.hits, answer.stats.errors) == (1, 0)
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)
