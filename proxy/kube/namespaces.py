"""Keep the sidecar's ConfigMap and keys Secret in every namespace that opts in.

ConfigMaps and Secrets are namespaced, injected pods live in the apps'
namespaces, and a pod must never get a volume that cannot mount. So the
injector copies the two objects from its own namespace into each namespace
labelled ``llm-sidecar.io/inject=enabled``, labels the copies as its own, and
deletes its copies when the label goes away. The webhook asks this view which
objects exist before it injects.

:func:`plan_sync` is the pure part (tested without a cluster); the
:class:`KubeNamespaces` edge talks to the API server with the synchronous
``kubernetes`` client in a worker thread. This is the only module that
imports ``kubernetes``; only ``llm-sidecar webhook`` imports this module.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.kube.sidecar import INJECT, PROTECTED_NAMESPACES, Context, SidecarSettings, required_objects

log = logging.getLogger("llm_sidecar.namespaces")

MANAGED_BY = "app.kubernetes.io/managed-by"
OWNER = "llm-sidecar-injector"
COPIED_FROM = "llm-sidecar.io/copied-from"


def opted_in(labels: Mapping[str, str]) -> bool:
    return (labels or {}).get(INJECT, "").lower() == "enabled"


@dataclass(frozen=True)
class SyncPlan:
    """What to write and what to delete; items are ``(namespace, "configmap/NAME")``."""

    apply: list[tuple[str, str]]
    delete: list[tuple[str, str]]


def plan_sync(
    namespaces: Mapping[str, Mapping[str, str]],
    owned: Mapping[str, frozenset[str]],
    wanted: list[str],
    source_namespace: str,
) -> SyncPlan:
    """Pure: from namespace labels and our existing copies, the writes and deletes.

    ``owned`` holds only objects carrying our ``managed-by`` label: a user's own
    ConfigMap of the same name is never overwritten or deleted.
    """
    apply, delete = [], []
    for ns, labels in sorted(namespaces.items()):
        if ns == source_namespace or ns in PROTECTED_NAMESPACES:
            continue
        if opted_in(labels):
            apply += [(ns, obj) for obj in wanted]
    for ns, objs in sorted(owned.items()):
        keep = ns in namespaces and opted_in(namespaces[ns]) and ns != source_namespace
        delete += [(ns, obj) for obj in sorted(objs) if not keep or obj not in wanted]
    return SyncPlan(apply=apply, delete=delete)


def copy_of(source: Mapping[str, Any], namespace: str, source_namespace: str) -> dict[str, Any]:
    """The body of our copy of a ConfigMap or Secret (data only, labelled as ours)."""
    meta = source.get("metadata") or {}
    body = {k: v for k, v in source.items() if k in {"apiVersion", "kind", "data", "binaryData", "type", "stringData"}}
    body["metadata"] = {
        "name": meta["name"],
        "namespace": namespace,
        "labels": {MANAGED_BY: OWNER},
        "annotations": {COPIED_FROM: f"{source_namespace}/{meta['name']}"},
    }
    return body


class KubeNamespaces:
    """The webhook's namespace view, kept fresh by a resync thread that also syncs copies."""

    def __init__(self, settings: SidecarSettings, source_namespace: str, resync_seconds: float = 60.0) -> None:
        import kubernetes  # lazily: only the webhook role pays for this import

        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        self._client = kubernetes.client
        # Any: bodies go in as plain dicts (copies of what was read), which the client takes but its
        # annotations do not admit; and the objects read back are used through their fields only.
        self._core: Any = kubernetes.client.CoreV1Api()
        self.settings = settings
        self.source_namespace = source_namespace
        self.resync_seconds = resync_seconds
        self._labels: dict[str, dict[str, str]] = {}
        self._present: dict[str, frozenset[str]] = {}
        self._version: tuple[int, int] | None = None
        self._loaded = threading.Event()
        self._stop = threading.Event()

    def ready(self) -> bool:
        return self._loaded.is_set()

    async def context(self, namespace: str) -> Context:
        return Context(
            namespace=namespace,
            namespace_labels=self._labels.get(namespace, {}),
            kube_version=self._version,
            objects_present=self._present.get(namespace, frozenset()),
        )

    async def cleanup_ctx(self, _: Any) -> AsyncIterator[None]:
        thread = threading.Thread(target=self._run, name="namespace-sync", daemon=True)
        thread.start()
        yield
        self._stop.set()
        await asyncio.to_thread(thread.join, 5)

    # --- edge: everything below talks to the API server ---------------------------

    def _run(self) -> None:
        try:
            info = self._client.VersionApi().get_code()
            self._version = (int(info.major), int("".join(ch for ch in info.minor if ch.isdigit())))
        except Exception as exc:  # noqa: BLE001 - unknown version means plain containers
            log.warning("cannot read the cluster version: %s", exc)
        while not self._stop.is_set():
            try:
                self.resync()
                self._loaded.set()
            except Exception as exc:  # noqa: BLE001 - keep syncing; the webhook stays up
                log.warning("namespace resync failed: %s", exc)
            self._watch_namespaces()

    def _watch_namespaces(self) -> None:
        """Follow namespace label changes until the next full resync."""
        import kubernetes

        w = kubernetes.watch.Watch()
        try:
            for event in w.stream(self._core.list_namespace, timeout_seconds=int(self.resync_seconds)):
                ns = event["object"]
                name, labels = ns.metadata.name, dict(ns.metadata.labels or {})
                if event["type"] == "DELETED":
                    self._labels.pop(name, None)
                    continue
                changed = opted_in(labels) != opted_in(self._labels.get(name, {}))
                self._labels[name] = labels
                if changed:
                    self.resync()
                if self._stop.is_set():
                    break
        except Exception as exc:  # noqa: BLE001
            log.warning("namespace watch ended: %s", exc)
            self._stop.wait(5)
        finally:
            w.stop()

    def _objects(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """All ConfigMaps/Secrets with the wanted names: (present, owned by us) per namespace."""
        present: dict[str, set[str]] = {}
        owned: dict[str, set[str]] = {}
        for obj in required_objects(self.settings):
            kind, name = obj.split("/", 1)
            lister = (
                self._core.list_config_map_for_all_namespaces
                if kind == "configmap"
                else self._core.list_secret_for_all_namespaces
            )
            for item in lister(field_selector=f"metadata.name={name}").items:
                ns = item.metadata.namespace
                present.setdefault(ns, set()).add(obj)
                if (item.metadata.labels or {}).get(MANAGED_BY) == OWNER:
                    owned.setdefault(ns, set()).add(obj)
        return present, owned

    def resync(self) -> None:
        self._labels = {n.metadata.name: dict(n.metadata.labels or {}) for n in self._core.list_namespace().items}
        present, owned = self._objects()
        wanted = required_objects(self.settings)
        plan = plan_sync(self._labels, {k: frozenset(v) for k, v in owned.items()}, wanted, self.source_namespace)
        sources = {obj: self._read(self.source_namespace, obj) for obj in wanted} if plan.apply else {}
        for ns, obj in plan.apply:
            if obj in present.get(ns, set()) and obj not in owned.get(ns, set()):
                continue  # the namespace has its own object of that name: leave it alone
            self._write(copy_of(sources[obj], ns, self.source_namespace), obj)
            present.setdefault(ns, set()).add(obj)
        for ns, obj in plan.delete:
            self._delete(ns, obj)
            present.get(ns, set()).discard(obj)
        self._present = {ns: frozenset(objs) for ns, objs in present.items()}

    def _read(self, namespace: str, obj: str) -> dict[str, Any]:
        kind, name = obj.split("/", 1)
        read = self._core.read_namespaced_config_map if kind == "configmap" else self._core.read_namespaced_secret
        return self._core.api_client.sanitize_for_serialization(read(name, namespace))

    def _write(self, body: dict[str, Any], obj: str) -> None:
        kind, name = obj.split("/", 1)
        ns = body["metadata"]["namespace"]
        if kind == "configmap":
            create, replace = self._core.create_namespaced_config_map, self._core.replace_namespaced_config_map
        else:
            create, replace = self._core.create_namespaced_secret, self._core.replace_namespaced_secret
        try:
            replace(name, ns, body)
        except self._client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
            create(ns, body)
        log.info("synced %s into namespace %s", obj, ns)

    def _delete(self, namespace: str, obj: str) -> None:
        kind, name = obj.split("/", 1)
        delete = self._core.delete_namespaced_config_map if kind == "configmap" else self._core.delete_namespaced_secret
        try:
            delete(name, namespace)
            log.info("removed %s from namespace %s (opted out)", obj, namespace)
        except self._client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
