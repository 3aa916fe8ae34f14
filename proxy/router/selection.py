"""Which endpoint to try next: a pure ordering over the model group's endpoints.

Order: the preferred endpoint (or the endpoints of the preferred group) first; then
the group's own endpoints before its fallback groups'; then by priority tier, lower numbers first; within a tier, fewest calls in flight with the
lower EWMA of time to first byte breaking ties, or a weighted random draw. Endpoints
that are cooling down, whose circuit is open or that the probes call unhealthy are
left out. Endpoints already tried in this call go last, so the call falls back
before it retries.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence

from proxy.router.config import Balance
from proxy.router.endpoint import Endpoint


def order(
    plan: Sequence[Endpoint],
    *,
    prefer: str | None,
    balance: Balance,
    group_rank: Mapping[str, int],
    now: float,
    tried: Collection[Endpoint] = (),
    rng: random.Random | None = None,
) -> list[Endpoint]:
    """The usable endpoints of ``plan`` (the group's, then its fallback groups'), best first."""
    draw = (rng or random).random
    ranked: list[tuple[tuple[float, ...], Endpoint]] = []
    for position, endpoint in enumerate(plan):
        if not endpoint.usable(now):
            continue
        preferred = prefer is not None and (endpoint.name == prefer or endpoint.group == prefer)
        if balance == "weighted":
            # Efraimidis–Spirakis: sorting by U^(1/w) is a weighted draw without replacement.
            spread: tuple[float, ...] = (-(draw() ** (1.0 / endpoint.config.weight)),)
        else:
            spread = (endpoint.in_flight, endpoint.ttfb_estimate(now), position)
        key = (endpoint in tried, not preferred, group_rank[endpoint.group], endpoint.config.priority, *spread)
        ranked.append((key, endpoint))
    ranked.sort(key=lambda item: item[0])
    return [endpoint for _, endpoint in ranked]
