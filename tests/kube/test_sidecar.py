"""The pure injection core: golden pod → patch pairs, idempotence, skip reasons, annotations."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import jsonpatch
import pytest
import yaml

from proxy.kube import sidecar
from proxy.kube.sidecar import INJECT, Context, SidecarSettings, plan
from tests.kube.cases import SETTINGS, context
from tests.kube.conftest import GOLDEN, KUBE_VERSIONS, ROOT

PODS = sorted(GOLDEN.glob("pod-*.yaml"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _golden_path(pod: Path) -> Path:
    return pod.with_name(pod.name.removeprefix("pod-").removesuffix(".yaml") + ".patch.json")


@pytest.mark.parametrize("pod_file", PODS, ids=lambda p: p.stem)
def test_golden(pod_file: Path) -> None:
    pod = _load(pod_file)
    decision = plan(pod, SETTINGS, context(pod["metadata"]["namespace"]))
    got = {"patch": decision.patch} if decision.injected else {"skip": decision.reasons}
    golden = _golden_path(pod_file)
    if UPDATE or not golden.exists():
        golden.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(golden.read_text()), f"rerun with UPDATE_GOLDEN=1 if {golden.name} should change"


def _mutated(pod_file: Path) -> dict | None:
    golden = json.loads(_golden_path(pod_file).read_text())
    if "patch" not in golden:
        return None
    return jsonpatch.apply_patch(_load(pod_file), golden["patch"])


def test_injected_pods_are_valid_kubernetes(tmp_path: Path, kubernetes_validate: str) -> None:
    """Apply each golden patch with jsonpatch and validate the pods against two schema versions."""
    docs = []
    for pod_file in PODS:
        pod = _mutated(pod_file)
        if pod is not None:
            # A pod from a controller has only generateName until the API server names it.
            pod["metadata"].setdefault("name", pod["metadata"].pop("generateName", "x").rstrip("-"))
            docs.append(pod)
    assert len(docs) >= 4
    out = tmp_path / "pods.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    for version in KUBE_VERSIONS:
        res = subprocess.run([kubernetes_validate, "--strict", "-k", version, str(out)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("pod_file", PODS, ids=lambda p: p.stem)
def test_idempotent(pod_file: Path) -> None:
    pod = _mutated(pod_file)
    if pod is None:
        pytest.skip("not injected")
    again = plan(pod, SETTINGS, context(pod["metadata"]["namespace"]))
    assert again.reasons == ["already injected"]


def test_native_sidecar_comes_first_and_job_completes() -> None:
    pod = _mutated(GOLDEN / "pod-job.yaml")
    init = pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["llm-sidecar", "migrate"]
    assert init[0]["restartPolicy"] == "Always"
    assert init[0]["startupProbe"]["httpGet"]["path"] == "/readyz"


def test_existing_env_and_scrape_port_are_kept() -> None:
    pod = _mutated(GOLDEN / "pod-existing-env.yaml")
    web, worker = pod["spec"]["containers"][:2]
    assert {e["name"]: e["value"] for e in web["env"]}["OPENAI_BASE_URL"] == "http://my-gateway/v1"
    assert {e["name"]: e["value"] for e in worker["env"]}["OPENAI_BASE_URL"] == "http://127.0.0.1:15180/v1"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    side = pod["spec"]["initContainers"][0]
    assert side["resources"]["limits"]["memory"] == "512Mi"


def test_plain_container_with_override_and_container_filter() -> None:
    pod = _mutated(GOLDEN / "pod-plain-container.yaml")
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == ["app", "metrics", "llm-sidecar"]
    assert "restartPolicy" not in pod["spec"]["containers"][2]
    app, metrics = pod["spec"]["containers"][:2]
    assert app["env"] == [
        {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:15180/v1"},
        {"name": "ANTHROPIC_BASE_URL", "value": "http://127.0.0.1:15180/anthropic"},
    ]
    assert "env" not in metrics


POD = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x"}]}}


def _skip(pod: dict, settings: SidecarSettings = SETTINGS, **ctx) -> list[str]:
    ctx.setdefault("namespace_labels", {INJECT: "enabled"})
    return plan(pod, settings, Context(**ctx)).reasons


@pytest.mark.parametrize(
    ("change", "ctx", "reason"),
    [
        ({}, {"namespace_labels": {}}, "not opted in"),
        ({}, {"namespace_labels": {INJECT: "disabled"}}, "not opted in"),
        ({}, {"namespace": "kube-system"}, "never injected"),
        ({"spec": {"hostNetwork": True}}, {}, "hostNetwork"),
        ({"spec": {"restartPolicy": "Never"}}, {"kube_version": (1, 28)}, "native sidecar"),
        ({"spec": {"containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 15180}]}]}}, {}, "port"),
        ({"metadata": {"annotations": {"llm-sidecar.io/native-sidecar": "perhaps"}}}, {}, "is not true/false"),
        (
            {"metadata": {"annotations": {"llm-sidecar.io/proxy-port": "http"}}},
            {},
            "llm-sidecar.io/proxy-port: 'http' is not a port",
        ),
        (
            {"metadata": {"annotations": {"llm-sidecar.io/admin-port": "70000"}}},
            {},
            "llm-sidecar.io/admin-port: '70000' is not a port",
        ),
        (
            {
                "metadata": {"annotations": {"llm-sidecar.io/proxy-port": "9000"}},
                "spec": {"containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 9000}]}]},
            },
            {},
            "[9000]",
        ),
        ({"metadata": {"annotations": {sidecar.STATUS: "injected"}}}, {}, "already injected"),
        ({}, {"objects_present": frozenset({"configmap/llm-sidecar-config"})}, "secret/llm-sidecar-keys missing"),
    ],
)
def test_skip_reasons(change: dict, ctx: dict, reason: str) -> None:
    pod = copy.deepcopy(POD)
    for key, value in change.items():
        pod.setdefault(key, {}).update(value)
    reasons = _skip(pod, **ctx)
    assert any(reason in r for r in reasons), reasons


def test_pod_annotation_beats_namespace_label() -> None:
    pod = copy.deepcopy(POD)
    pod["metadata"]["annotations"] = {INJECT: "enabled"}
    assert plan(pod, SETTINGS, Context(namespace_labels={INJECT: "disabled"})).injected


def test_injectors_own_pods_are_skipped() -> None:
    pod = copy.deepcopy(POD)
    pod["metadata"]["labels"] = {"app.kubernetes.io/name": "llm-sidecar"}
    assert "own pods" in _skip(pod, namespace="llm-sidecar")[0]


def test_passthrough_needs_no_secret_and_files_mode_mounts_it() -> None:
    only_cm = frozenset({"configmap/llm-sidecar-config"})
    passthrough = SidecarSettings(keys_mode="passthrough")
    d = plan(POD, passthrough, Context(namespace_labels={INJECT: "enabled"}, objects_present=only_cm))
    assert d.injected and "envFrom" not in jsonpatch.apply_patch(POD, d.patch)["spec"]["containers"][1]
    files = plan(POD, SidecarSettings(keys_mode="files"), Context(namespace_labels={INJECT: "enabled"}))
    pod = jsonpatch.apply_patch(POD, files.patch)
    assert {"name": "llm-sidecar-keys", "secret": {"secretName": "llm-sidecar-keys"}} in pod["spec"]["volumes"]


def test_plan_does_not_mutate_its_input() -> None:
    pod = copy.deepcopy(POD)
    plan(pod, SETTINGS, Context(namespace_labels={INJECT: "enabled"}))
    assert pod == POD


def test_kubernetes_docs_document_every_annotation() -> None:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    for name in sidecar.ANNOTATIONS:
        assert f"`{sidecar.PREFIX}{name}`" in text, name
