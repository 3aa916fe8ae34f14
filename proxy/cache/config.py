"""The cache's config sections: the backend (global, ``cache:``) and the policy (per model group).

``redis_url`` stays a flat key because the Helm chart renders it; the rest of the
Redis settings sit beside it with a ``redis_`` prefix or a name of their own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["none", "memory", "redis"] = "memory"
    #: ``redis://`` / ``rediss://`` URL of the server, or of any node of a cluster
    #: may carry a password: kept out of ``repr`` so a logged config never shows it
    redis_url: str | None = Field(None, repr=False)
    redis_mode: Literal["single", "sentinel", "cluster"] = "single"
    #: ``host:port`` of each Sentinel (``redis_mode: sentinel``); ``redis_url`` then only carries password and db
    redis_sentinels: list[str] = []
    redis_service_name: str = "mymaster"
    #: the tenant when credentials do not pass through; also the prefix of every key
    namespace: str = Field("default", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    #: bound of the in-memory backend, counted in stored (compressed) bytes
    max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    #: entries larger than this are compressed (zstd)
    compress_threshold: int = Field(4096, ge=0)
    #: Redis backend: seconds an entry read from or written to Redis is also kept in this process
    #: (never past the entry's own expiry), so repeated hits skip the round trip; 0 turns the tier off
    local_ttl: float = Field(5.0, ge=0)
    #: bound of that in-process tier, counted like ``max_bytes``
    local_max_bytes: int = Field(16 * 1024 * 1024, ge=0)
    #: seconds one cache operation may take before it counts as a miss (fail open)
    operation_timeout: float = Field(0.1, gt=0)
    #: consecutive Redis failures that open the circuit, and seconds before it is probed again
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown: float = Field(2.0, gt=0)
    #: seconds a pod holds the cross-pod coalescing lock while it calls upstream
    lock_ttl: float = Field(30.0, gt=0)
    #: seconds a pod waits for another pod's answer before it goes upstream itself
    coalesce_wait: float = Field(30.0, ge=0)
    #: a ``cache export`` file (JSON lines) loaded into the backend at start-up, so a new pod
    #: (memory) or a new Redis starts warm; entries keep the time they had left
    preload: str | None = None

    @model_validator(mode="after")
    def _redis_is_configured(self) -> CacheConfig:
        if self.backend == "redis":
            if self.redis_mode == "sentinel" and not self.redis_sentinels:
                raise ValueError("redis_sentinels: at least one host:port is needed with redis_mode: sentinel")
            if self.redis_mode != "sentinel" and not self.redis_url:
                raise ValueError("redis_url: required with backend: redis")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url: must start with redis://, rediss:// or unix://")
        if self.redis_url:
            from redis.connection import parse_url  # loaded only with a Redis URL

            try:  # as redis-py reads it at the first connect, where it was a traceback
                parse_url(self.redis_url)
            except ValueError:  # not its message: a password typed where the port goes would be in it
                raise ValueError(
                    "redis_url: redis-py cannot read it (a port not from 0 to 65535, an IPv6 host's brackets, "
                    "a query option's value)"
                ) from None
        return self


class CachePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: which calls are cached: every call, only deterministic ones (temperature 0 or a seed), none
    mode: Literal["always", "deterministic", "off"] = "deterministic"
    #: seconds an entry stays fresh (a call's ``x-llm-sidecar-cache-ttl`` header overrides it)
    ttl: float = Field(3600.0, gt=0)
    max_entry_bytes: int = Field(4 * 1024 * 1024, ge=1)
    #: seconds past expiry during which an entry may still answer when every upstream fails (0: never)
    stale_if_error: float = Field(0.0, ge=0)
