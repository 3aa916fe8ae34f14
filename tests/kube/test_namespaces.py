"""The namespace sync plan (pure) and the rule that the sidecar never imports the kubernetes client."""

from __future__ import annotations

import subprocess
import sys

from proxy.kube.namespaces import copy_of, plan_sync
from tests.kube.conftest import ROOT

WANTED = ["configmap/llm-sidecar-config", "secret/llm-sidecar-keys"]
ON = {"llm-sidecar.io/inject": "enabled"}


def test_sync_into_opted_in_namespaces_only() -> None:
    plan = plan_sync({"a": ON, "b": {}, "kube-system": ON, "llm": ON}, {}, WANTED, "llm")
    assert plan.apply == [("a", WANTED[0]), ("a", WANTED[1])]
    assert plan.delete == []


def test_remove_copies_when_a_namespace_opts_out_or_disappears() -> None:
    owned = {"a": frozenset(WANTED), "gone": frozenset(WANTED[:1]), "c": frozenset(WANTED)}
    plan = plan_sync({"a": {"llm-sidecar.io/inject": "disabled"}, "c": ON}, owned, WANTED, "llm")
    assert sorted(plan.delete) == [("a", WANTED[0]), ("a", WANTED[1]), ("gone", WANTED[0])]
    assert plan.apply == [("c", WANTED[0]), ("c", WANTED[1])]


def test_passthrough_removes_a_stale_secret_copy() -> None:
    plan = plan_sync({"a": ON}, {"a": frozenset(WANTED)}, WANTED[:1], "llm")
    assert plan.delete == [("a", WANTED[1])]


def test_copy_keeps_data_and_labels_it_as_ours() -> None:
    src = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "data": {"K": "dg=="},
        "metadata": {"name": "llm-sidecar-keys", "namespace": "llm", "uid": "x", "resourceVersion": "9"},
    }
    body = copy_of(src, "a", "llm")
    assert body["data"] == {"K": "dg=="} and body["type"] == "Opaque"
    assert body["metadata"] == {
        "name": "llm-sidecar-keys",
        "namespace": "a",
        "labels": {"app.kubernetes.io/managed-by": "llm-sidecar-injector"},
        "annotations": {"llm-sidecar.io/copied-from": "llm/llm-sidecar-keys"},
    }


def test_kube_modules_do_not_import_the_kubernetes_client() -> None:
    code = (
        "import sys, proxy.kube.sidecar, proxy.kube.inject, proxy.kube.webhook, proxy.kube.namespaces; "
        "sys.exit(1 if 'kubernetes' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
