"""Which endpoint to try next: a pure ordering over the model group's endpoints.

Order: the preferred endpoint (or the endpoints of the preferred group) first; then
the group's own endpoints before its fallback groups'; then by priority tier, lower
numbers first; then by locality (the sidecar's zone, then its region, then elsewhere);
within that, fewest calls in flight with the lower EWMA of time to first byte breaking
ties, a weighted random draw, or (``latency``) the lower predicted latency, the first
pick being the better of two drawn at random ("power of two choices"). Endpoints that
are cooling down, whose circuit is open or that the probes call unhealthy are left out,
so a zone whose endpoints are full, resting or failing spills to the next. Endpoints
already tried in this call go last, so the call falls back before it retries.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence

from proxy.router.config import Balance
from proxy.router.endpoint import Endpoint

_RNG = random.Random()


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
    """The usable endpoints of ``plan`` (the group's, then its fallback groups'), best first.

    The router does not call it for one endpoint unless ``weighted`` (nothing to rank)."""
    rng = rng or _RNG
    draw = rng.random
    ranked: list[tuple[tuple[float, ...], Endpoint]] = []
    for position, endpoint in enumerate(plan):
        if not endpoint.usable(now):
            continue
        preferred = prefer is not None and (endpoint.name == prefer or endpoint.group == prefer)
        if balance == "weighted":
            # Efraimidis–Spirakis: sorting by U^(1/w) is a weighted draw without replacement.
            spread: tuple[float, ...] = (-(draw() ** (1.0 / endpoint.config.weight)),)
        elif balance == "latency":
            spread = (endpoint.predicted_latency(now), position)
        else:
            spread = (endpoint.in_flight, endpoint.ttfb_estimate(now), position)
        tier = (endpoint in tried, not preferred, group_rank[endpoint.group], endpoint.config.priority)
        ranked.append(((*tier, endpoint.locality, *spread), endpoint))
    ranked.sort(key=lambda item: item[0])
    if balance == "latency":
        _two_choices(ranked, rng)
    return [endpoint for _, endpoint in ranked]


def _two_choices(ranked: list[tuple[tuple[float, ...], Endpoint]], rng: random.Random) -> None:
    """Put first the better of two endpoints drawn from the best tier and locality.

    Always taking the lowest prediction would send every sidecar's next calls to the same
    replica (each sees only its own calls in flight); two random choices keep most of the
    gain and spread the herd. The rest stay sorted, for spill-over when the first is full.
    """
    if len(ranked) < 2:
        return
    top = ranked[0][0][:5]
    size = 1
    while size < len(ranked) and ranked[size][0][:5] == top:
        size += 1
    if size < 2:
        return
    a, b = int(rng.random() * size), int(rng.random() * (size - 1))
    b += b >= a  # two different endpoints
    first = min(a, b)  # sorted by predicted latency: the lower index is the better
    ranked.insert(0, ranked.pop(first))


def locality(
    endpoint_zone: str | None,
    for_zones: tuple[str, ...],
    endpoint_region: str | None,
    *,
    zone: str | None,
    region: str | None,
) -> int:
    """0 in the sidecar's zone (or hinted for it), 1 in its region, 2 elsewhere or unknown;
    0 for all when the sidecar knows neither its zone nor its region."""
    if zone is None and region is None:
        return 0
    if zone is not None and (zone in for_zones if for_zones else endpoint_zone == zone):
        return 0
    if region is not None and endpoint_region == region:
        return 1
    return 2


def reason(endpoint: Endpoint, group: str, fell_back: bool, zone: str | None) -> str:
    """Why a call went where it did: one of ``endpoint.REASONS``."""
    if fell_back or endpoint.group != group:
        return "fallback"
    if zone is None:
        return "unzoned"
    return "same_zone" if endpoint.locality == 0 else "cross_zone"
