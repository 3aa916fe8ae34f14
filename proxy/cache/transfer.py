"""Cache entries out and in: ``llm-sidecar cache export`` / ``cache import``, and ``cache.preload``.

The format is JSON lines, one stored entry each, exactly as the backend holds it::

    {"key": "llmsc:default:3f…", "value": "<base64 of the stored bytes>", "ttl": 3512.4, "expires_at": 1767…}

``ttl`` is the seconds it had left when exported (``null``: no expiry); ``expires_at`` the
same as a Unix time, which is what an import goes by, so a file loaded an hour later never
brings back an entry that expired in between. Both directions stream: a batch of keys at a
time (one pipelined round trip per batch), never the whole cache in memory. Only the
configured namespace's entries (its tenants' too) go out; coalescing locks never do.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

#: keys per round trip
BATCH = 500


class BadLine(ValueError):
    """A line of an import file that is not an entry; the message names the line."""


@dataclass(frozen=True, slots=True)
class Exported:
    key: str
    value: bytes
    #: Unix time it expires at, or None
    expires_at: float | None

    def ttl(self, now: float) -> float | None:
        """Seconds left (None: no expiry); 0 or less once expired."""
        return None if self.expires_at is None else self.expires_at - now


def _in_namespace(key: str, namespace: str) -> bool:
    # llmsc:{tenant}:{digest}, where a tenant is the namespace or "namespace.<credential hash>"
    parts = key.split(":")
    if len(parts) != 3 or parts[0] != "llmsc":
        return False
    return parts[1] == namespace or parts[1].startswith(namespace + ".")


async def _keys(client: Any, namespace: str) -> AsyncIterator[list[bytes]]:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"llmsc:{namespace}*", count=BATCH):
        if _in_namespace(key.decode(), namespace):
            batch.append(key)
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


async def export_entries(client: Any, namespace: str, out: IO[bytes]) -> int:
    """Write the namespace's entries from Redis (redis-py's asyncio client) to ``out``; their count."""
    count = 0
    async for keys in _keys(client, namespace):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.pttl(key)
        replies = await pipe.execute()
        now = time.time()
        for key, value, pttl in zip(keys, replies[::2], replies[1::2]):
            if value is None or pttl == -2:  # expired or deleted since the scan
                continue
            ttl = None if pttl < 0 else pttl / 1000
            line = {
                "key": key.decode(),
                "value": base64.b64encode(value).decode(),
                "ttl": ttl,
                "expires_at": None if ttl is None else round(now + ttl, 3),
            }
            out.write(orjson.dumps(line) + b"\n")
            count += 1
    return count


#: seconds at most in a time read from a file: Redis takes what is left as milliseconds in 64 bits
_LONGEST = 1e12


def _seconds(value: Any, name: str) -> float:
    """``value`` as seconds (a number, or a string of one); a ``ValueError`` naming ``name`` for anything else."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not abs(seconds) <= _LONGEST:  # NaN fails the comparison too
        raise ValueError(f"{name}: not a number of seconds")
    return seconds


def read_entries(lines: Iterable[bytes]) -> Iterator[Exported]:
    """The entries of an export, line by line; ``BadLine`` names the first line that is not one."""
    now = time.time()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
            key, value = item["key"], base64.b64decode(item["value"], validate=True)
            expires_at = item.get("expires_at")
            if expires_at is not None:
                expires_at = _seconds(expires_at, "expires_at")
            elif item.get("ttl") is not None:
                expires_at = now + _seconds(item["ttl"], "ttl")
            if not isinstance(key, str) or not key.startswith("llmsc:"):
                raise ValueError("key: not a cache key (llmsc:…)")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise BadLine(f"line {number}: not a cache entry ({exc})") from None
        yield Exported(key, value, None if expires_at is None else float(expires_at))


async def import_entries(client: Any, entries: Iterable[Exported]) -> tuple[int, int]:
    """Store ``entries`` in Redis with the time they have left: (imported, skipped as expired)."""
    imported = expired = 0
    pipe = client.pipeline(transaction=False)
    queued = 0
    for entry in entries:
        ttl = entry.ttl(time.time())
        if ttl is not None and ttl <= 0:
            expired += 1
            continue
        pipe.set(entry.key, entry.value, px=None if ttl is None else max(1, int(ttl * 1000)))
        queued += 1
        if queued == BATCH:
            await pipe.execute()
            imported += queued
            pipe, queued = client.pipeline(transaction=False), 0
    if queued:
        await pipe.execute()
        imported += queued
    return imported, expired


async def preload(backend: Any, path: str) -> tuple[int, int]:
    """``cache.preload``: the file's live entries into the sidecar's backend (memory or Redis, failing
    open), a batch at a time: (stored, skipped as expired or not stored)."""
    stored = skipped = 0
    with open(path, "rb") as lines:
        batch: list[Exported] = []
        for entry in read_entries(lines):
            batch.append(entry)
            if len(batch) == BATCH:
                done = await _store(backend, batch)
                stored, skipped = stored + done, skipped + len(batch) - done
                batch = []
                await asyncio.sleep(0)  # calls keep flowing while a large file loads
        if batch:
            done = await _store(backend, batch)
            stored, skipped = stored + done, skipped + len(batch) - done
    return stored, skipped


async def _store(backend: Any, entries: list[Exported]) -> int:
    now = time.time()
    live = [(e, e.ttl(now)) for e in entries]
    results = await asyncio.gather(
        *(
            backend.set(e.key, e.value, ttl if ttl is not None else 365 * 86400.0)
            for e, ttl in live
            if ttl is None or ttl > 0
        )
    )
    return sum(1 for ok in results if ok)
