"""How long an upstream asked us to rest: ``Retry-After`` and the providers' rate-limit reset headers."""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import parsedate_to_datetime

# OpenAI states resets as durations ("1s", "6m0s", "20ms"); Anthropic as RFC 3339 instants.
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_OPENAI_RESETS = ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
_ANTHROPIC_RESETS = (
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
)


def requested_rest(headers: dict[str, str], now_wall: float) -> float | None:
    """Seconds to rest, from lower-cased response headers, or None when they do not say.

    ``Retry-After`` (seconds or an HTTP date) and ``retry-after-ms`` win; otherwise the
    latest of the rate-limit reset headers.
    """
    if (value := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    if (value := headers.get("retry-after")) is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - now_wall)
            except (TypeError, ValueError):
                pass
    rests = [_duration(headers[name]) for name in _OPENAI_RESETS if name in headers]
    for name in _ANTHROPIC_RESETS:
        if name in headers:
            try:
                rests.append(datetime.fromisoformat(headers[name]).timestamp() - now_wall)
            except ValueError:
                continue
    known = [r for r in rests if r is not None]
    return max(0.0, max(known)) if known else None


def _duration(text: str) -> float | None:
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
