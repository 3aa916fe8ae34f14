"""The fleet's config: per-endpoint budgets (``fleet:`` on an endpoint) and the shared settings.

```yaml
router:
  fleet: {lease_ttl: 5.0, poll_interval: 0.02, operation_timeout: 0.5}   # defaults shown
model_groups:
  gpt-4o:
    endpoints:
      - {name: openai, url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY,
         fleet: {max_concurrent: 200, rpm: 3000, tpm: 400000}}
```

Only pydantic here: reading the config does not load Redis.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FleetLimits(BaseModel):
    """One endpoint's budget, shared by every sidecar on the same Redis (each key optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: calls in flight at once, fleet-wide (leases that the holder renews)
    max_concurrent: int | None = Field(None, ge=1)
    #: calls started per minute, fleet-wide
    rpm: int | None = Field(None, ge=1)
    #: tokens per minute, fleet-wide: a call reserves an estimate and settles to its real usage
    tpm: int | None = Field(None, ge=1)
    #: the budget's name in Redis; endpoints that share one provider account share a key.
    #: Default: ``<model group>/<endpoint name>``
    key: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9_.\-/]+$")


class FleetSettings(BaseModel):
    """How the sidecars keep their shared budgets (``router.fleet``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: seconds a concurrency lease lives unless its holder renews it (every third of this):
    #: the most a killed sidecar's leases keep budget from the others
    lease_ttl: float = Field(5.0, ge=0.5)
    #: seconds between a waiting call's tries when the fleet is at its concurrency limit or its
    #: token rate (calls in flight give tokens back when they end); a request rate says when
    #: budget returns, and is waited for exactly
    poll_interval: float = Field(0.02, gt=0)
    #: seconds a budget's Redis reply may take; after ``cache.breaker_failures`` slow or failed ones
    #: in a row, Redis counts as down and budgets use their local share
    operation_timeout: float = Field(0.5, gt=0)
