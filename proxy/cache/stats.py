"""Counters a metrics collector reads at scrape time (no per-call metric objects here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    #: the part of ``hits`` answered by the in-process tier in front of Redis (``local_ttl``)
    local_hits: int = 0
    misses: int = 0
    #: calls answered by an identical call in flight (in this process or another pod)
    coalesced: int = 0
    #: expired entries served because every upstream failed (``stale_if_error``)
    stale: int = 0
    #: calls the cache did not look up: not cacheable by policy, or ``no-cache``/``no-store``
    bypass: int = 0
    #: entries that could not be read back (corrupt, or unknown packing)
    corrupt: int = 0
    stores: int = 0
    #: complete answers the backend did not take (Redis failed or its circuit is open)
    store_failures: int = 0
    #: answers not stored: too large, not 2xx, cut mid-stream
    not_stored: int = 0
    #: tokens the upstream did not have to produce, summed over hits, coalesced and stale answers
    input_tokens_saved: int = 0
    output_tokens_saved: int = 0
    lookups: int = 0
    lookup_seconds: float = 0.0
