"""The sidecar's configuration: one YAML file, validated at start-up.

Each package owns its section (``router.config``, ``cache.config``,
``telemetry.config``); this module assembles them, expands ``${VAR}`` and
``${VAR:-default}`` in string values from the environment, and reports every bad field of a file
at once, each by its path (``model_groups.gpt-4o.endpoints[1].max_concurrent: must be >= 1``):
fields are checked on their own where they can be, and references between sections on the input.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from proxy.cache.config import CacheConfig, CachePolicy
from proxy.discovery.config import DiscoverConfig
from proxy.rag.config import ContextInjection, RetrievalConfig
from proxy.router.config import RouteConfig, RouterConfig
from proxy.telemetry.config import TelemetryConfig
from proxy.validation import Loc, carried, invalid, problem


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
    #: seconds the whole drain on SIGTERM may take; streams still open then end with an error event
    drain_timeout: float = Field(30.0, ge=0)
    #: open client connections the proxy listener holds at most (lowered to fit the file descriptor limit)
    max_connections: int = Field(4096, ge=1)
    #: open connections the admin listener holds at most (probes and scrapes need few)
    admin_max_connections: int = Field(64, ge=1)
    #: seconds an idle client connection stays open; also how long a new one may take to send its request head
    keepalive_timeout: float = Field(60.0, gt=0)
    #: seconds between checks of the config file for changes (``serve`` reloads it); 0 turns that off
    reload_interval: float = Field(5.0, ge=0)

    @field_validator("admin_port")
    @classmethod
    def _own_port(cls, admin_port: int, info: ValidationInfo) -> int:
        # Else serve fails to bind it, "already in use", by the sidecar itself. 0 is any free port.
        port, host, admin_host = info.data.get("port"), info.data.get("host"), info.data.get("admin_host")
        wildcard = {"0.0.0.0", "::", ""}
        if admin_port and admin_port == port and (host == admin_host or {host, admin_host} & wildcard):
            raise ValueError("the proxy's port (server.port) too; give the admin listener its own")
        return admin_port


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

    @model_validator(mode="wrap")
    @classmethod
    def _references_exist(cls, data: Any, handler: ModelWrapValidatorHandler[Config]) -> Config:
        # Checked on the input, not the validated config, so that a dangling reference is
        # reported together with every other error of the file rather than after they are fixed.
        problems = _dangling_references(data)
        try:
            config = handler(data)
        except ValidationError as exc:
            if problems:
                raise invalid(exc.title, carried(exc) + problems) from None
            raise
        if problems:
            raise invalid(cls.__name__, problems)
        if unshared := config._fleet_without_redis():
            raise invalid(cls.__name__, unshared)
        return config

    def discovering(self) -> dict[str, DiscoverConfig]:
        """The model groups whose endpoints are discovered, with their ``discover`` sections."""
        return {name: group.discover for name, group in self.model_groups.items() if group.discover is not None}

    def _fleet_without_redis(self) -> list[InitErrorDetails]:
        """Fleet limits are kept in the shared Redis: without one there is no fleet to share them."""
        if self.cache.backend == "redis":
            return []
        limited: list[Loc] = [
            ("model_groups", name, "endpoints", i, "fleet")
            for name, group in self.model_groups.items()
            for i, endpoint in enumerate(group.endpoints)
            if endpoint.fleet is not None
        ]
        limited += [
            ("model_groups", name, "discover", "endpoint", "fleet")
            for name, group in self.model_groups.items()
            if group.discover is not None and group.discover.endpoint.fleet is not None
        ]
        reason = "fleet limits need cache.backend: redis (the sidecars share their budget there)"
        return [problem(loc, reason) for loc in limited]

    def missing_keys(self) -> list[str]:
        """Endpoints whose key's variable or file is missing, by field path (never a value)."""
        found = [
            f"model_groups.{name}.endpoints[{i}].{endpoint.missing_key}"
            for name, group in self.model_groups.items()
            for i, endpoint in enumerate(group.endpoints)
            if endpoint.missing_key is not None
        ]
        return found + [
            f"model_groups.{name}.discover.endpoint.{group.discover.endpoint.missing_key}"
            for name, group in self.model_groups.items()
            if group.discover is not None and group.discover.endpoint.missing_key is not None
        ]


def _get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)


def _dangling_references(data: Any) -> list[InitErrorDetails]:
    """Fallback groups, context corpora and corpora's model groups that the config does not define."""
    groups = _get(data, "model_groups")
    if not isinstance(groups, Mapping):
        return []
    corpora = _get(_get(data, "retrieval"), "corpora")
    corpora = corpora if isinstance(corpora, Mapping) else {}
    problems = []
    for name, group in groups.items():
        fallbacks = _get(group, "fallbacks")
        for i, fallback in enumerate(fallbacks if isinstance(fallbacks, list) else []):
            if isinstance(fallback, str) and fallback not in groups:
                problems.append(problem(("model_groups", name, "fallbacks", i), f"unknown model group {fallback!r}"))
        corpus = _get(_get(group, "context"), "corpus")
        if isinstance(corpus, str) and corpus not in corpora:
            problems.append(problem(("model_groups", name, "context", "corpus"), f"unknown corpus {corpus!r}"))
    for name, corpus in corpora.items():
        # A corpus's embeddings and rewrites are calls through this sidecar's own model groups.
        for loc in (("embeddings",), ("expansion", "rewrite")):
            node = corpus
            for key in loc:
                node = _get(node, key)
            group = _get(node, "model_group")
            if isinstance(group, str) and group not in groups:
                problems.append(
                    problem(("retrieval", "corpora", name, *loc, "model_group"), f"unknown model group {group!r}")
                )
    return problems


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default is an error."""
    missing: list[str] = []
    expanded = _expand(text, os.environ if env is None else env, missing)
    if missing:
        raise ConfigError(f"environment variables not set: {', '.join(sorted(set(missing)))}")
    return expanded


def _expand(text: str, env: Mapping[str, str], missing: list[str]) -> str:
    """``text`` with its variables replaced; the unset ones (no default) become "" and go to ``missing``."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None:
            if default is None:
                missing.append(name)
                return ""
            return default
        return value

    return _VAR.sub(replace, text)


def field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("function-after", "function-plain") and not str(part).startswith("function-"):
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def expand_tree(node: Any, env: Mapping[str, str] | None = None) -> tuple[Any, dict[Loc, list[str]]]:
    """Expand variables in every string of parsed YAML; also the unset variables, by field path."""
    missing: dict[Loc, list[str]] = {}
    environ = os.environ if env is None else env

    def walk(node: Any, loc: Loc) -> Any:
        if isinstance(node, str):
            names: list[str] = []
            value = _expand(node, environ, names)
            if names:
                missing[loc] = names
            return value
        if isinstance(node, dict):
            return {key: walk(value, (*loc, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, (*loc, i)) for i, value in enumerate(node)]
        return node

    return walk(node, ()), missing


# A message of our own validators that names a field below the one it was raised for
# ("redis_url: required with backend: redis" at "cache") is reported at that field.
_SUBFIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): (.+)$", re.S)


def parse_config(data: Any, unset: Mapping[Loc, list[str]] | None = None, *, require_keys: bool = False) -> Config:
    """The validated config, or a ``ConfigError`` naming every bad field by its path.

    A missing key (``api_key_env`` unset, ``api_key_file`` unreadable) is an error only with
    ``require_keys`` (``check-config``); ``serve`` starts without it (``Config.missing_keys``).

    ``unset`` holds the environment variables that were not set, by the field that used them;
    those fields are reported as such, not by what their empty value fails.
    """
    lines = [
        f"{field_path(loc)}: environment variable{'s' if len(names) > 1 else ''} not set: "
        f"{', '.join(sorted(set(names)))}"
        for loc, names in (unset or {}).items()
    ]
    unset_paths = [field_path(loc) for loc in unset or {}]
    try:
        config = Config.model_validate(data if data is not None else {}, context={"require_keys": require_keys})
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            path, message = field_path(error["loc"]), error["msg"].removeprefix("Value error, ")
            if error["type"] == "value_error" and (sub := _SUBFIELD.match(message)):
                path = f"{path}.{sub.group(1)}" if error["loc"] else sub.group(1)
                message = sub.group(2)
            if not any(path == used or path.startswith((f"{used}.", f"{used}[")) for used in unset_paths):
                lines.append(f"{path}: {message}")
    else:
        if not lines:
            return config
    raise ConfigError("invalid config:\n  " + "\n  ".join(lines))


def with_server(config: Config, overrides: dict[str, Any]) -> Config:
    """``config`` with some ``server`` fields replaced (``serve --port``), validated again."""
    if not overrides:
        return config
    try:
        server = ServerConfig.model_validate({**config.server.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError("; ".join(f"server.{field_path(e['loc'])}: {e['msg']}" for e in exc.errors())) from None
    return config.model_copy(update={"server": server})


#: Parsing bounds: a config is a few kilobytes; these stop a hostile or broken file
#: (an alias bomb, a runaway generator) before it takes the sidecar's memory.
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_ALIASES = 1000
#: values once every alias is expanded (a thousand endpoints take about 20,000)
MAX_VALUES = 100_000


class _TooBig(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.safe_load`` within ``MAX_DEPTH``, ``MAX_ALIASES`` and ``MAX_VALUES``."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _TooBig(f"more than {MAX_ALIASES} aliases")
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooBig(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_VALUES:
            # Aliases share nodes: a few lines can stand for billions of values once copied.
            raise _TooBig(f"more than {MAX_VALUES} values once its aliases are expanded")
        return node


def _expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """Values under ``node`` with every alias copied out, counted once per shared node."""
    if id(node) not in sizes:
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def load_config(path: str | Path, *, require_keys: bool = False) -> Config:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    return config_from_text(text, str(path), require_keys=require_keys)


def config_from_text(text: str, source: str, *, require_keys: bool = False) -> Config:
    """The config in ``text`` (read from ``source``, named in errors)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        parsed = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader with bounds)
    except _TooBig as exc:
        raise ConfigError(f"{source} is too large to be a config: {exc}") from None
    except yaml.YAMLError as exc:
        # Not str(exc): it quotes the offending line, which may hold a literal key.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{source} is not valid YAML{where}: {reason}") from None
    return parse_config(*expand_tree(parsed), require_keys=require_keys)
