"""An endpoint: its config (``ModelEndpoint`` for the library) and its live state (``Endpoint``).

The live state is plain attributes that a metrics collector or ``GET /status`` reads
at scrape time; nothing on the hot path computes anything for them.
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import model_validator

from proxy.endpoint_config import EndpointConfig
from proxy.router.circuit import Circuit
from proxy.router.config import CircuitConfig
from proxy.router.slots import Slots
from proxy.secret import Secret

if TYPE_CHECKING:
    from proxy.fleet.budget import Budget

#: the SDKs' usual variables, read when a ``ModelEndpoint`` is given no key
KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
#: seconds over which an endpoint's TTFB estimate fades when it gets no calls, so a
#: once-slow endpoint is tried again instead of being starved forever
_TTFB_MEMORY = 30.0
_TTFB_ALPHA = 0.3
#: seconds over which a peak-EWMA falls back after a slow answer (rises at once on one)
_PEAK_DECAY = 10.0
#: seconds: the predicted latency per call in flight of an endpoint that never answered yet
_UNMEASURED = 60.0
#: why a call went to the endpoint that answered it (a bounded label)
REASONS = ("same_zone", "cross_zone", "fallback", "unzoned")


class ModelEndpoint(EndpointConfig):
    """An endpoint for the library face (``ConcurrentRouter``); the same fields as the config's.

    ``url`` may be the operation URL the provider documents
    (``https://api.openai.com/v1/chat/completions``, ``https://api.anthropic.com/v1/messages``)
    or the SDK base URL; the dialect is inferred from it unless given. ``model``
    defaults to ``name``; the key to ``api_key`` or else ``OPENAI_API_KEY`` /
    ``ANTHROPIC_API_KEY`` from the environment.
    """

    @model_validator(mode="after")
    def _library_defaults(self) -> ModelEndpoint:
        if self.missing_key is not None:
            raise ValueError(self.missing_key)  # a library call fails at once; no pod to keep up
        if self.model is None:
            object.__setattr__(self, "model", self.name)
        if self.api_key is None and not self.pass_through_key:
            value = os.environ.get(KEY_ENV[self.dialect or "openai"])
            if value:
                object.__setattr__(self, "api_key", Secret(value))
        return self


class Endpoint:
    """One endpoint of one model group, with its slots, health and history."""

    __slots__ = (
        "config",
        "group",
        "name",
        "upstream_model",
        "slots",
        "in_flight",
        "ewma_ttfb",
        "ewma_at",
        "cooldown_until",
        "circuit",
        "healthy",
        "probe_failures",
        "probe_successes",
        "last_probe_at",
        "last_error",
        "attempts",
        "failures",
        "queued",
        "cooldowns",
        "label",
        "for_zones",
        "locality",
        "gone",
        "peak_ttfb",
        "peak_itl",
        "ewma_tokens",
        "measured",
        "routed",
        "budget",
    )

    def __init__(
        self,
        config: EndpointConfig,
        group: str,
        circuit: CircuitConfig,
        *,
        label: str | None = None,
        for_zones: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.group = group
        self.name = config.name
        #: the name in counters and histograms: a discovered endpoint's is its set's (``vllm``),
        #: so that pods coming and going add no label values
        self.label = label or config.name
        #: EndpointSlice ``hints.forZones``: the zones the endpoint is meant to serve
        self.for_zones = for_zones
        #: 0 in the sidecar's zone, 1 in its region, 2 elsewhere (set by the router)
        self.locality = 0
        #: discovery no longer lists it: calls in flight finish, no new ones come
        self.gone = False
        #: peak-EWMAs (seconds) of time to first byte and of the time per output token, and an
        #: EWMA of output tokens per answer: the ``latency`` balance's predicted latency
        self.peak_ttfb = PeakEwma()
        self.peak_itl = PeakEwma()
        self.ewma_tokens = 0.0
        #: an answer of it ended (the latency balance knows its speed)
        self.measured = False
        #: answered calls by why they came here (``REASONS``)
        self.routed = dict.fromkeys(REASONS, 0)
        #: the model name sent upstream
        self.upstream_model = config.model or group
        self.slots = Slots(config.max_concurrent)
        self.in_flight = 0
        self.ewma_ttfb: float | None = None
        self.ewma_at = 0.0
        #: ``time.monotonic()`` until which the endpoint rests (a 429 asked for it)
        self.cooldown_until = 0.0
        self.circuit = Circuit(circuit)
        #: the active probes' verdict; None until the first probe
        self.healthy: bool | None = None
        self.probe_failures = 0
        self.probe_successes = 0
        self.last_probe_at: float | None = None
        #: the error type of the last failed attempt or probe (never a message: it may quote a body)
        self.last_error: str | None = None
        self.attempts = 0
        self.failures = 0
        #: calls waiting for one of its slots (a call queued on several endpoints counts on each)
        self.queued = 0
        #: cool-downs started (counter)
        self.cooldowns = 0
        #: its fleet budget (``proxy/fleet``), when it has fleet limits and the sidecar a shared Redis
        self.budget: Budget | None = None

    # ----------------------------------------------------------- selection inputs

    def usable(self, now: float) -> bool:
        """Not cooling down, circuit allowing, and not marked unhealthy by the probes."""
        return now >= self.cooldown_until and self.healthy is not False and not self.gone and self.circuit.allows(now)

    def ttfb_estimate(self, now: float) -> float:
        """The EWMA of time to first byte, faded by how long ago it was last updated."""
        if self.ewma_ttfb is None:
            return 0.0
        return self.ewma_ttfb * math.exp(-(now - self.ewma_at) / _TTFB_MEMORY)

    def predicted_latency(self, now: float) -> float:
        """Peak-EWMA time to first byte plus time per token × tokens, scaled by the calls in
        flight (each one ahead shares the server): the ``latency`` balance's cost. An endpoint
        never measured costs 0 while idle, so a new replica is tried at once, and a lot while
        its first call is under way, so that call measures it before more follow."""
        if not self.measured:
            # Never answered: one trial call at a time until it has (its first answer may be slow).
            return _UNMEASURED * self.in_flight
        answer = self.peak_ttfb.value(now) + self.peak_itl.value(now) * self.ewma_tokens
        return answer * (self.in_flight + 1)

    # ----------------------------------------------------------- slots

    def take_slot(self) -> bool:
        """Take a free slot, without waiting; False when none is free."""
        if self.slots.take_free():
            self.in_flight += 1
            return True
        return False

    def release(self) -> None:
        self.in_flight -= 1
        self.slots.give()

    # ----------------------------------------------------------- outcomes

    def observe_ttfb(self, seconds: float, now: float) -> None:
        previous = self.ttfb_estimate(now) if self.ewma_ttfb is not None else seconds
        self.ewma_ttfb = previous + _TTFB_ALPHA * (seconds - previous)
        self.ewma_at = now
        self.peak_ttfb.observe(seconds, now)

    def observe_answer(self, ttfb: float, total: float, tokens: int, now: float) -> None:
        """A whole answer; streamed, the time per output token after the first byte."""
        self.measured = True
        if tokens > 0:
            self.peak_itl.observe(max(0.0, total - ttfb) / tokens, now)
            self.ewma_tokens += _TTFB_ALPHA * (tokens - self.ewma_tokens) if self.ewma_tokens else tokens

    def cool_down(self, seconds: float, now: float) -> None:
        self.cooldown_until = max(self.cooldown_until, now + seconds)
        self.cooldowns += 1

    # ----------------------------------------------------------- reading

    @property
    def circuit_state(self) -> str:
        """closed, open or half_open (an open circuit whose time is up is waiting for its trial)."""
        circuit = self.circuit
        if circuit.state == "open" and time.monotonic() >= circuit.open_until:
            return "half_open"
        return circuit.state

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The endpoint's state as JSON-able values (``GET /status``); never a credential."""
        now = time.monotonic() if now is None else now
        circuit = self.circuit
        parts = urlsplit(self.config.url)
        return {
            "name": self.name,
            "group": self.group,
            "zone": self.config.zone,
            "region": self.config.region,
            "locality": ("same_zone", "same_region", "elsewhere")[self.locality],
            # userinfo is dropped: a URL may carry a credential
            "url": f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}",
            "dialect": self.config.dialect,
            "model": self.upstream_model,
            "priority": self.config.priority,
            "weight": self.config.weight,
            "usable": self.config.missing_key is None and self.usable(now),
            #: discovery no longer lists it; shown while its calls finish
            "draining": self.gone,
            #: why the endpoint has no key (a variable's name or a file's path, never a value)
            "missing_key": self.config.missing_key,
            "in_flight": self.in_flight,
            "slots_used": self.in_flight,
            "slots_limit": self.config.max_concurrent,
            "queued": self.queued,
            "health": {None: "unknown", True: "healthy", False: "unhealthy"}[self.healthy],
            "circuit": self.circuit_state,
            "circuit_open_for_s": round(max(0.0, circuit.open_until - now), 3) if circuit.state == "open" else 0.0,
            "circuit_times_opened": circuit.times_opened,
            "cooldown_for_s": round(max(0.0, self.cooldown_until - now), 3),
            "cooldowns": self.cooldowns,
            "ewma_ttfb_ms": None if self.ewma_ttfb is None else round(self.ewma_ttfb * 1000, 2),
            "predicted_latency_ms": round(self.predicted_latency(now) * 1000, 2),
            "routed": dict(self.routed),
            "attempts": self.attempts,
            "failures": self.failures,
            "last_error": self.last_error,
        }


class PeakEwma:
    """A latency estimate that jumps up to a slower sample at once and decays back down over
    ``_PEAK_DECAY`` seconds (Finagle's peak-EWMA): one slow answer is noticed by the next call,
    and it takes a run of fast ones to be forgiven. Without samples it fades like the TTFB EWMA."""

    __slots__ = ("estimate", "at")

    def __init__(self) -> None:
        self.estimate = 0.0
        self.at = 0.0

    def value(self, now: float) -> float:
        """The estimate, faded by the time since the last sample (a once-slow endpoint is tried again)."""
        return self.estimate * math.exp(-max(0.0, now - self.at) / _TTFB_MEMORY) if self.estimate else 0.0

    def observe(self, sample: float, now: float) -> None:
        current = self.value(now)
        if sample >= current:
            self.estimate = sample
        else:
            keep = math.exp(-max(0.0, now - self.at) / _PEAK_DECAY)
            self.estimate = current * keep + sample * (1 - keep)
        self.at = now
