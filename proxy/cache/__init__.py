"""The response cache: lookup, coalescing and recording in front of the router.

    keys.py            what an answer depends on → a tenant-namespaced key
    directives.py      Cache-Control / TTL header of one call
    entry.py           one stored answer and its bytes (compression.py packs them)
    coalesce.py        one Flight per key in flight; followers fan out from it
    recorder.py        what the relay feeds; builds the entry as frames pass
    response_cache.py  the pipeline's cache step over a backend
    memory.py          LRU bounded by bytes, TTL per entry
    redis.py           Redis / Sentinel / Cluster, failing open; Redis errors end here
    decorator.py       DistributedCacheDecorator, the library face over the same backends

``build_cache`` picks the backend from the config; ``NullCache`` (``backend: none``)
has the same methods and does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from proxy.cache.recorder import NULL_RECORDER, Recorder

if TYPE_CHECKING:
    from proxy.cache.coalesce import Following
    from proxy.cache.entry import Stored
    from proxy.cache.response_cache import GroupCaching
    from proxy.call import Call
    from proxy.config import Config
    from proxy.errors import ProxyError


class Cache(Protocol):
    """What the pipeline asks of the cache (see ``response_cache.ResponseCache``).

    The cache never writes to the client: it hands back a ``Stored`` answer or a
    ``Following`` stream, and the relay (``proxy/relay.py``) writes it.
    """

    async def lookup(self, call: Call) -> Stored | None: ...

    async def coalesce(self, call: Call) -> Stored | Following | None: ...

    def recorder(self, call: Call) -> Recorder: ...

    async def rescue(self, call: Call, error: ProxyError) -> Stored | None: ...

    def settle(self, call: Call) -> None: ...

    async def close(self) -> None: ...


class NullCache:
    """No cache: every lookup misses, nothing is stored, nothing coalesces."""

    async def lookup(self, call: Call) -> None:
        return None

    async def coalesce(self, call: Call) -> None:
        return None

    def recorder(self, call: Call) -> Recorder:
        return NULL_RECORDER

    async def rescue(self, call: Call, error: ProxyError) -> None:
        return None

    def settle(self, call: Call) -> None:
        pass

    async def close(self) -> None:
        pass


def build_cache(config: Config) -> Cache:
    """The cache the config asks for; a Redis client connects lazily, on its first command."""
    from proxy.cache.response_cache import ResponseCache

    settings = config.cache
    if settings.backend == "none":
        return NullCache()
    if settings.backend == "redis":
        from proxy.cache.redis import RedisBackend

        return ResponseCache(settings, group_caching(config), RedisBackend.from_config(settings))
    from proxy.cache.memory import MemoryBackend

    return ResponseCache(settings, group_caching(config), MemoryBackend(settings.max_bytes))


def group_caching(config: Config) -> dict[str, GroupCaching]:
    """Per model group: its cache policy and whether its credentials pass through."""
    from proxy.cache.response_cache import GroupCaching

    return {
        name: GroupCaching(
            group.cache,
            any(e.pass_through_key for e in group.endpoints)
            or (group.discover is not None and group.discover.endpoint.pass_through_key),
        )
        for name, group in config.model_groups.items()
    }


__all__ = ["NULL_RECORDER", "Cache", "NullCache", "Recorder", "build_cache", "group_caching"]
