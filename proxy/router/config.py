"""The router's config section: endpoints and model groups."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from proxy.secret import Secret

Dialect = Literal["openai", "anthropic"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(Strict):
    """Seconds. ``first_byte`` runs until the first body byte (a stream's first token)."""

    connect: float = Field(5.0, gt=0)
    first_byte: float = Field(60.0, gt=0)
    idle: float = Field(60.0, gt=0)
    total: float = Field(600.0, gt=0)


class EndpointConfig(Strict):
    """One upstream URL with its credential and its concurrency limit."""

    name: str = Field(min_length=1)
    #: the SDK-style base URL: ``https://api.openai.com/v1`` or ``https://api.anthropic.com``
    url: str = Field(pattern=r"^https?://[^/]+")
    dialect: Dialect | None = None
    #: the model name sent upstream; defaults to the model group's name
    model: str | None = None
    api_key: Secret | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    #: forward the client's own credential instead of the endpoint's
    pass_through_key: bool = False
    max_concurrent: int = Field(64, ge=1)
    priority: int = 0
    weight: float = Field(1.0, gt=0)
    timeouts: Timeouts = Timeouts()

    @model_validator(mode="after")
    def _resolve(self) -> EndpointConfig:
        if self.dialect is None:
            inferred = "anthropic" if "anthropic" in self.url else "openai"
            object.__setattr__(self, "dialect", inferred)
        object.__setattr__(self, "url", self.url.rstrip("/"))
        sources = [s for s in (self.api_key, self.api_key_env, self.api_key_file) if s is not None]
        if len(sources) > 1:
            raise ValueError("set only one of api_key, api_key_env, api_key_file")
        if self.api_key_env is not None:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ValueError(f"api_key_env: environment variable {self.api_key_env} is not set")
            object.__setattr__(self, "api_key", Secret(value))
        elif self.api_key_file is not None:
            try:
                value = self.api_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"api_key_file: cannot read {self.api_key_file}: {exc.strerror}") from None
            object.__setattr__(self, "api_key", Secret(value))
        return self


class RouteConfig(Strict):
    """A model group as the router sees it: endpoints to try, and groups to fall back to."""

    endpoints: list[EndpointConfig] = Field(min_length=1)
    fallbacks: list[str] = []

    @model_validator(mode="after")
    def _unique_names(self) -> RouteConfig:
        names = [e.name for e in self.endpoints]
        if len(names) != len(set(names)):
            raise ValueError("endpoint names must be unique within a model group")
        return self
