"""What one call asks of the cache: ``Cache-Control`` and the TTL header.

``no-cache``  skip the lookup (and coalescing), still store the fresh answer
``no-store``  do not store this answer (nor share it with coalesced calls)
``max-age=N`` accept only an entry at most N seconds old
``x-llm-sidecar-cache-ttl: N``  store this answer for N seconds instead of the policy's TTL (0: as no-store)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiohttp import hdrs
from multidict import CIMultiDictProxy

TTL_HEADER = "x-llm-sidecar-cache-ttl"
MAX_SECONDS = 365 * 24 * 3600.0
STATUS_HEADER = "x-llm-sidecar-cache"


@dataclass(frozen=True, slots=True)
class Directives:
    no_cache: bool = False
    no_store: bool = False
    max_age: float | None = None
    ttl: float | None = None


NONE = Directives()


def _seconds(text: str) -> float | None:
    try:
        value = float(text.strip().strip('"'))
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    # Past a year an entry is as good as permanent; beyond that Redis refuses the expiry.
    return min(value, MAX_SECONDS)


def parse_directives(headers: CIMultiDictProxy[str]) -> Directives:
    # A header name with capitals is looked up as aiohttp's ``istr`` (``hdrs``), already folded:
    # a plain str is case-folded on every lookup, which makes it cost twice as much.
    control = headers.get(hdrs.CACHE_CONTROL)
    ttl_text = headers.get(TTL_HEADER)
    if control is None and ttl_text is None:
        return NONE
    no_cache = no_store = False
    max_age = None
    for part in (control or "").lower().split(","):
        name, _, value = part.strip().partition("=")
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age":
            max_age = _seconds(value)
    ttl = _seconds(ttl_text) if ttl_text is not None else None
    if ttl == 0:  # kept for no time: not stored at all (not for the policy's TTL)
        return Directives(no_cache, True, max_age, None)
    return Directives(no_cache, no_store, max_age, ttl)
