"""The Redis backend (a single server, Sentinel, or Redis Cluster), failing open.

This module is the one place Redis errors are caught: every operation runs under
its own short timeout, and any failure (refused, timed out, cluster down, a
bad reply) becomes the operation's neutral answer (a miss, "not stored", "lead
yourself") plus a count in ``errors``. After ``breaker_failures`` failures in a
row the circuit opens: operations answer at once without touching the network,
while a background task pings Redis every ``breaker_cooldown`` seconds and
closes the circuit when it answers again. redis-py reconnects by itself on the
next command, so once the circuit closes the cache simply comes back. Each change
of state is logged once (``redis unavailable`` / ``redis available again``) and shown
by the ``llm_sidecar_cache_available`` gauge.

The hot read (a cache lookup is one ``GET``) takes a shorter road with a single
server (``redis://``): ``PipelinedGets``, one connection on which every lookup
writes its ``GET`` at once and replies resolve the waiting lookups in order, parsed
by hiredis. redis-py's command path (connection pool checkout, retry wrapper,
observability hooks, a ``wait_for`` task per write under ``socket_timeout``) cost
~40-90 us of CPU per ``GET`` here; this road costs ~8-25 us. Writes, locks,
Sentinel, Cluster and TLS stay on redis-py. The fleet's Lua scripts
(``RedisBackend.script``) take the same road.

``SyncRedisBackend`` is the same for synchronous callers of the decorator
(there the circuit half-opens after the cooldown instead of being probed).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, OutOfMemoryError, RedisClusterException, RedisError, ResponseError

try:
    import hiredis
except ImportError:  # a dependency; without it lookups use redis-py's own GET
    hiredis = None  # type: ignore[assignment]  # the optional module is None when missing

from proxy.cache.config import CacheConfig
from proxy.telemetry.logs import event

T = TypeVar("T")

#: everything a Redis call can raise that means "Redis is not usable right now"
_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError, asyncio.TimeoutError)

# Release the lock only if it is still ours (it may have expired and been taken by another pod).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class Script:
    """A Lua script, sent by its SHA1 (``EVALSHA``) and by its text when the server lacks it."""

    __slots__ = ("text", "sha", "evalsha")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        #: ``EVALSHA <sha>`` as RESP bulk strings, the head of every pipelined run
        self.evalsha = _bulk(b"EVALSHA", self.sha.encode())


class ScriptCall:
    """A script with its keys and leading arguments fixed, encoded once: a call that runs it often
    (a fleet budget's ``ACQUIRE``) encodes only the arguments that change."""

    __slots__ = ("script", "keys", "fixed", "encoded", "count")

    def __init__(self, script: Script, keys: list[str], fixed: list[Any]) -> None:
        self.script = script
        self.keys = keys
        self.fixed = fixed
        parts = [str(len(keys)).encode(), *(k.encode() for k in keys), *(str(a).encode() for a in fixed)]
        #: the number of keys, the keys and the fixed arguments, as RESP bulk strings
        self.encoded = _bulk(*parts)
        self.count = len(parts)


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
        if self.opened_at is not None:
            event("redis available again", down_s=round(time.monotonic() - self.opened_at, 3))
        self.failures = 0
        self.opened_at = None

    def failure(self, error: BaseException | None = None) -> bool:
        """Count a failure; true when this one opened the circuit (logged once, not per failure)."""
        self.failures += 1
        if self.failures >= self.threshold:
            opened = self.opened_at is None
            self.opened_at = time.monotonic()
            if opened:
                event(
                    "redis unavailable",
                    logging.WARNING,
                    failures=self.failures,
                    error=type(error).__name__ if error is not None else None,
                    retry_every_s=self.cooldown,
                )
            return opened
        return False


def starting_with(prefix: str) -> str:
    """A SCAN ``MATCH`` pattern for the keys starting with ``prefix`` taken literally: a glob character in a
    namespace (``team[a]``) would otherwise match (and a clear delete) another namespace's keys, and miss its own."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in prefix) + "*"


def _common_options(config: CacheConfig) -> dict[str, Any]:
    timeout = config.operation_timeout
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
    }
    if not (config.redis_url or "").startswith("unix://"):  # redis-py's socket connection refuses the option
        options["socket_keepalive"] = True
    return options


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
    options = _common_options(config)
    # Every async operation runs under ``asyncio.timeout`` in ``RedisBackend._run``; a
    # socket_timeout on top would make redis-py wrap each write in its own ``wait_for`` task.
    options["socket_timeout"] = None
    if config.redis_mode == "cluster":
        return redis.asyncio.cluster.RedisCluster.from_url(
            _url(config), **options, retry=redis.asyncio.retry.Retry(NoBackoff(), 1)
        )
    retry = redis.asyncio.retry.Retry(NoBackoff(), 1)  # one retry on a fresh connection after a restart
    if config.redis_mode == "sentinel":
        sentinel = redis.asyncio.sentinel.Sentinel(_sentinel_hosts(config), sentinel_kwargs=options, **options)
        return sentinel.master_for(config.redis_service_name, retry=retry, **_url_auth(config.redis_url))
    return redis.asyncio.Redis.from_url(_url(config), retry=retry, **options)


def sync_client(config: CacheConfig) -> Any:
    options = _common_options(config)
    if config.redis_mode == "cluster":
        return redis.cluster.RedisCluster.from_url(_url(config), **options)
    retry = redis.retry.Retry(NoBackoff(), 1)
    if config.redis_mode == "sentinel":
        sentinel = redis.sentinel.Sentinel(_sentinel_hosts(config), sentinel_kwargs=options, **options)
        return sentinel.master_for(config.redis_service_name, retry=retry, **_url_auth(config.redis_url))
    return redis.Redis.from_url(_url(config), retry=retry, **options)


def _url(config: CacheConfig) -> str:
    if config.redis_url is None:  # CacheConfig requires it with a Redis backend outside sentinel mode
        raise ValueError("redis_url: required with backend: redis")
    return config.redis_url


class _Replies(asyncio.Protocol):
    """One Redis connection: commands are written as they come, replies resolve their waiters in order.

    Each waiter has its own timer (a C-level handle in the event loop, cancelled by its reply): a
    reply that does not come in time fails its waiter with ``TimeoutError``, which costs the call
    less than an ``asyncio.timeout`` around it (a Python object and a task cancellation each time).
    """

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[tuple[asyncio.Future[Any], asyncio.TimerHandle]] = deque()
        self.transport: asyncio.Transport | None = None
        #: commands of this event-loop turn, written together at its end (one send for many lookups)
        self.pending: list[bytes] = []

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP or Unix connection: a full Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                waiter, timer = self.waiters.popleft()
                timer.cancel()
                # A waiter that timed out is done already; its reply is consumed all the same,
                # which keeps the replies in step with the commands.
                if not waiter.done():
                    if isinstance(reply, hiredis.ReplyError):
                        waiter.set_exception(ResponseError(str(reply)))
                    else:
                        waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError):
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        error = ConnectionError("Redis connection lost")
        while self.waiters:
            waiter, timer = self.waiters.popleft()
            timer.cancel()
            if not waiter.done():
                waiter.set_exception(error)

    def send(self, command: bytes, timeout: float) -> asyncio.Future[Any]:
        """The reply to ``command``, or ``TimeoutError`` if none comes within ``timeout`` seconds."""
        if self.transport is None:
            raise ConnectionError("Redis connection closed")
        loop = asyncio.get_running_loop()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append(command)
        waiter = loop.create_future()
        self.waiters.append((waiter, loop.call_later(timeout, _expire, waiter)))
        return waiter

    def _flush(self) -> None:
        commands, self.pending = self.pending, []
        if self.transport is not None:  # else connection_lost has failed their waiters already
            self.transport.write(b"".join(commands) if len(commands) > 1 else commands[0])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # connection_lost fails the waiters


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no reply from Redis in time"))


class PipelinedGets:
    """``GET`` over one pipelined connection to a single Redis server (``redis://`` only).

    Lookups never wait for each other: each writes its command at once and awaits
    its own reply. The connection is made on first use and again after it is lost;
    ``reset()`` drops it (the breaker does when it opens, so a connection that hangs
    without closing is not reused).
    """

    def __init__(
        self, host: str, port: int, username: str | None = None, password: str | None = None, db: int = 0
    ) -> None:
        self.host = host
        self.port = port
        self._hello: list[bytes] = []
        if password is not None:
            auth = [b"AUTH", username.encode(), password.encode()] if username else [b"AUTH", password.encode()]
            self._hello.append(_command(*auth))
        if db:
            self._hello.append(_command(b"SELECT", str(db).encode()))
        self._replies: _Replies | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def for_config(cls, config: CacheConfig) -> PipelinedGets | None:
        """The pipelined road where it applies (a single server over plain TCP), else ``None``."""
        if hiredis is None or config.redis_mode != "single" or not (config.redis_url or "").startswith("redis://"):
            return None
        parsed = redis.connection.parse_url(config.redis_url)
        return cls(
            parsed.get("host", "localhost"),
            parsed.get("port", 6379),
            parsed.get("username"),
            parsed.get("password"),
            parsed.get("db", 0),
        )

    async def _connected(self, timeout: float) -> _Replies:
        async with self._lock:  # one connect at a time; the lookups behind it use the result
            if self._replies is None or not self._replies.open:
                _, replies = await asyncio.get_running_loop().create_connection(_Replies, self.host, self.port)
                try:
                    for command in self._hello:
                        await replies.send(command, timeout)
                except BaseException:
                    replies.close()
                    raise
                self._replies = replies
            return self._replies

    def get(self, key: str, timeout: float) -> Awaitable[bytes | None]:
        """``GET key``; ``TimeoutError`` past ``timeout`` seconds (connecting included)."""
        encoded = key.encode()
        return self.send(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(encoded), encoded), timeout)

    def send(self, command: bytes, timeout: float) -> Awaitable[Any]:
        """A command already encoded (RESP), on the same connection (the fleet's scripts: ``proxy/fleet``).

        Connected, it is the reply's future itself: no coroutine per lookup."""
        replies = self._replies
        if replies is None or not replies.open:
            return self._send_connecting(command, timeout)
        return replies.send(command, timeout)

    async def _send_connecting(self, command: bytes, timeout: float) -> Any:
        # One timeout for the wait on the lock, the connect and the reply: lookups queued
        # behind a connect that fails must not wait one timeout after another.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with asyncio.timeout_at(deadline):
            replies = await self._connected(timeout)
        return await replies.send(command, deadline - loop.time())

    def reset(self) -> None:
        if self._replies is not None:
            self._replies.close()
            self._replies = None

    def close(self) -> None:
        self.reset()


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + _bulk(*parts)


def _bulk(*parts: bytes) -> bytes:
    """``parts`` as RESP bulk strings, one after the other."""
    return b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)


class RedisBackend:
    """Async Redis operations that never raise and never take longer than ``operation_timeout``."""

    distributed = True

    def __init__(
        self,
        client: Any,
        operation_timeout: float = 0.1,
        breaker_failures: int = 5,
        breaker_cooldown: float = 2.0,
        gets: PipelinedGets | None = None,
    ) -> None:
        self.client = client
        #: the lookups' road (``PipelinedGets``), or redis-py's ``GET``
        self.gets = gets
        self.timeout = operation_timeout
        self.breaker = Breaker(breaker_failures, breaker_cooldown, half_open=False)
        self.errors = 0
        #: operations answered without Redis because the circuit was open
        self.skipped = 0
        self._probe: asyncio.Task[None] | None = None
        #: lock releases to try again once Redis answers (``release``)
        self._releases: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, config: CacheConfig) -> RedisBackend:
        return cls(
            async_client(config),
            config.operation_timeout,
            config.breaker_failures,
            config.breaker_cooldown,
            PipelinedGets.for_config(config),
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBackend:
        config = CacheConfig(backend="redis", redis_url=url, **options)
        return cls.from_config(config)

    @property
    def available(self) -> bool:
        return not self.breaker.is_open

    async def _run(
        self,
        default: T,
        operation: Callable[..., Awaitable[T]],
        *args: Any,
        timed: bool = True,
        cache_write: bool = False,
        **kwargs: Any,
    ) -> T:
        """``operation``'s result, or ``default`` when Redis is not usable; ``timed=False``: the
        operation keeps to ``self.timeout`` itself (the pipelined connection's replies do).

        ``cache_write``: a cache entry's or lock's write, which a full Redis (maxmemory, evicting
        nothing) refuses while it still answers reads: not Redis down, so not the circuit's
        business (opening it would lose every hit Redis holds)."""
        if self.breaker.is_open:
            self.skipped += 1
            return default
        try:
            if timed:
                async with asyncio.timeout(self.timeout):
                    result = await operation(*args, **kwargs)
            else:
                result = await operation(*args, **kwargs)
        except _FAILURES as exc:
            if cache_write and isinstance(exc, OutOfMemoryError):
                self.errors += 1
            else:
                self._failed(exc)
            return default
        if self.breaker.failures:
            self.breaker.success()
        return result

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.breaker.failure(exc):
            if self.gets is not None:
                self.gets.reset()  # it may hang without closing: make a fresh one when Redis is back
            if self._probe is None or self._probe.done():
                self._probe = asyncio.get_running_loop().create_task(self._reconnect())

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

    async def get(self, key: str, default: Any = None) -> Any:
        """The value, ``None`` if absent, ``default`` if Redis could not answer."""
        gets = self.gets
        if gets is None:
            return await self._run(default, self.client.get, key)
        # ``_run`` written out for the hot read: one coroutine per lookup, not three.
        if self.breaker.is_open:
            self.skipped += 1
            return default
        try:
            value = await gets.get(key, self.timeout)
        except _FAILURES as exc:
            self._failed(exc)
            return default
        if self.breaker.failures:
            self.breaker.success()
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        """Whether the value was stored (false: Redis failed, or its circuit is open)."""
        return bool(await self._run(False, self.client.set, key, value, px=max(1, int(ttl * 1000)), cache_write=True))

    async def delete(self, key: str) -> None:
        await self._run(None, self.client.delete, key)

    async def exists(self, key: str) -> bool:
        return bool(await self._run(0, self.client.exists, key))

    async def clear(self, prefix: str = "") -> None:
        async def clear() -> None:
            keys = [key async for key in self.client.scan_iter(match=starting_with(prefix), count=500)]
            for key in keys:
                await self.client.delete(key)

        await self._run(None, clear)

    async def acquire(self, key: str, ttl: float) -> str | None:
        """Take a cross-pod lock: its token when taken, ``None`` when another pod holds it.

        With Redis unusable there is nobody to coordinate with, so the caller leads.
        """
        token = uuid.uuid4().hex
        taken = await self._run(
            True, self.client.set, key, token, px=max(1, int(ttl * 1000)), nx=True, cache_write=True
        )
        return token if taken else None

    async def release(self, key: str, token: str, ttl: float = 0.0) -> None:
        """Release the lock if it is still ours. A release Redis could not take (down, or its
        circuit open) is tried again every ``breaker_cooldown`` while the lock may live (``ttl``):
        a lock left behind by a blip would make every identical call, in every pod, wait for an
        answer no one is making until the lock expired."""
        if await self._run(None, self.client.eval, _RELEASE, 1, key, token) is None and ttl > 0:
            task = asyncio.get_running_loop().create_task(self._release_later(key, token, time.monotonic() + ttl))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _release_later(self, key: str, token: str, until: float) -> None:
        while time.monotonic() + self.breaker.cooldown < until:
            await asyncio.sleep(self.breaker.cooldown)
            if await self._run(None, self.client.eval, _RELEASE, 1, key, token) is not None:
                return

    async def script(self, default: T, script: Script, keys: list[str], args: list[Any]) -> T | Any:
        """Run a Lua script (one round trip), or ``default`` when Redis is not usable."""
        return await self.call(default, ScriptCall(script, keys, []), args)

    async def call(self, default: T, call: ScriptCall, args: list[Any]) -> T | Any:
        """Run ``call``'s script with ``args`` after its fixed ones, or ``default`` when Redis is not usable."""
        script = call.script
        gets = self.gets
        if gets is not None:  # a single server: the pipelined road, as lookups take
            rest = [str(a).encode() for a in args]
            body = call.encoded + _bulk(*rest)
            count = 2 + call.count + len(rest)
            timeout = self.timeout

            async def pipelined() -> Any:
                try:
                    return await gets.send(b"*%d\r\n%b%b" % (count, script.evalsha, body), timeout)
                except ResponseError as exc:
                    if not str(exc).startswith("NOSCRIPT"):
                        raise
                    return await gets.send(
                        b"*%d\r\n%b%b" % (count, _bulk(b"EVAL", script.text.encode()), body), timeout
                    )

            return await self._run(default, pipelined, timed=False)

        parts = [*call.keys, *call.fixed, *args]

        async def run() -> Any:
            try:
                return await self.client.evalsha(script.sha, len(call.keys), *parts)
            except NoScriptError:  # a restarted or new server: EVAL loads it
                return await self.client.eval(script.text, len(call.keys), *parts)

        return await self._run(default, run)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        for task in self._releases:
            task.cancel()
        if self.gets is not None:
            self.gets.close()
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

    def _run(self, default: T, operation: Callable[..., T], *args: Any, cache_write: bool = False, **kwargs: Any) -> T:
        """``cache_write``: as ``RedisBackend._run``'s, a full Redis's OOM is no failure of the circuit's."""
        if self.breaker.is_open:
            self.skipped += 1
            return default
        try:
            result = operation(*args, **kwargs)
        except _FAILURES as exc:
            self.errors += 1
            if not (cache_write and isinstance(exc, OutOfMemoryError)):
                self.breaker.failure(exc)
            return default
        if self.breaker.failures:
            self.breaker.success()
        return result

    def get_now(self, key: str, default: Any = None) -> Any:
        return self._run(default, self.client.get, key)

    def set_now(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(self._run(False, self.client.set, key, value, px=max(1, int(ttl * 1000)), cache_write=True))

    def delete_now(self, key: str) -> None:
        self._run(None, self.client.delete, key)

    def clear_now(self, prefix: str = "") -> None:
        def clear() -> None:
            for key in list(self.client.scan_iter(match=starting_with(prefix), count=500)):
                self.client.delete(key)

        self._run(None, clear)

    def close(self) -> None:
        try:
            self.client.close()
        except _FAILURES:
            pass
