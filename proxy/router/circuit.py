"""Passive health: a circuit breaker fed by the outcome of each attempt.

    closed ──(N consecutive failures, or error rate over a window)──▶ open
    open ──(open_for elapsed: the next call is the one trial)──▶ half_open
    half_open ──trial succeeds──▶ closed        half_open ──trial fails──▶ open

Only failures that say the endpoint is unwell count (connect errors, timeouts,
broken answers, 5xx); a 429 is a cool-down, a 4xx is the caller's fault.
"""

from __future__ import annotations

from typing import Literal

from proxy.router.config import CircuitConfig

State = Literal["closed", "open", "half_open"]


class Circuit:
    """One endpoint's breaker. Times are ``time.monotonic()`` seconds, passed in."""

    __slots__ = (
        "config",
        "state",
        "open_until",
        "consecutive_failures",
        "trial_in_flight",
        "window_start",
        "window_calls",
        "window_failures",
        "times_opened",
    )

    def __init__(self, config: CircuitConfig) -> None:
        self.config = config
        self.state: State = "closed"
        self.open_until = 0.0
        self.consecutive_failures = 0
        self.trial_in_flight = False
        self.window_start = 0.0
        self.window_calls = 0
        self.window_failures = 0
        #: a counter for the metrics collector
        self.times_opened = 0

    def allows(self, now: float) -> bool:
        """Whether a call may be sent now (an open circuit past ``open_until`` allows one trial)."""
        if self.state == "closed":
            return True
        if self.state == "open" and now < self.open_until:
            return False
        return not self.trial_in_flight

    def begin(self, now: float) -> bool:
        """An attempt starts; returns True when it is the half-open trial."""
        if self.state == "closed":
            return False
        self.state = "half_open"
        self.trial_in_flight = True
        return True

    def abandon(self) -> None:
        """The trial was cancelled before it could tell anything; the next call is the trial."""
        self.trial_in_flight = False

    def success(self, now: float) -> State | None:
        """Record a good attempt; returns the new state when it changed."""
        self.consecutive_failures = 0
        self._count(now, failed=False)
        if self.state != "closed":
            self.state = "closed"
            self.trial_in_flight = False
            self.window_calls = self.window_failures = 0
            return "closed"
        return None

    def failure(self, now: float) -> State | None:
        """Record a failed attempt; returns ``"open"`` when this failure opened the circuit."""
        self.consecutive_failures += 1
        self._count(now, failed=True)
        config = self.config
        if self.state == "half_open":
            return self._open(now)
        if self.state == "open":
            return None
        too_many = self.consecutive_failures >= config.failures
        too_often = (
            self.window_calls >= config.min_calls and self.window_failures / self.window_calls >= config.error_rate
        )
        return self._open(now) if too_many or too_often else None

    def _open(self, now: float) -> State:
        self.state = "open"
        self.open_until = now + self.config.open_for
        self.trial_in_flight = False
        self.times_opened += 1
        self.window_calls = self.window_failures = 0
        return "open"

    def _count(self, now: float, failed: bool) -> None:
        # A tumbling window: cheap, and good enough to see "half the calls fail".
        if now - self.window_start > self.config.window:
            self.window_start = now
            self.window_calls = self.window_failures = 0
        self.window_calls += 1
        self.window_failures += failed
