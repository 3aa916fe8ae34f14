"""The Redis backend (a single server, Sentinel, or Redis Cluster), failing open.

This module is the one place Redis errors are caught: every operation runs under
its own short timeout, and any failure (refused, timed out, cluster down, a
bad reply) becomes the operation's neutral answer (a miss, "not stored", "lead
yourself") plus a count in ``errors``. After ``breaker_failures`` failures in a
row the circuit opens: operations answer at once without touching the network,
while a background task pings Redis every ``breaker_cooldown`` seconds and
closes the circuit when it answers again. redis-py reconnects by itself on the
next command, so once the circuit closes the cache simply comes back.

``SyncRedisBackend`` is the same for synchronous callers of the decorator
(there the circuit half-opens after the cooldown instead of being probed).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from proxy.cache.config import CacheConfig

T = TypeVar("T")

#: everything a Redis call can raise that means "Redis is not usable right now"
_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError, asyncio.TimeoutError)

# Release the lock only if it is still ours (it may have expired and been taken by another pod).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class Breaker:
    """Consecutive failures open the circuit; ``close()`` (or the cooldown, if ``half_open``) ends it."""

    __slots__ = ("threshold", "cooldown", "failures", "opened_at", "half_open")

    def __init__(self, threshold: int, cooldown: float, half_open: bool) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None
        self.half_open = half_open

    @property
    def is_open(self) -> bool:
        if self.opened_at is None:
            return False
        if self.half_open and time.monotonic() - self.opened_at >= self.cooldown:
            return False  # let one call through; a failure re-opens at once
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self) -> bool:
        """Count a failure; true when this one opened the circuit."""
        self.failures += 1
        if self.failures >= self.threshold:
            opened = self.opened_at is None
            self.opened_at = time.monotonic()
            return opened
        return False


def _common_options(timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }


def _sentinel_hosts(config: CacheConfig) -> list[tuple[str, int]]:
    hosts = []
    for item in config.redis_sentinels:
        host, _, port = item.rpartition(":")
        hosts.append((host or item, int(port) if port.isdigit() else 26379))
    return hosts


def _url_auth(url: str | None) -> dict[str, Any]:
    if not url:
        return {}
    parsed = redis.connection.parse_url(url)
    return {k: parsed[k] for k in ("username", "password", "db") if parsed.get(k) is not None}


def async_client(config: CacheConfig) -> Any:
    options = _common_options(config.operation_timeout)
    if config.redis_mode == "cluster":
        return redis.asyncio.cluster.RedisCluster.from_url(
            config.redis_url, **options, retry=redis.asyncio.retry.Retry(NoBackoff(), 1))
    retry = redis.asyncio.retry.Retry(NoBackoff(), 1)  # one retry on a fresh connection after a restart
    if config.redis_mode == "sentinel":
        sentinel = redis.asyncio.sentinel.Sentinel(_sentinel_hosts(config), sentinel_kwargs=options, **options)
        return sentinel.master_for(config.redis_service_name, retry=retry, **_url_auth(config.redis_url))
    return redis.asyncio.Redis.from_url(config.redis_url, retry=retry, **options)


def sync_client(config: CacheConfig) -> Any:
    options = _common_options(config.operation_timeout)
    if config.redis_mode == "cluster":
        return redis.cluster.RedisCluster.from_url(config.redis_url, **options)
    retry = redis.retry.Retry(NoBackoff(), 1)
    if config.redis_mode == "sentinel":
        sentinel = redis.sentinel.Sentinel(_sentinel_hosts(config), sentinel_kwargs=options, **options)
        return sentinel.master_for(config.redis_service_name, retry=retry, **_url_auth(config.redis_url))
    return redis.Redis.from_url(config.redis_url, retry=retry, **options)


class RedisBackend:
    """Async Redis operations that never raise and never take longer than ``operation_timeout``."""

    distributed = True

    def __init__(self, client: Any, operation_timeout: float = 0.1, breaker_failures: int = 5,
                 breaker_cooldown: float = 2.0) -> None:
        self.client = client
        self.timeout = operation_timeout
        self.breaker = Breaker(breaker_failures, breaker_cooldown, half_open=False)
        self.errors = 0
        #: operations answered without Redis because the circuit was open
        self.skipped = 0
        self._probe: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: CacheConfig) -> RedisBackend:
        return cls(async_client(config), config.operation_timeout, config.breaker_failures, config.breaker_cooldown)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBackend:
        config = CacheConfig(backend="redis", redis_url=url, **options)
        return cls.from_config(config)

    @property
    def available(self) -> bool:
        return not self.breaker.is_open

    async def _run(self, default: T, operation: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self.breaker.is_open:
            self.skipped += 1
            return default
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation(*args, **kwargs)
        except _FAILURES:
            self.errors += 1
            if self.breaker.failure() and (self._probe is None or self._probe.done()):
                self._probe = asyncio.get_running_loop().create_task(self._reconnect())
            return default
        if self.breaker.failures:
            self.breaker.success()
        return result

    async def _reconnect(self) -> None:
        """While the circuit is open, ping every cooldown; close it when Redis answers."""
        while self.breaker.opened_at is not None:
            await asyncio.sleep(self.breaker.cooldown)
            try:
                async with asyncio.timeout(max(self.timeout, 0.5)):
                    await self.client.ping()
            except _FAILURES:
                continue
            self.breaker.success()

    async def get(self, key: str) -> bytes | None:
        return await self._run(None, self.client.get, key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._run(None, self.client.set, key, value, px=max(1, int(ttl * 1000)))

    async def delete(self, key: str) -> None:
        await self._run(None, self.client.delete, key)

    async def exists(self, key: str) -> bool:
        return bool(await self._run(0, self.client.exists, key))

    async def clear(self, prefix: str = "") -> None:
        async def clear() -> None:
            keys = [key async for key in self.client.scan_iter(match=prefix + "*", count=500)]
            for key in keys:
                await self.client.delete(key)

        await self._run(None, clear)

    async def acquire(self, key: str, ttl: float) -> str | None:
        """Take a cross-pod lock: its token when taken, ``None`` when another pod holds it.

        With Redis unusable there is nobody to coordinate with, so the caller leads.
        """
        token = uuid.uuid4().hex
        taken = await self._run(True, self.client.set, key, token, px=max(1, int(ttl * 1000)), nx=True)
        return token if taken else None

    async def release(self, key: str, token: str) -> None:
        await self._run(None, self.client.eval, _RELEASE, 1, key, token)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        try:
            await self.client.aclose()
        except _FAILURES:
            pass


class SyncRedisBackend:
    """Blocking twin of ``RedisBackend`` for synchronous decorated functions (thread-safe)."""

    distributed = True

    def __init__(self, client: Any, breaker_failures: int = 5, breaker_cooldown: float = 2.0) -> None:
        self.client = client
        self.breaker = Breaker(breaker_failures, breaker_cooldown, half_open=True)
        self.errors = 0
        self.skipped = 0

    @classmethod
    def from_config(cls, config: CacheConfig) -> SyncRedisBackend:
        return cls(sync_client(config), config.breaker_failures, config.breaker_cooldown)

    def _run(self, default: T, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.breaker.is_open:
            self.skipped += 1
            return default
        try:
            result = operation(*args, **kwargs)
        except _FAILURES:
            self.errors += 1
            self.breaker.failure()
            return default
        if self.breaker.failures:
            self.breaker.success()
        return result

    def get_now(self, key: str) -> bytes | None:
        return self._run(None, self.client.get, key)

    def set_now(self, key: str, value: bytes, ttl: float) -> None:
        self._run(None, self.client.set, key, value, px=max(1, int(ttl * 1000)))

    def delete_now(self, key: str) -> None:
        self._run(None, self.client.delete, key)

    def clear_now(self, prefix: str = "") -> None:
        def clear() -> None:
            for key in list(self.client.scan_iter(match=prefix + "*", count=500)):
                self.client.delete(key)

        self._run(None, clear)

    def close(self) -> None:
        try:
            self.client.close()
        except _FAILURES:
            pass
