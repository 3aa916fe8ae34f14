"""The injection decision: a pod and the sidecar settings in, a JSONPatch or skip reasons out.

Everything here is pure (no I/O, no clock, no Kubernetes client) so that the
webhook, the offline ``inject`` command and the golden tests share one code
path. The chart renders :class:`SidecarSettings` (``injector.yaml``), which is
what keeps it the single source of truth for the sidecar's spec.

Opt-in, in order of precedence:

1. pod annotation ``llm-sidecar.io/inject: enabled | disabled``;
2. namespace label ``llm-sidecar.io/inject: enabled | disabled``.

A pod is skipped (with a reason) when it opted out or never opted in, is
already injected, uses the host network, lives in a protected namespace, is
one of the injector's own pods, would get a ConfigMap or Secret that does not
exist in its namespace (a volume that cannot mount would keep it Pending), has
a port clash with the proxy, or is run-to-completion on a cluster without
native sidecars (a plain sidecar container would keep the Job from finishing).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

PREFIX = "llm-sidecar.io/"
INJECT = PREFIX + "inject"
STATUS = PREFIX + "status"
CONTAINER_NAME = "llm-sidecar"
CONFIG_VOLUME = "llm-sidecar-config"
KEYS_VOLUME = "llm-sidecar-keys"
TMP_VOLUME = "llm-sidecar-tmp"
CONFIG_DIR = "/etc/llm-sidecar"
KEYS_DIR = "/var/run/secrets/llm-sidecar/keys"
PROTECTED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
NATIVE_SIDECAR_MIN = (1, 29)

#: Per-pod annotations (without the prefix) and what they override; docs/kubernetes.md
#: table lists the same keys (a test keeps the two in step).
ANNOTATIONS: dict[str, str] = {
    "inject": "`enabled` or `disabled`: opt this pod in or out, whatever the namespace says",
    "image": "sidecar image (e.g. a canary tag); only where the chart allows it (`sidecar.allowImageOverride`): "
    "that container receives the provider keys",
    "proxy-port": "port of the proxy on 127.0.0.1 (when the app needs the default)",
    "admin-port": "port of the admin listener: probes, `/metrics` (when the app needs the default)",
    "native-sidecar": "`true` / `false`: init container with `restartPolicy: Always`, or a plain container",
    "cpu-request": "sidecar CPU request",
    "cpu-limit": "sidecar CPU limit",
    "memory-request": "sidecar memory request",
    "memory-limit": "sidecar memory limit",
    "config-map": "name of the sidecar ConfigMap to mount (must exist in the namespace)",
    "set-base-urls": "`false`: leave the app containers' environment alone",
    "override-base-urls": "`true`: replace `OPENAI_BASE_URL`/`ANTHROPIC_BASE_URL` the pod already sets",
    "containers": "comma-separated app containers that get the base URLs (default: all)",
    "scrape": "`false`: do not add the Prometheus scrape annotations",
}

_TRUE = {"true", "yes", "1", "on", "enabled"}
_FALSE = {"false", "no", "0", "off", "disabled"}


class SettingsError(ValueError):
    """Bad sidecar settings or a bad per-pod annotation value."""


@dataclass(frozen=True)
class SidecarSettings:
    """What the injector adds; rendered by the chart into ``injector.yaml``.

    Defaults equal the chart's defaults (a test renders the chart to prove it),
    so ``llm-sidecar inject`` without ``--settings`` matches a default install.
    """

    image: str = "localhost/llm-sidecar:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    config_map: str = "llm-sidecar-config"
    #: provider keys: ``env`` (envFrom the Secret), ``files`` (mounted), ``passthrough`` (none)
    keys_mode: str = "env"
    keys_secret: str = "llm-sidecar-keys"
    #: the 15000 range, not 8080/9090: the app shares these ports' namespace (``proxy/config.py``)
    proxy_port: int = 15180
    admin_port: int = 15190
    #: ``auto`` (native when the cluster is >= 1.29), ``always`` or ``never``
    native_sidecar: str = "auto"
    resources: Mapping[str, Any] = field(
        default_factory=lambda: {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }
    )
    run_as_user: int = 10001
    set_base_urls: bool = True
    scrape_annotations: bool = True
    extra_env: tuple[Mapping[str, Any], ...] = ()
    #: the injector's namespace: its own pods are never injected
    own_namespace: str = ""
    #: honour the pod annotation ``llm-sidecar.io/image``; off by default, because that
    #: container receives the provider keys and anyone who can create a pod could pick it
    allow_image_override: bool = False

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> SidecarSettings:
        """Build settings from the chart's camelCase ``injector.yaml`` ``sidecar:`` map."""
        data = dict(data or {})
        names = {
            "image": "image",
            "imagePullPolicy": "image_pull_policy",
            "configMap": "config_map",
            "keysMode": "keys_mode",
            "keysSecret": "keys_secret",
            "proxyPort": "proxy_port",
            "adminPort": "admin_port",
            "nativeSidecar": "native_sidecar",
            "resources": "resources",
            "runAsUser": "run_as_user",
            "setBaseUrls": "set_base_urls",
            "scrapeAnnotations": "scrape_annotations",
            "extraEnv": "extra_env",
            "ownNamespace": "own_namespace",
            "allowImageOverride": "allow_image_override",
        }
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise SettingsError(f"sidecar: unknown settings {unknown}; known: {sorted(names)}")
        kwargs = {names[k]: v for k, v in data.items()}
        if "extra_env" in kwargs:
            kwargs["extra_env"] = tuple(kwargs["extra_env"] or ())
        settings = cls(**kwargs)
        settings.check()
        return settings

    def check(self) -> None:
        if self.keys_mode not in {"env", "files", "passthrough"}:
            raise SettingsError(f"sidecar.keysMode: {self.keys_mode!r} is not env, files or passthrough")
        if self.native_sidecar not in {"auto", "always", "never"}:
            raise SettingsError(f"sidecar.nativeSidecar: {self.native_sidecar!r} is not auto, always or never")
        if not self.image:
            raise SettingsError("sidecar.image: must not be empty")
        for name, port in (("proxyPort", self.proxy_port), ("adminPort", self.admin_port)):
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise SettingsError(f"sidecar.{name}: {port!r} is not a port (1-65535)")
        if self.proxy_port == self.admin_port:
            raise SettingsError("sidecar.proxyPort and sidecar.adminPort must differ")


@dataclass(frozen=True)
class Context:
    """What the caller knows about the pod's surroundings.

    ``objects_present`` is ``None`` when unknown (the offline ``inject`` command
    trusts the user); otherwise the names of the ConfigMaps and Secrets that
    exist in the pod's namespace, as ``configmap/NAME`` and ``secret/NAME``.
    """

    namespace: str = "default"
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    kube_version: tuple[int, int] | None = None
    objects_present: frozenset[str] | None = None


@dataclass(frozen=True)
class Decision:
    """A JSONPatch to apply (``injected``), or why there is none."""

    patch: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def injected(self) -> bool:
        return not self.reasons


def parse_version(text: str) -> tuple[int, int]:
    """``1.30``, ``v1.30.2`` → ``(1, 30)``."""
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", text.strip())
    if not m:
        raise SettingsError(f"{text!r} is not a Kubernetes version like 1.30")
    return int(m.group(1)), int(m.group(2))


def _flag(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SettingsError(f"annotation {PREFIX}{name}: {value!r} is not true/false")


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def opt_in(pod: Mapping[str, Any], ctx: Context) -> tuple[bool, str]:
    """Whether the pod asked for a sidecar, and a sentence saying why (not)."""
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    value = ann.get(INJECT)
    if value is not None:
        on = _flag(value, "inject")
        return on, f"pod annotation {INJECT}={value}"
    label = (ctx.namespace_labels or {}).get(INJECT)
    if label is not None:
        on = _flag(label, "inject")
        return on, f"namespace {ctx.namespace} label {INJECT}={label}"
    return False, f"neither the pod annotation nor the namespace label {INJECT} opts in"


def effective(settings: SidecarSettings, pod: Mapping[str, Any]) -> SidecarSettings:
    """The settings after the pod's ``llm-sidecar.io/*`` annotations are applied."""
    ann = (pod.get("metadata") or {}).get("annotations") or {}

    def get(name: str) -> str | None:
        return ann.get(PREFIX + name)

    changes: dict[str, Any] = {}
    if (v := get("image")) is not None:
        if not settings.allow_image_override:
            raise SettingsError(
                f"annotation {PREFIX}image: not allowed here (the chart's "
                f"sidecar.allowImageOverride is false; the sidecar holds the provider keys)"
            )
        changes["image"] = v
    for name, attr in (("proxy-port", "proxy_port"), ("admin-port", "admin_port")):
        if (v := get(name)) is not None:
            if not v.strip().isdigit() or not 1 <= int(v) <= 65535:
                raise SettingsError(f"annotation {PREFIX}{name}: {v!r} is not a port (1-65535)")
            changes[attr] = int(v)
    if {"proxy_port", "admin_port"} & changes.keys() and (
        changes.get("proxy_port", settings.proxy_port) == changes.get("admin_port", settings.admin_port)
    ):
        raise SettingsError(f"annotations {PREFIX}proxy-port and {PREFIX}admin-port: the two ports must differ")
    if (v := get("native-sidecar")) is not None:
        changes["native_sidecar"] = "always" if _flag(v, "native-sidecar") else "never"
    if (v := get("config-map")) is not None:
        changes["config_map"] = v
    if (v := get("set-base-urls")) is not None:
        changes["set_base_urls"] = _flag(v, "set-base-urls")
    if (v := get("scrape")) is not None:
        changes["scrape_annotations"] = _flag(v, "scrape")
    changes["resources"] = _resources(settings.resources, get)
    out = dataclasses.replace(settings, **changes)
    out.check()
    return out


# A Kubernetes quantity (resource.Quantity): a decimal number and an optional binary
# (Ki..Ei), decimal (n..E) or exponent suffix. Parsed here rather than with the kubernetes
# client, which ``llm-sidecar inject`` does not need.
_QUANTITY = re.compile(r"(?P<number>\+?(?:\d+\.?\d*|\.\d+))(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?")
_SUFFIX = {
    suffix: Decimal(base) ** power
    for suffix, base, power in (
        ("Ki", 2, 10),
        ("Mi", 2, 20),
        ("Gi", 2, 30),
        ("Ti", 2, 40),
        ("Pi", 2, 50),
        ("Ei", 2, 60),
        ("n", 10, -9),
        ("u", 10, -6),
        ("m", 10, -3),
        ("", 10, 0),
        ("k", 10, 3),
        ("M", 10, 6),
        ("G", 10, 9),
        ("T", 10, 12),
        ("P", 10, 15),
        ("E", 10, 18),
    )
}


def quantity(text: str) -> Decimal | None:
    """The value of a non-negative Kubernetes quantity (``250m``, ``64Mi``, ``1e3``), else None."""
    m = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return None
    suffix = m.group("suffix") or ""
    try:
        scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") and len(suffix) > 1 else _SUFFIX[suffix]
        return Decimal(m.group("number")) * scale
    except (InvalidOperation, KeyError, ValueError):
        return None


def _resources(defaults: Mapping[str, Any], get: Any) -> dict[str, Any]:
    """The sidecar's resources with the pod's annotations applied, each checked the way the
    API server would: a bad quantity, or a limit below its request, would make it reject the
    pod (and a Deployment could then create none), so either is a reason not to inject."""
    res = copy.deepcopy(dict(defaults))
    given: dict[tuple[str, str], str] = {}
    for kind, suffix in (("requests", "request"), ("limits", "limit")):
        for key in ("cpu", "memory"):
            name = f"{key}-{suffix}"
            if (v := get(name)) is not None:
                if quantity(v) is None:
                    raise SettingsError(
                        f"annotation {PREFIX}{name}: {v!r} is not a Kubernetes quantity "
                        f"(e.g. {'250m' if key == 'cpu' else '128Mi'})"
                    )
                res.setdefault(kind, {})[key] = v
                given[kind, key] = name
    for key in ("cpu", "memory"):
        request, limit = (res.get(kind, {}).get(key) for kind in ("requests", "limits"))
        if request is None or limit is None:
            continue
        low, high = quantity(str(request)), quantity(str(limit))
        if low is not None and high is not None and high < low:
            names = [f"{PREFIX}{n}" for n in (given.get(("requests", key)), given.get(("limits", key))) if n]
            raise SettingsError(
                f"annotation {' and '.join(names)}: the {key} limit {limit} is below the request {request}"
            )
    return res


def use_native(settings: SidecarSettings, ctx: Context) -> bool:
    if settings.native_sidecar == "always":
        return True
    if settings.native_sidecar == "never":
        return False
    return ctx.kube_version is not None and tuple(ctx.kube_version) >= NATIVE_SIDECAR_MIN


def required_objects(settings: SidecarSettings) -> list[str]:
    """The namespaced objects the sidecar's volumes and env refer to."""
    names = [f"configmap/{settings.config_map}"]
    if settings.keys_mode != "passthrough":
        names.append(f"secret/{settings.keys_secret}")
    return names


def _ports(containers: Iterable[Mapping[str, Any]]) -> set[int]:
    return {p.get("containerPort") for c in containers for p in c.get("ports") or []}


def skip_reasons(pod: Mapping[str, Any], settings: SidecarSettings, ctx: Context) -> list[str]:
    """Every reason not to inject; empty when injection should go ahead."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    ann = meta.get("annotations") or {}
    reasons: list[str] = []
    all_containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    if ann.get(STATUS) == "injected" or any(c.get("name") == CONTAINER_NAME for c in all_containers):
        return ["already injected"]
    if ctx.namespace in PROTECTED_NAMESPACES:
        return [f"namespace {ctx.namespace} is never injected"]
    labels = meta.get("labels") or {}
    if (
        settings.own_namespace
        and ctx.namespace == settings.own_namespace
        and (labels.get("app.kubernetes.io/name") == "llm-sidecar")
    ):
        return ["the injector's own pods are never injected"]
    on, why = opt_in(pod, ctx)
    if not on:
        return [f"not opted in: {why}"]
    if spec.get("hostNetwork"):
        reasons.append("hostNetwork: the proxy's ports would be bound on the node")
    clash = _ports(all_containers) & {settings.proxy_port, settings.admin_port}
    if clash:
        reasons.append(
            f"a container already uses port(s) {sorted(clash)} that the sidecar needs: choose others "
            f"with the annotations {PREFIX}proxy-port and {PREFIX}admin-port"
        )
    if ctx.objects_present is not None:
        missing = [o for o in required_objects(settings) if o not in ctx.objects_present]
        if missing:
            reasons.append(
                f"{', '.join(missing)} missing in namespace {ctx.namespace}: label the namespace "
                f"{INJECT}=enabled so the injector syncs them, or create them"
            )
    if not use_native(settings, ctx) and spec.get("restartPolicy") in {"Never", "OnFailure"}:
        reasons.append(
            f"restartPolicy {spec['restartPolicy']} needs a native sidecar "
            f"(Kubernetes >= 1.29) or the pod would never complete"
        )
    return reasons


#: the sidecar's zone and region (``router.zone`` / ``router.region``), from the pod's labels
TOPOLOGY_ENV = {
    "LLM_SIDECAR_ZONE": "topology.kubernetes.io/zone",
    "LLM_SIDECAR_REGION": "topology.kubernetes.io/region",
}


def sidecar_container(settings: SidecarSettings, native: bool) -> dict[str, Any]:
    """The sidecar container spec (also rendered, identically, by the chart's gateway)."""
    admin = settings.admin_port

    def probe(path: str, **timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": admin}, **timing}

    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        # Zone-aware routing: the pod's topology labels (copied from its node at binding by
        # Kubernetes' PodTopologyLabels admission, or set on the pod); empty when absent.
        *[
            {"name": name, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{label}']"}}}
            for name, label in TOPOLOGY_ENV.items()
        ],
        *[dict(e) for e in settings.extra_env],
    ]
    if not native:
        # Stopped together with the app: keep serving its shutdown calls until it is idle.
        env.append({"name": "LLM_SIDECAR_MODE", "value": "container"})
    mounts = [
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        # The ports are arguments, not ConfigMap keys: they are set per pod (annotations).
        "args": [
            "serve",
            "--config",
            f"{CONFIG_DIR}/sidecar.yaml",
            "--port",
            str(settings.proxy_port),
            "--admin-port",
            str(admin),
        ],
        "ports": [
            {"name": "llm-proxy", "containerPort": settings.proxy_port, "protocol": "TCP"},
            {"name": "llm-admin", "containerPort": admin, "protocol": "TCP"},
        ],
        "env": env,
    }
    if settings.keys_mode == "env":
        container["envFrom"] = [{"secretRef": {"name": settings.keys_secret}}]
    elif settings.keys_mode == "files":
        mounts.append({"name": KEYS_VOLUME, "mountPath": KEYS_DIR, "readOnly": True})
    container.update(
        {
            "volumeMounts": mounts,
            "resources": copy.deepcopy(dict(settings.resources)),
            # The kubelet waits for a native sidecar's startup probe before it
            # starts the app containers, so the app's first call finds the proxy.
            "startupProbe": probe("/readyz", periodSeconds=1, timeoutSeconds=2, failureThreshold=60),
            "readinessProbe": probe("/readyz", periodSeconds=5, timeoutSeconds=2),
            "livenessProbe": probe("/healthz", periodSeconds=10, timeoutSeconds=2, failureThreshold=3),
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": settings.run_as_user,
                "runAsGroup": settings.run_as_user,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        }
    )
    if native:
        container["restartPolicy"] = "Always"
    return container


def sidecar_volumes(settings: SidecarSettings) -> list[dict[str, Any]]:
    vols: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": settings.config_map}},
        {"name": TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
    if settings.keys_mode == "files":
        vols.append({"name": KEYS_VOLUME, "secret": {"secretName": settings.keys_secret}})
    return vols


def base_urls(settings: SidecarSettings) -> dict[str, str]:
    origin = f"http://127.0.0.1:{settings.proxy_port}"
    return {"OPENAI_BASE_URL": f"{origin}/v1", "ANTHROPIC_BASE_URL": f"{origin}/anthropic"}


def _env_ops(pod: Mapping[str, Any], settings: SidecarSettings) -> list[dict[str, Any]]:
    if not settings.set_base_urls:
        return []
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    override = _flag(ann.get(PREFIX + "override-base-urls", "false"), "override-base-urls")
    only = ann.get(PREFIX + "containers")
    wanted = {n.strip() for n in only.split(",") if n.strip()} if only else None
    ops: list[dict[str, Any]] = []
    for i, c in enumerate((pod.get("spec") or {}).get("containers") or []):
        if wanted is not None and c.get("name") not in wanted:
            continue
        env = c.get("env")
        if env is None:
            ops.append({"op": "add", "path": f"/spec/containers/{i}/env", "value": []})
            env = []
        index = {e.get("name"): j for j, e in enumerate(env)}
        for name, value in base_urls(settings).items():
            if name not in index:
                ops.append(
                    {"op": "add", "path": f"/spec/containers/{i}/env/-", "value": {"name": name, "value": value}}
                )
            elif override:
                ops.append(
                    {
                        "op": "replace",
                        "path": f"/spec/containers/{i}/env/{index[name]}",
                        "value": {"name": name, "value": value},
                    }
                )
    return ops


def _annotation_ops(pod: Mapping[str, Any], settings: SidecarSettings, native: bool) -> list[dict[str, Any]]:
    meta = pod.get("metadata") or {}
    ops: list[dict[str, Any]] = []
    if meta.get("annotations") is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    ann = meta.get("annotations") or {}
    wanted = {STATUS: "injected", PREFIX + "mode": "native" if native else "container"}
    if settings.scrape_annotations:
        wanted |= {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(settings.admin_port),
            "prometheus.io/path": "/metrics",
        }
    for key, value in wanted.items():
        if key.startswith("prometheus.io/") and key in ann:
            continue  # the app's own scrape settings win
        op = "replace" if key in ann else "add"
        ops.append({"op": op, "path": f"/metadata/annotations/{_escape(key)}", "value": value})
    return ops


def plan(pod: Mapping[str, Any], settings: SidecarSettings, ctx: Context | None = None) -> Decision:
    """Decide for one pod: the JSONPatch that injects the sidecar, or the reasons to skip.

    Idempotent: a pod the patch was applied to is skipped as "already injected".
    A bad annotation value is a skip reason, not an exception, so one pod's typo
    never turns into an error for the API server.
    """
    ctx = ctx or Context()
    try:
        settings = effective(settings, pod)
        reasons = skip_reasons(pod, settings, ctx)
    except SettingsError as exc:
        return Decision(reasons=[str(exc)])
    if reasons:
        return Decision(reasons=reasons)
    spec = pod.get("spec") or {}
    native = use_native(settings, ctx)
    ops: list[dict[str, Any]] = []
    ops += _annotation_ops(pod, settings, native)
    if spec.get("volumes") is None:
        ops.append({"op": "add", "path": "/spec/volumes", "value": []})
    ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in sidecar_volumes(settings)]
    container = sidecar_container(settings, native)
    if native:
        # First among the init containers, so later init containers can call it too.
        if spec.get("initContainers") is None:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers/0", "value": container})
    else:
        ops.append({"op": "add", "path": "/spec/containers/-", "value": container})
    try:
        ops += _env_ops(pod, settings)
    except SettingsError as exc:
        return Decision(reasons=[str(exc)])
    notes = [] if native else ["plain sidecar container: the app may start before the proxy is ready"]
    return Decision(patch=ops, notes=notes)
