"""What a fleet budget answers: a ``Grant`` or a ``Denial`` (no Redis here: the router imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.fleet.budget import Budget

#: why a budget refuses a call (the metrics' label values; ``scripts.ACQUIRE`` answers 1, 2, 3)
REASONS = ("concurrency", "rate", "cooling")


@dataclass(slots=True)
class Grant:
    budget: Budget
    #: the lease's id in Redis (``None``: no concurrency limit); a local grant has one too,
    #: which the renewal puts in Redis once it is back
    lease: str | None
    #: tokens reserved (``tpm``), settled to the real usage on release
    tokens: int
    #: granted from the local share while Redis was away
    local: bool


@dataclass(slots=True, frozen=True)
class Denial:
    #: concurrency, rate, cooling, or unanswered (Redis did not answer in time; asked again)
    reason: str
    #: seconds until budget returns (0: not known, as at the concurrency limit)
    wait: float
