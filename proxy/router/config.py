"""The router's config section: endpoints, model groups and the routing policy.

```yaml
router:                       # the policy every model group shares (defaults shown)
  queue_timeout: 5.0          # seconds a call waits for a free slot before a 429
  deadline: 120.0             # seconds for all attempts of one call, until the answer starts
  max_attempts: 3             # attempts per call, fallbacks and retries together
  backoff: {base: 0.1, max: 2.0}   # before re-trying an endpoint already tried (full jitter)
  retry_on: [connect, timeout, broken, "429", 5xx]
  cooldown: {default: 1.0, max: 300.0}   # a 429 without Retry-After cools for `default`
  circuit: {failures: 5, error_rate: 0.5, min_calls: 20, window: 30.0, open_for: 10.0}
  health: {enabled: true, interval: 10.0, timeout: 2.0, unhealthy_after: 2, healthy_after: 1}
  zone: null                  # the sidecar's zone and region (default: LLM_SIDECAR_ZONE / _REGION)
  region: null
  fleet: {lease_ttl: 5.0, poll_interval: 0.02, operation_timeout: 0.5}   # fleet-wide limits (proxy/fleet)
model_groups:
  gpt-4o:
    prefer: openai-primary     # default preference: an endpoint here or a fallback group
    balance: least_in_flight   # or weighted, or latency
    fallbacks: [claude-sonnet]
    endpoints:
      - {name: openai-primary, url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY,
         max_concurrent: 32, priority: 0, fleet: {max_concurrent: 200, rpm: 3000, tpm: 400000}}
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, Protocol

from pydantic import Field, field_validator, model_validator

from proxy.discovery.config import DiscoverConfig
from proxy.endpoint_config import EndpointConfig, Strict
from proxy.fleet.config import FleetSettings

Balance = Literal["least_in_flight", "weighted", "latency"]
RetryOn = Literal["connect", "timeout", "broken", "429", "5xx"]


class RouteConfig(Strict):
    """A model group as the router sees it: endpoints to try, and groups to fall back to."""

    #: the endpoints the config names (none when all of them are discovered)
    endpoints: list[EndpointConfig] = Field(None, validate_default=True)  # None → [] (_none_is_empty)
    #: more endpoints, from a Service's EndpointSlices or a DNS name, kept current
    discover: DiscoverConfig | None = None
    fallbacks: list[str] = []
    #: tried first unless the call's ``x-llm-sidecar-prefer`` header names another:
    #: an endpoint of this group or one of its fallback groups
    prefer: str | None = None
    #: within a priority tier and zone: fewest calls in flight (ties: lower EWMA of time to
    #: first byte), a random draw by ``weight``, or the lower predicted latency of two drawn
    balance: Balance = "least_in_flight"

    @field_validator("endpoints", mode="before")
    @classmethod
    def _none_is_empty(cls, endpoints: object) -> object:
        return [] if endpoints is None else endpoints

    @model_validator(mode="after")
    def _unique_names(self) -> RouteConfig:
        if not self.endpoints and self.discover is None:
            raise ValueError("a model group needs endpoints, discover, or both")
        names = [e.name for e in self.endpoints]
        if len(names) != len(set(names)):
            raise ValueError("endpoint names must be unique within a model group")
        if self.prefer is not None and self.prefer not in names and self.prefer not in self.fallbacks:
            raise ValueError(f"prefer: {self.prefer!r} is neither an endpoint of this group nor a fallback group")
        return self


class Backoff(Strict):
    """Seconds before re-trying an endpoint already tried: a random draw in [0, min(max, base·2ⁿ)]."""

    base: float = Field(0.1, ge=0)
    max: float = Field(2.0, ge=0)


class Cooldown(Strict):
    """How long a rate-limited endpoint rests when the upstream does not say (``Retry-After``)."""

    default: float = Field(1.0, ge=0)
    max: float = Field(300.0, gt=0)


class CircuitConfig(Strict):
    """Passive health: when to stop sending calls to an endpoint that keeps failing."""

    #: consecutive failed attempts that open the circuit
    failures: int = Field(5, ge=1)
    #: or this share of failed attempts within ``window`` seconds, once ``min_calls`` were made
    error_rate: float = Field(0.5, gt=0, le=1)
    min_calls: int = Field(20, ge=1)
    window: float = Field(30.0, gt=0)
    #: seconds the circuit stays open before one trial call half-opens it
    open_for: float = Field(10.0, gt=0)


class HealthConfig(Strict):
    """Active health: a background GET per endpoint (``probe_url``), at an interval."""

    enabled: bool = True
    interval: float = Field(10.0, gt=0)
    timeout: float = Field(2.0, gt=0)
    #: consecutive failed probes before the endpoint is skipped
    unhealthy_after: int = Field(2, ge=1)
    #: consecutive good probes before it takes calls again
    healthy_after: int = Field(1, ge=1)


class RouterConfig(Strict):
    """The routing policy shared by every model group."""

    queue_timeout: float = Field(5.0, ge=0)
    deadline: float = Field(120.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    backoff: Backoff = Backoff()
    retry_on: frozenset[RetryOn] = frozenset({"connect", "timeout", "broken", "429", "5xx"})
    cooldown: Cooldown = Cooldown()
    circuit: CircuitConfig = CircuitConfig()
    health: HealthConfig = HealthConfig()
    #: where the sidecar runs (the injector sets ``LLM_SIDECAR_ZONE`` from the pod's
    #: ``topology.kubernetes.io/zone``): endpoints in this zone are preferred, then this region
    zone: str | None = Field(default_factory=lambda: os.environ.get("LLM_SIDECAR_ZONE") or None)
    region: str | None = Field(default_factory=lambda: os.environ.get("LLM_SIDECAR_REGION") or None)
    fleet: FleetSettings = FleetSettings()


class RoutingConfig(Protocol):
    """What the router reads from a config: the sidecar's ``Config``, or the library's own."""

    @property
    def model_groups(self) -> Mapping[str, RouteConfig]: ...

    @property
    def router(self) -> RouterConfig: ...
