"""The cache's config sections: the backend (global) and the policy (per model group)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["none", "memory", "redis"] = "memory"
    redis_url: str | None = None
    namespace: str = "default"
    max_bytes: int = Field(64 * 1024 * 1024, ge=0)


class CachePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: which calls are cached: every call, only deterministic ones (temperature 0 or a seed), none
    mode: Literal["always", "deterministic", "off"] = "deterministic"
    ttl: float = Field(3600.0, gt=0)
    max_entry_bytes: int = Field(4 * 1024 * 1024, ge=1)
