"""One upstream endpoint's config: its URL, dialect, credential, concurrency and timeouts.

Outside the ``router`` package because both sides of an attempt read it: the router
picks an endpoint, and the upstream client (``proxy/upstream.py``) and the header
rules (``proxy/auth.py``) use its timeouts and credential. The router imports those
two, so they must not import the router package back.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from proxy.fleet.config import FleetLimits
from proxy.secret import Secret

Dialect = Literal["openai", "anthropic"]

# A full operation URL (what the SDKs' docs show) names its dialect and its base URL.
#: a variable name as the docs write them (OPENAI_API_KEY); another is not repeated in messages
_VARIABLE_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_OPERATION_SUFFIXES: tuple[tuple[str, Dialect], ...] = (("/chat/completions", "openai"), ("/v1/messages", "anthropic"))


#: the default bound on a JSON answer's size (``EndpointConfig.max_answer_bytes``)
MAX_ANSWER_BYTES = 256 * 1024 * 1024


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
    #: limits shared by every sidecar on the Redis configured under ``cache`` (``proxy/fleet``)
    fleet: FleetLimits | None = None
    priority: int = 0
    weight: float = Field(1.0, gt=0)
    timeouts: Timeouts = Timeouts()
    #: the most bytes a JSON (or error) answer may have; a larger one is a broken attempt. Generous:
    #: embeddings of 2,048 inputs of 3,072 dimensions are ~75 MB as JSON
    max_answer_bytes: int = Field(MAX_ANSWER_BYTES, ge=1)
    #: the URL active health checks GET; by default the models list (never a billed completion)
    probe_url: str | None = Field(None, pattern=r"^https?://[^/]+")
    #: where the endpoint runs; calls prefer the sidecar's own zone, then its region
    #: (``router.zone`` / ``router.region``, see docs/kubernetes.md)
    zone: str | None = None
    region: str | None = None
    #: why the key the config names is not there (an unset variable, an unreadable file)
    _missing_key: str | None = PrivateAttr(None)

    @property
    def missing_key(self) -> str | None:
        """``FIELD: why`` when the key the config names is missing (``api_key_env: environment
        variable X is not set``); ``None`` when the endpoint has it.

        Not a validation error: one model group's missing key (a Secret without that entry)
        must not stop the sidecar serving the others. ``check-config`` reports it as an error.
        """
        return self._missing_key

    # A missing key is an error only for check-config (context ``require_keys``); serve starts
    # without it (``missing_key``). Checked per field, so it is reported with the others.
    @field_validator("api_key_env", "api_key_file")
    @classmethod
    def _key_is_there(cls, source: str | Path | None, info: ValidationInfo) -> str | Path | None:
        if source is not None and (info.context or {}).get("require_keys"):
            found = _read_key(source)
            if isinstance(found, str):
                raise ValueError(found)
        return source

    # Each field is checked on its own, so that every bad field of a file is reported at once.
    @field_validator("url", "probe_url")
    @classmethod
    def _base_url_only(cls, value: str | None) -> str | None:
        parts = urlsplit(value) if value else None
        # Operation paths are appended to the url: a query or fragment would swallow them,
        # and credentials belong in api_key*, not in a URL that /status and logs may show.
        if parts is not None and (parts.query or parts.fragment or parts.username or parts.password):
            raise ValueError("no query string, fragment or user:password@ allowed")
        return value

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, key: Secret | None) -> Secret | None:
        if key is None:
            return None
        if not key.reveal().strip():
            raise ValueError("the endpoint's key is empty")
        # ``${VAR}`` may bring the variable's trailing newline, which no header can carry.
        return Secret(key.reveal().strip())

    @model_validator(mode="after")
    def _resolve(self) -> EndpointConfig:
        url = self.url.rstrip("/")
        dialect = self.dialect
        for suffix, suffix_dialect in _OPERATION_SUFFIXES:
            if url.endswith(suffix):
                url = url.removesuffix(suffix)
                dialect = dialect or suffix_dialect
        if dialect is None:
            dialect = "anthropic" if "anthropic" in url else "openai"
        object.__setattr__(self, "dialect", dialect)
        object.__setattr__(self, "url", url)
        if self.probe_url is None:
            models = "/models" if dialect == "openai" else "/v1/models"
            object.__setattr__(self, "probe_url", url + models)
        sources = [s for s in (self.api_key, self.api_key_env, self.api_key_file) if s is not None]
        if len(sources) > 1:
            raise ValueError("set only one of api_key, api_key_env, api_key_file")
        # Read the key into the one place it is revealed from, or say why it is missing.
        source = self.api_key_env if self.api_key_env is not None else self.api_key_file
        if source is not None:
            found = _read_key(source)
            if isinstance(found, Secret):
                object.__setattr__(self, "api_key", found)
            else:
                field = "api_key_env" if isinstance(source, str) else "api_key_file"
                self._missing_key = f"{field}: {found}"
        return self


def _read_key(source: str | Path) -> Secret | str:
    """The key from an environment variable (``str``) or a file (``Path``), or why it is missing."""
    if isinstance(source, str):
        value = os.environ.get(source)
        if value is None or not value.strip():
            # The reason goes to logs, /status and every call's error body: a "name" that is not one
            # may be the key itself, pasted where its variable's name goes.
            name = source if _VARIABLE_NAME.fullmatch(source) else "(not shown: not an upper-case name)"
            return f"environment variable {name} {'is not set' if value is None else 'is empty'}"
        # Stripped as a file's is: a Secret made --from-file keeps the file's last newline.
        return Secret(value.strip())
    # A mounted Secret's path is absolute; a relative "path" may be the key itself, pasted there.
    shown = source if source.is_absolute() else "(path not shown: not absolute)"
    try:
        value = source.read_text().strip()
    except OSError as exc:
        return f"cannot read {shown}: {exc.strerror}"
    return Secret(value) if value else f"{shown} is empty"
