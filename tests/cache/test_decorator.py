"""DistributedCacheDecorator on its own: binding, sync/async, threads, coalescing, fail-open."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import gc
import os
import pickle
import threading
import time

import pytest

from proxy import DistributedCacheDecorator
from proxy.cache.config import CacheConfig
from proxy.cache.decorator import JSON
from proxy.cache.memory import MemoryBackend
from proxy.cache.redis import SyncRedisBackend
from tests.waiting import wait_until, wait_until_async


def test_bound_arguments_share_one_key() -> None:
    calls = []

    @DistributedCacheDecorator(ttl=60)
    def fetch(prompt: str, model: str = "gpt-4", **options) -> dict:
        calls.append(prompt)
        return {"prompt": prompt, "model": model, "options": options}

    assert fetch("hi") == fetch(prompt="hi") == fetch("hi", "gpt-4") == fetch(model="gpt-4", prompt="hi")
    assert calls == ["hi"]
    fetch("hi", top=1, bottom=2)
    fetch("hi", bottom=2, top=1)
    assert calls == ["hi", "hi"]
    assert (fetch.stats.hits, fetch.stats.misses) == (4, 2)


def test_stable_spelling_of_common_types() -> None:
    @dataclasses.dataclass
    class Query:
        text: str

    seen = []

    @DistributedCacheDecorator()
    def run(query: Query, tags: set, blob: bytes, pair: tuple) -> int:
        seen.append(1)
        return len(seen)

    assert run(Query("a"), {"x", "y"}, b"\x00", (1, 2)) == run(Query("a"), {"y", "x"}, b"\x00", (1, 2)) == 1

    class Opaque:
        pass

    @DistributedCacheDecorator()
    def opaque(thing: Opaque) -> int:
        seen.append(1)
        return 0

    opaque(Opaque())
    opaque(Opaque())
    assert opaque.stats.unhashable == 2  # ran both times, never served a wrong value


@dataclasses.dataclass
class _Point:
    x: int
    y: int


@dataclasses.dataclass
class _Size:
    x: int
    y: int


class _Color(enum.Enum):
    RED = 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (float("nan"), None),
        (float("inf"), float("-inf")),
        ({1: "a"}, {"1": "a"}),
        (_Point(1, 2), _Size(1, 2)),
        (_Point(1, 2), {"x": 1, "y": 2}),
        ((1, 2), [1, 2]),
        ({1, 2}, [1, 2]),
        (_Color.RED, 1),
        (datetime.date(2026, 1, 2), "2026-01-02"),
        ({"__bytes__": "AA=="}, b"\x00"),
    ],
    ids=repr,
)
def test_arguments_that_differ_never_share_a_key(first, second) -> None:
    # Each call must get its own answer: a shared key would hand the second the first's result.
    @DistributedCacheDecorator()
    def describe(arg) -> str:
        return repr(arg)

    assert describe(first) == repr(first)
    assert describe(second) == repr(second)
    assert describe.stats.misses == 2 and describe.stats.unhashable == 0


@pytest.mark.parametrize(
    "result",
    [_Point(1, 2), {1: "a"}, float("nan"), (1, 2), datetime.date(2026, 1, 2), _Color.RED, {"p": [_Point(1, 2)]}],
    ids=repr,
)
def test_a_hit_gives_back_what_the_function_returned(result) -> None:
    # JSON would give these back as something else (a dict, {"1": ...}, None, a list, a string):
    # such a result is not stored, and each call gets the function's own value.
    runs = []

    @DistributedCacheDecorator()
    def compute() -> object:
        runs.append(1)
        return result

    first, second = compute(), compute()
    assert type(first) is type(second) is type(result) and repr(first) == repr(second) == repr(result)
    assert len(runs) == 2 and compute.stats.errors == 2

    @DistributedCacheDecorator()
    def plain() -> dict:
        runs.append(1)
        return {"text": "hi", "scores": [0.5, 1.0], "n": 3, "ok": True, "none": None}

    assert plain() == plain() and plain.stats.hits == 1


def test_lambdas_and_closures_of_one_name_keep_their_own_answers() -> None:
    """Functions that share a qualified name (lambdas, a factory's inner function) in one cache."""
    cache = DistributedCacheDecorator(ttl=60)  # one backend for all, as Redis is
    square = cache(lambda x: x * x)
    cube = cache(lambda x: x**3)
    assert (square(2), cube(2)) == (4, 8)

    def scaled(factor: int, client: object):
        @cache
        def scale(x: int) -> int:
            assert client is not None  # an object it closes over, left out of the key as self is
            return x * factor

        return scale

    double, triple = scaled(2, object()), scaled(3, object())
    assert (double(5), triple(5)) == (10, 15)
    assert (double(5), triple(5), scaled(3, object())(5)) == (10, 15, 15)
    assert (double.stats.hits, triple.stats.hits) == (1, 1)


def test_threads_compute_once() -> None:
    computed = []

    @DistributedCacheDecorator(ttl=60)
    def slow(x: int) -> int:
        computed.append(x)
        # Answer only once every other caller waits for this call (or never, if they compute too).
        wait_until(lambda: slow.stats.coalesced == 31, what="31 callers waiting on the first")
        return x * 2

    results = []
    threads = [threading.Thread(target=lambda: results.append(slow(21))) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [42] * 32 and computed == [21]
    assert slow.stats.coalesced == 31


async def test_async_methods_coalesce_and_invalidate() -> None:
    class Client:
        def __init__(self) -> None:
            self.calls = 0

        @DistributedCacheDecorator(ttl=60)
        async def ask(self, prompt: str) -> list:
            self.calls += 1
            if self.calls == 1:  # the first answer waits until every other caller waits on it
                await wait_until_async(lambda: Client.ask.stats.coalesced == 9, what="9 callers waiting")
            return [prompt, self.calls]

    client = Client()
    answers = await asyncio.gather(*(client.ask("q") for _ in range(10)))
    assert answers == [["q", 1]] * 10 and client.calls == 1
    await client.ask.invalidate("q")
    assert await client.ask("q") == ["q", 2]
    await client.ask.cache_clear()
    assert await client.ask(prompt="q") == ["q", 3]


async def test_a_cancelled_caller_does_not_cancel_the_callers_waiting_on_it() -> None:
    release = asyncio.Event()
    runs = []

    @DistributedCacheDecorator()
    async def ask(prompt: str) -> str:
        runs.append(prompt)
        await release.wait()
        return prompt.upper()

    first = asyncio.create_task(ask("q"))
    await wait_until_async(lambda: runs == ["q"], what="the first call running")
    second = asyncio.create_task(ask("q"))
    await wait_until_async(lambda: ask.stats.coalesced == 1, what="the second call waiting on the first")
    first.cancel()  # e.g. its client went away
    await wait_until_async(lambda: first.done(), what="the first call cancelled")
    release.set()
    assert await asyncio.wait_for(second, timeout=10) == "Q"
    assert first.cancelled() and runs == ["q", "q"]


def test_exceptions_are_not_cached() -> None:
    attempts = []

    @DistributedCacheDecorator()
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first time")
        return "ok"

    with pytest.raises(RuntimeError):
        flaky()
    assert flaky() == "ok" and flaky() == "ok" and len(attempts) == 2


class _Pickle:
    dumps = staticmethod(pickle.dumps)
    loads = staticmethod(pickle.loads)


def test_a_result_the_serializer_refuses_still_reaches_every_caller() -> None:
    # pickle raises its own errors (here AttributeError for a local function), not TypeError.
    @DistributedCacheDecorator(serializer=_Pickle())
    def make(x: int):
        wait_until(lambda: make.stats.coalesced == 1, what="a second caller waiting on the first")
        return lambda: x

    results = []
    threads = [threading.Thread(target=lambda: results.append(make(1)()), daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert results == [1, 1] and make.stats.errors == 1


async def test_an_async_result_the_serializer_refuses_still_reaches_every_caller() -> None:
    @DistributedCacheDecorator(serializer=_Pickle())
    async def make(x: int):
        await wait_until_async(lambda: make.stats.coalesced == 1, what="a second caller waiting on the first")
        return lambda: x

    results = await asyncio.wait_for(asyncio.gather(make(1), make(1)), timeout=10)
    assert [result() for result in results] == [1, 1] and make.stats.errors == 1


def test_an_entry_the_serializer_cannot_read_is_a_miss() -> None:
    """A deploy that changed the serializer meets the old entries: pickle raises its own errors on them."""
    backend = MemoryBackend()

    def version(serializer):
        @DistributedCacheDecorator(cache_backend=backend, serializer=serializer)
        def lookup(x: int) -> dict:
            return {"x": x}

        return lookup

    old, new = version(JSON), version(_Pickle())
    assert old(1) == {"x": 1}
    assert new(1) == {"x": 1} and (new.stats.misses, new.stats.errors) == (1, 1)
    assert new(1) == {"x": 1} and new.stats.hits == 1  # stored anew in its own format


def test_ttl_expires_and_cache_clear(clock) -> None:
    backend = MemoryBackend(clock=clock)
    count = []

    @DistributedCacheDecorator(ttl=0.1, cache_backend=backend)
    def value(x: int) -> int:
        count.append(x)
        return x

    value(1), value(1)
    clock.advance(0.15)
    value(1)
    assert len(count) == 2
    value.cache_clear()
    value(1)
    assert len(count) == 3


def test_dead_redis_fails_open_quickly(refused_port) -> None:
    url = f"redis://127.0.0.1:{refused_port.port}/0"
    count = []

    @DistributedCacheDecorator(ttl=60, cache_backend="redis", redis_url=url)
    def work(x: int) -> int:
        count.append(x)
        return x + 1

    started = time.perf_counter()
    assert [work(1) for _ in range(20)] == [2] * 20
    assert time.perf_counter() - started < 2
    assert len(count) == 20


def test_redis_backend_instance_and_pluggable_serializer(redis) -> None:
    import pickle

    class Pickle:
        dumps = staticmethod(pickle.dumps)
        loads = staticmethod(pickle.loads)

    backend = SyncRedisBackend.from_config(CacheConfig(backend="redis", redis_url=redis.url))
    count = []

    @DistributedCacheDecorator(cache_backend=backend, serializer=Pickle())
    def make(x: int) -> tuple:
        count.append(x)
        return (x, frozenset({x}))

    assert make(3) == make(3) == (3, frozenset({3}))
    assert len(count) == 1


def test_redis_connections_go_with_their_event_loop(redis) -> None:
    """A sync program calling ``asyncio.run`` per call: each loop's connections must not outlive it."""

    @DistributedCacheDecorator(ttl=60, cache_backend="redis", redis_url=redis.url)
    async def answer(x: int) -> int:
        return x

    def open_fds() -> int:
        gc.collect()  # a loop and its client hold each other
        return len(os.listdir("/proc/self/fd"))

    assert asyncio.run(answer(1)) == 1
    before = open_fds()
    assert [asyncio.run(answer(i % 3)) for i in range(60)] == [i % 3 for i in range(60)]
    assert answer.stats.hits >= 57
    assert open_fds() <= before + 3


def test_rejects_unknown_backends() -> None:
    with pytest.raises(ValueError):
        DistributedCacheDecorator(cache_backend="memcached")
    with pytest.raises(ValueError):
        DistributedCacheDecorator(ttl=0)


def _double(x: int) -> int:
    return 2 * x


async def _triple(x: int) -> int:
    return 3 * x


@pytest.mark.parametrize("ours, theirs", [("team[a]", "teama"), ("a*", "ab"), ("a?", "ab"), ("a\\*", "a*")])
def test_cache_clear_on_redis_takes_only_its_own_namespace(redis, ours, theirs) -> None:
    """A namespace is literal: Redis glob characters in it reach neither another namespace's keys nor miss its own."""

    def both(namespace: str):
        decorator = DistributedCacheDecorator(ttl=60, cache_backend="redis", redis_url=redis.url, namespace=namespace)
        return decorator(_double), decorator(_triple)

    (mine, mine_async), (other, other_async) = both(ours), both(theirs)
    assert mine(1) == other(1) == 2
    assert asyncio.run(mine_async(1)) == asyncio.run(other_async(1)) == 3

    mine.cache_clear()
    asyncio.run(mine_async.cache_clear())

    assert other(1) == 2 and asyncio.run(other_async(1)) == 3
    assert (other.stats.hits, other_async.stats.hits) == (1, 1)  # the other namespace kept its entries
    assert mine(1) == 2 and asyncio.run(mine_async(1)) == 3
    assert (mine.stats.misses, mine_async.stats.misses) == (2, 2)  # and this one lost its own
