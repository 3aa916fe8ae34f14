"""The sidecar's configuration: one YAML file, validated at start-up.

Each package owns its section (``router.config``, ``cache.config``,
``telemetry.config``); this module assembles them, expands ``${VAR}`` and
``${VAR:-default}`` in string values from the environment, and reports a bad field by its path
(``model_groups.gpt-4o.endpoints[1].max_concurrent: must be >= 1``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from proxy.cache.config import CacheConfig, CachePolicy
from proxy.rag.config import ContextInjection, RetrievalConfig
from proxy.router.config import RouteConfig, RouterConfig
from proxy.telemetry.config import TelemetryConfig


class ConfigError(Exception):
    """The config cannot be used; the message names every bad field by its path."""


#: The default ports. A sidecar shares its pod's network namespace, so it must not take a
#: port the app may listen on without declaring it (8080, 9090 and their like). These sit in
#: the 15000 range that service meshes reserve for the same reason, clear of the ports
#: Istio (15000-15021, 15053, 15080, 15090), Open Service Mesh (15000-15010, 15901-15904),
#: Kuma (15001, 15006, 9901, 9902), Linkerd (4140-4191) and Consul (19000, 20000, 21000+) take.
PROXY_PORT = 15180
ADMIN_PORT = 15190


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(PROXY_PORT, ge=0, le=65535)
    admin_host: str = "0.0.0.0"
    admin_port: int = Field(ADMIN_PORT, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1)
    #: seconds that in-flight calls (streams too) get to finish on SIGTERM
    drain_timeout: float = Field(30.0, ge=0)
    #: seconds between checks of the config file for changes (``serve`` reloads it); 0 turns that off
    reload_interval: float = Field(5.0, ge=0)


class ModelGroupConfig(RouteConfig):
    cache: CachePolicy = CachePolicy()
    #: add passages retrieved from a corpus to each call as a system message
    context: ContextInjection | None = None


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server: ServerConfig = ServerConfig()
    model_groups: dict[str, ModelGroupConfig] = Field(min_length=1)
    router: RouterConfig = RouterConfig()
    cache: CacheConfig = CacheConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    retrieval: RetrievalConfig = RetrievalConfig()

    @model_validator(mode="after")
    def _references_exist(self) -> Config:
        for name, group in self.model_groups.items():
            if group.context is not None and group.context.corpus not in self.retrieval.corpora:
                raise ValueError(f"model_groups.{name}.context.corpus: unknown corpus {group.context.corpus!r}")
            for fallback in group.fallbacks:
                if fallback not in self.model_groups:
                    raise ValueError(f"model_groups.{name}.fallbacks: unknown model group {fallback!r}")
        return self


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default is an error."""
    env = os.environ if env is None else env
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None:
            if default is None:
                missing.append(name)
                return ""
            return default
        return value

    expanded = _VAR.sub(replace, text)
    if missing:
        raise ConfigError(f"environment variables not set: {', '.join(sorted(set(missing)))}")
    return expanded


def field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("function-after", "function-plain") and not str(part).startswith("function-"):
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def expand_tree(node: Any, env: dict[str, str] | None = None) -> Any:
    """Expand variables in every string of parsed YAML (never in comments or keys' structure)."""
    if isinstance(node, str):
        return expand_env(node, env)
    if isinstance(node, dict):
        return {key: expand_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [expand_tree(value, env) for value in node]
    return node


def parse_config(data: Any) -> Config:
    try:
        return Config.model_validate(data if data is not None else {})
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{field_path(error['loc'])}: {message}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def with_server(config: Config, overrides: dict[str, Any]) -> Config:
    """``config`` with some ``server`` fields replaced (``serve --port``), validated again."""
    if not overrides:
        return config
    try:
        server = ServerConfig.model_validate({**config.server.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError("; ".join(f"server.{field_path(e['loc'])}: {e['msg']}" for e in exc.errors())) from None
    return config.model_copy(update={"server": server})


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return config_from_text(text, str(path))


def config_from_text(text: str, source: str) -> Config:
    """The config in ``text`` (read from ``source``, named in errors)."""
    try:
        data = expand_tree(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        # Not str(exc): it quotes the offending line, which may hold a literal key.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{source} is not valid YAML{where}: {problem}") from None
    return parse_config(data)
