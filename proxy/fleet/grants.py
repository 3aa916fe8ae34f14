"""What a fleet budget answers: a ``Grant`` or a ``Denial`` (no Redis here: the router imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Holder(Protocol):
    """What a grant came from (``proxy.fleet.budget.Budget``), as far as ending it goes."""

    def release(self, grant: Grant, usage: dict[str, int], failed: bool) -> None: ...


#: why a budget refuses a call (the metrics' label values; ``scripts.ACQUIRE`` answers 1, 2, 3)
REASONS = ("concurrency", "rate", "cooling")


@dataclass(slots=True)
class Grant:
    budget: Holder
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
