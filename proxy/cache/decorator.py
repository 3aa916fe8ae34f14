"""``DistributedCacheDecorator``: cache a function's results in memory or in a shared Redis.

    @DistributedCacheDecorator(ttl=60, cache_backend="redis")
    def fetch_llm_response(prompt: str, model: str = "gpt-4") -> dict: ...

Contract:

- Works on sync and async functions and methods. The key is the function's
  module-qualified name plus a hash of its arguments *as bound to its signature*
  (defaults applied), so ``f("hi")``, ``f(prompt="hi")`` and ``f("hi", "gpt-4")``
  share one entry. ``self``/``cls`` are left out of the key: a cached method must
  not depend on instance state beyond its arguments. Lambdas, nested functions and
  a script's functions (``__main__``), whose names repeat, add a digest of their
  code, and nested ones the unchanging values they closed over (strings, numbers ...).
- Arguments are hashed as canonical JSON in which each container and non-JSON
  value carries its type (tuples, sets, bytes, enums, dates, dataclasses and
  pydantic models have stable spellings; a tuple is not a list, NaN not None). An argument with no
  stable spelling makes that call uncached (counted in ``stats.unhashable``),
  never wrong.
- Values are serialised with ``serializer`` (JSON by default, storing only what
  JSON gives back as it was; any object with ``dumps(obj) -> bytes`` and
  ``loads(bytes) -> obj``), compressed above ``compress_threshold``.
- ``cache_backend``: ``"memory"`` (per process), ``"redis"`` (``redis_url`` or
  ``REDIS_URL``), or a backend instance (``MemoryBackend``, ``SyncRedisBackend``,
  ``RedisBackend`` for async functions only).
- Thread-safe; identical concurrent calls run the function once (per process)
  and all get its result, or its exception.
- Fails open: with Redis slow or down the function simply runs; each lookup or store
  Redis could not do counts in ``stats.errors``.
- The wrapper has ``invalidate(*args, **kwargs)`` (one entry), ``cache_clear()``
  (every entry of this function) and ``stats``; for async functions the first
  two return awaitables.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import datetime
import decimal
import enum
import functools
import hashlib
import inspect
import math
import os
import threading
import types
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from proxy.cache.compression import pack, unpack
from proxy.cache.config import CacheConfig
from proxy.cache.memory import MemoryBackend

_IGNORED = frozenset({"self", "cls"})
#: what a backend answers a lookup with when it cannot (Redis down): a miss that is also an error
_FAILED = object()


class Serializer(Protocol):
    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    """JSON via orjson: safe to share between processes (no code runs on load)."""

    def dumps(self, value: Any) -> bytes:
        data = orjson.dumps(value)
        # A hit must give back what the function returned, and JSON gives a tuple back as a list,
        # a dataclass as a dict, {1: x} as {"1": x}, NaN as None, a date as a string: such a
        # value is refused (the caller still gets it; another serializer= can store it).
        if not _same(orjson.loads(data), value):
            raise ValueError(f"JSON does not give a {type(value).__qualname__} back as it was")
        return data

    def loads(self, data: bytes) -> Any:
        return orjson.loads(data)


def _same(back: Any, value: Any) -> bool:
    """Whether JSON's reading ``back`` is ``value``: equal, and of the same types all the way down."""
    if type(back) is not type(value):
        return False
    if type(value) is dict:
        return back.keys() == value.keys() and all(_same(back[key], item) for key, item in value.items())
    if type(value) is list:
        return len(back) == len(value) and all(map(_same, back, value))
    return bool(back == value)


JSON = JSONSerializer()


@dataclasses.dataclass
class DecoratorStats:
    hits: int = 0
    misses: int = 0
    #: calls that waited for an identical call in flight instead of computing
    coalesced: int = 0
    #: backend or serialisation failures (the call still ran)
    errors: int = 0
    #: calls with an argument that has no stable spelling (not cached)
    unhashable: int = 0


class _Unhashable(Exception):
    pass


#: values spelled exactly by their repr (which names their type and every field)
_BY_REPR = (datetime.date, datetime.time, datetime.timedelta, decimal.Decimal, uuid.UUID)


def _spell(value: Any) -> Any:
    """A JSON form of a call's argument in which arguments that differ have different forms.

    orjson alone spells many different values alike (a tuple and a list, NaN and None, ``{1: x}``
    and ``{"1": x}``, a dataclass and a dict of its fields, an enum and its value), and a shared
    key would hand one call another's answer; so every container and non-JSON value carries its
    type here, and only str, int, bool, None and finite floats stand for themselves.
    """
    kind = type(value)
    if value is None or kind is str or kind is int or kind is bool:
        return value
    if kind is float:
        return value if math.isfinite(value) else ["float", repr(value)]
    if kind is list or kind is tuple:
        return [kind.__name__, *map(_spell, value)]
    if kind is dict:
        return ["dict", *sorted(([_spell(k), _spell(v)] for k, v in value.items()), key=orjson.dumps)]
    if kind is set or kind is frozenset:
        return ["set", *sorted(map(_spell, value), key=orjson.dumps)]
    if kind is bytes:
        return ["bytes", base64.b64encode(value).decode()]
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(value, enum.Enum):
        return ["enum", name, value.name]
    if isinstance(value, _BY_REPR):
        return ["repr", repr(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ["dataclass", name, *([f.name, _spell(getattr(value, f.name))] for f in dataclasses.fields(value))]
    if hasattr(value, "model_dump") and not isinstance(value, type):
        return ["model", name, _spell(value.model_dump(mode="json"))]
    raise _Unhashable(name)


def _code_spelling(code: types.CodeType) -> list[Any]:
    """A function's code as JSON: its instructions, the names and the constants they use."""
    consts: list[Any] = []
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            consts.append(_code_spelling(const))
        else:
            try:
                consts.append(_spell(const))
            except _Unhashable:
                consts.append(repr(const))
    return [base64.b64encode(code.co_code).decode(), list(code.co_names), consts]


def _fixed(value: Any) -> bool:
    """Whether a value cannot change: a nested function closed over it is configured by it."""
    if isinstance(value, (tuple, frozenset)):
        return all(map(_fixed, value))
    return value is None or isinstance(value, (str, int, float, bytes, enum.Enum, *_BY_REPR))


def _captured(function: Callable[..., Any]) -> dict[str, Any]:
    """The values that cannot change a nested function closed over (a factory's ``factor``); the
    others (a client, a list it appends to, the function itself) stay out of the key, as ``self`` does."""
    found = {}
    for name, cell in zip(function.__code__.co_freevars, function.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # a cell not filled yet
            continue
        if _fixed(value):
            try:
                found[name] = _spell(value)
            except _Unhashable:  # a str or int subclass of its own
                pass
    return found


class DistributedCacheDecorator:
    def __init__(
        self,
        ttl: float = 300,
        cache_backend: str | Any = "memory",
        *,
        redis_url: str | None = None,
        namespace: str = "default",
        serializer: Serializer = JSON,
        max_bytes: int = 64 * 1024 * 1024,
        compress_threshold: int = 4096,
        operation_timeout: float = 0.1,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be > 0 seconds")
        self.ttl = ttl
        self.namespace = namespace
        self.serializer = serializer
        self.compress_threshold = compress_threshold
        self._sync_backend: Any = None
        self._async_backend: Any = None
        self._async_factory: Callable[[], Any] | None = None
        self._per_loop: dict[asyncio.AbstractEventLoop, Any] = {}
        if cache_backend == "memory":
            self._sync_backend = self._async_backend = MemoryBackend(max_bytes)
        elif cache_backend == "redis":
            url = redis_url or os.environ.get("REDIS_URL")
            if not url:
                raise ValueError('cache_backend="redis" needs redis_url= or the REDIS_URL environment variable')
            config = CacheConfig(backend="redis", redis_url=url, operation_timeout=operation_timeout)
            self._config = config
            self._async_factory = self._redis_async
        elif isinstance(cache_backend, str):
            raise ValueError(f"cache_backend must be 'memory', 'redis' or a backend instance, not {cache_backend!r}")
        else:
            # An instance serves the kinds of functions it has methods for.
            if hasattr(cache_backend, "get_now"):
                self._sync_backend = cache_backend
            if inspect.iscoroutinefunction(getattr(cache_backend, "get", None)):
                self._async_backend = cache_backend
            if self._sync_backend is None and self._async_backend is None:
                raise TypeError(f"not a cache backend: {type(cache_backend).__qualname__}")

    # ------------------------------------------------------------------ backends

    def _redis_async(self) -> Any:
        from proxy.cache.redis import RedisBackend

        return RedisBackend.from_config(self._config)

    def sync_backend(self) -> Any:
        if self._sync_backend is None:
            if self._async_factory is None:
                raise TypeError("this cache backend is async-only: decorate an async function")
            from proxy.cache.redis import SyncRedisBackend

            with _CREATION:
                if self._sync_backend is None:
                    self._sync_backend = SyncRedisBackend.from_config(self._config)
        return self._sync_backend

    def async_backend(self) -> Any:
        if self._async_backend is not None:
            return self._async_backend
        if self._async_factory is None:
            raise TypeError("this backend is sync-only: decorate a sync function")
        # An async Redis client belongs to the loop it was made on.
        loop = asyncio.get_running_loop()
        backend = self._per_loop.get(loop)
        if backend is None:
            with _CREATION:
                # A client holds its loop, so an entry never leaves by itself: those of loops that
                # have closed (asyncio.run per call) are dropped, and their sockets close with them.
                for closed in [old for old in self._per_loop if old.is_closed()]:
                    del self._per_loop[closed]
                backend = self._per_loop[loop] = self._async_factory()
        return backend

    # ------------------------------------------------------------------ decorating

    def __call__(self, function: Callable[..., Any]) -> Callable[..., Any]:
        if getattr(function, "__wrapped__", None) is not None and hasattr(function, "invalidate"):
            raise TypeError("this function is cached already")
        return _Cached(self, function).wrapper()


_CREATION = threading.Lock()


class _Cached:
    """The per-function state behind one decorated function."""

    def __init__(self, owner: DistributedCacheDecorator, function: Callable[..., Any]) -> None:
        self.owner = owner
        self.function = function
        self.signature = inspect.signature(function)
        params = list(self.signature.parameters)
        self.skip_first = bool(params) and params[0] in _IGNORED
        name = f"{function.__module__}.{function.__qualname__}"
        # Lambdas and nested functions share their qualified names, and so do every script's
        # functions (__main__.summarize): the code tells them apart (square and cube, two scripts),
        # and what a nested function closed over (a factory's double and triple) joins the key.
        repeated = "<" in function.__qualname__ or function.__module__ == "__main__"
        self.closure = "<" in function.__qualname__ and bool(getattr(function, "__closure__", None))
        if repeated and hasattr(function, "__code__"):
            code = hashlib.sha256(orjson.dumps(_code_spelling(function.__code__))).hexdigest()[:16]
            name = f"{name}:{code}"
        self.prefix = f"llmsc-fn:{owner.namespace}:{name}:"
        self.stats = DecoratorStats()
        self.is_async = inspect.iscoroutinefunction(function)
        self._lock = threading.Lock()
        self._sync_flights: dict[str, concurrent.futures.Future[Any]] = {}
        self._async_flights: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        if not self.is_async:
            owner.sync_backend()  # fail at decoration time, not on the first call

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:
            if not self.skip_first:
                raise
            bound = self.signature.bind(None, *args, **kwargs)  # invalidate() called without self
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if self.skip_first:
            arguments.pop(next(iter(self.signature.parameters)))
        if self.closure:
            arguments = {"arguments": arguments, "closure": _captured(self.function)}
        try:
            canonical = orjson.dumps(_spell(arguments))
        except (_Unhashable, TypeError, ValueError, RecursionError):
            self.count("unhashable")
            return None
        return self.prefix + hashlib.sha256(canonical).hexdigest()

    def looked_up(self, value: Any) -> bytes | None:
        """The backend's answer to a lookup; one it could not give is an error (and a miss)."""
        if value is _FAILED:
            self.count("errors")
            return None
        return value

    def decode(self, value: bytes | None) -> tuple[bool, Any]:
        if value is None:
            return False, None
        try:
            return True, self.owner.serializer.loads(bytes(unpack(value)))
        except Exception:  # a serializer raises its own errors (pickle: UnpicklingError, AttributeError)
            self.count("errors")  # an entry that cannot be read is a miss: the function runs
            return False, None

    def encode(self, value: Any) -> bytes | None:
        try:
            return pack(self.owner.serializer.dumps(value), self.owner.compress_threshold)
        except Exception:  # a serializer raises its own errors (pickle: PicklingError, AttributeError)
            self.count("errors")  # the result cannot be stored; the caller still gets it
            return None

    # ---------------------------------------------------------------- sync

    def call_sync(self, *args: Any, **kwargs: Any) -> Any:
        key = self.key(args, kwargs)
        if key is None:
            return self.function(*args, **kwargs)
        backend = self.owner.sync_backend()
        found, value = self.decode(self.looked_up(backend.get_now(key, _FAILED)))
        if found:
            self.count("hits")
            return value
        with self._lock:
            flight = self._sync_flights.get(key)
            leader = flight is None
            if leader:
                flight = self._sync_flights[key] = concurrent.futures.Future()
        assert flight is not None
        if not leader:
            self.count("coalesced")
            return flight.result()
        self.count("misses")
        try:
            value = self.function(*args, **kwargs)
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            # The waiters get the value first: storing it may fail, and must not keep them waiting.
            flight.set_result(value)
            encoded = self.encode(value)
            if encoded is not None and not backend.set_now(key, encoded, self.owner.ttl):
                self.count("errors")
            return value
        finally:
            with self._lock:
                self._sync_flights.pop(key, None)

    def invalidate_sync(self, *args: Any, **kwargs: Any) -> None:
        key = self.key(args, kwargs)
        if key is not None:
            self.owner.sync_backend().delete_now(key)

    def clear_sync(self) -> None:
        self.owner.sync_backend().clear_now(self.prefix)

    # ---------------------------------------------------------------- async

    async def call_async(self, *args: Any, **kwargs: Any) -> Any:
        key = self.key(args, kwargs)
        if key is None:
            return await self.function(*args, **kwargs)
        backend = self.owner.async_backend()
        found, value = self.decode(self.looked_up(await backend.get(key, _FAILED)))
        if found:
            self.count("hits")
            return value
        loop = asyncio.get_running_loop()
        current = self._async_flights.get(key)
        if current is not None and current[0] is loop:
            self.count("coalesced")
            try:
                return await asyncio.shield(current[1])
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not current[1].cancelled() or task is None or task.cancelling():
                    raise
                # The call we waited on was cancelled by its own caller, not by ours: run it anew.
                return await self.call_async(*args, **kwargs)
        flight: asyncio.Future[Any] = loop.create_future()
        self._async_flights[key] = (loop, flight)
        self.count("misses")
        try:
            value = await self.function(*args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                flight.cancel()
            else:
                flight.set_exception(exc)
                flight.exception()  # retrieved: no "never retrieved" warning when nobody followed
            raise
        else:
            # The waiters get the value first: storing it may fail or be cancelled.
            flight.set_result(value)
            encoded = self.encode(value)
            if encoded is not None and not await backend.set(key, encoded, self.owner.ttl):
                self.count("errors")
            return value
        finally:
            if self._async_flights.get(key, (None, None))[1] is flight:
                del self._async_flights[key]

    async def invalidate_async(self, *args: Any, **kwargs: Any) -> None:
        key = self.key(args, kwargs)
        if key is not None:
            await self.owner.async_backend().delete(key)

    async def clear_async(self) -> None:
        await self.owner.async_backend().clear(self.prefix)

    # ---------------------------------------------------------------- the wrapper

    def wrapper(self) -> Callable[..., Any]:
        if self.is_async:

            @functools.wraps(self.function)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.call_async(*args, **kwargs)

            handles: dict[str, Any] = {"invalidate": self.invalidate_async, "cache_clear": self.clear_async}
        else:

            @functools.wraps(self.function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return self.call_sync(*args, **kwargs)

            handles = {"invalidate": self.invalidate_sync, "cache_clear": self.clear_sync}
        # The cache's handles become attributes of the function, as with functools.lru_cache.
        vars(wrapper).update(handles, stats=self.stats, cache_key=self.key)
        return wrapper
