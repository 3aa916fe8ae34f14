"""The in-memory backend: an LRU of packed values, bounded by bytes, with a TTL per entry.

The response cache may keep a decoded ``Entry`` instead of its raw (uncompressed)
encoding, so a hit decodes nothing; it counts as the bytes of that encoding.
The bound counts the stored (compressed) bytes, the key and what Python spends to
hold an entry (the objects' headers, the expiry, the table slot), so a process's
cache memory is what the config says. It is thread-safe (the decorator calls it from
many threads) and never blocks: every operation is a dict step under a lock.
The async methods exist so the proxy and async callers see one interface with
the Redis backend; they never suspend.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from proxy.cache.entry import Entry

# Per entry, past the key's and the value's own bytes: the bytes and str headers, the
# (value, expiry) tuple and its float, and the OrderedDict's table slot and node (~56
# bytes, measured with tracemalloc). Small entries cost twice their bytes without it.
_ENTRY_OVERHEAD = sys.getsizeof(b"") + sys.getsizeof("") + sys.getsizeof((b"", 0.0)) + sys.getsizeof(0.0) + 56


class MemoryBackend:
    #: within one process, coalescing needs no lock store
    distributed = False

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        #: what expiry is measured with (tests give a clock they move)
        self.clock = clock
        # key -> (value, expires at, monotonic)
        self._items: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.evictions = 0

    @property
    def entries(self) -> int:
        return len(self._items)

    @staticmethod
    def _size(key: str, value: bytes | Entry) -> int:
        return len(key) + (value.size if isinstance(value, Entry) else len(value)) + _ENTRY_OVERHEAD

    def get_now(self, key: str, default: Any = None) -> Any:
        # ``default`` is what a backend that can fail answers then; this one cannot.
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[1] <= self.clock():
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return item[0]

    def set_now(self, key: str, value: bytes | Entry, ttl: float) -> bool:
        size = self._size(key, value)
        if size > self.max_bytes:
            return False
        with self._lock:
            if key in self._items:
                self._drop(key)
            self._items[key] = (value, self.clock() + ttl)
            self.bytes += size
            while self.bytes > self.max_bytes:
                oldest = next(iter(self._items))
                self._drop(oldest)
                self.evictions += 1
        return True

    def delete_now(self, key: str) -> None:
        with self._lock:
            if key in self._items:
                self._drop(key)

    def clear_now(self, prefix: str = "") -> None:
        with self._lock:
            for key in [k for k in self._items if k.startswith(prefix)]:
                self._drop(key)

    def _drop(self, key: str) -> None:
        value, _ = self._items.pop(key)
        self.bytes -= self._size(key, value)

    async def get(self, key: str, default: Any = None) -> Any:
        return self.get_now(key)

    async def set(self, key: str, value: bytes | Entry, ttl: float) -> bool:
        return self.set_now(key, value, ttl)

    async def delete(self, key: str) -> None:
        self.delete_now(key)

    async def clear(self, prefix: str = "") -> None:
        self.clear_now(prefix)

    async def acquire(self, key: str, ttl: float) -> str | None:
        """Cross-process lock: one process has nothing to exclude, so it always leads."""
        return "local"

    async def release(self, key: str, token: str, ttl: float = 0.0) -> None:
        pass

    async def exists(self, key: str) -> bool:
        return False

    async def close(self) -> None:
        pass
