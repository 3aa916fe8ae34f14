"""The namespaces the golden pods live in, as the webhook would see them."""

from __future__ import annotations

from proxy.kube.sidecar import INJECT, Context, SidecarSettings

KUBE_VERSION = (1, 30)
BOTH = frozenset({"configmap/llm-sidecar-config", "secret/llm-sidecar-keys"})
NAMESPACE_LABELS = {"demo-app": {INJECT: "enabled"}, "other": {}, "unsynced": {}}
OBJECTS = {"demo-app": BOTH, "other": BOTH, "unsynced": frozenset()}
SETTINGS = SidecarSettings(image="localhost/llm-sidecar:0.1.0", own_namespace="llm-sidecar")


def context(namespace: str) -> Context:
    return Context(
        namespace=namespace,
        namespace_labels=NAMESPACE_LABELS.get(namespace, {}),
        kube_version=KUBE_VERSION,
        objects_present=OBJECTS.get(namespace, frozenset()),
    )
