"""The response cache. Until a backend is configured, every lookup misses and nothing is stored."""

from __future__ import annotations

from proxy.cache.recorder import NULL_RECORDER, Recorder
from proxy.call import Call


class NullCache:
    async def lookup(self, call: Call) -> None:
        return None

    def recorder(self, call: Call) -> Recorder:
        return NULL_RECORDER

    async def close(self) -> None:
        pass
