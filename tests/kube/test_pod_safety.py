"""An injected pod, run as a pod runs: the chart's ConfigMap and injector settings, the
``llm-sidecar inject`` patch, the sidecar started with its container's args and env in a
fresh network namespace shared with an "app", its startup probe polled as the kubelet does.

Runs the installed ``llm-sidecar`` under ``unshare --net`` (needs root or user namespaces).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.conftest import ROOT
from tests.kube.test_chart import docs, render

EXE = str(Path(sys.executable).with_name("llm-sidecar"))
MOCK_PORT = 18000  # inside the pod's own network namespace: nothing else is there
MODEL_GROUPS = {
    "gpt-4o-mini": {
        "endpoints": [
            {
                "name": "openai",
                "url": f"http://127.0.0.1:{MOCK_PORT}/v1",
                "dialect": "openai",
                "model": "mock-gpt",
                "api_key_env": "OPENAI_API_KEY",
            }
        ]
    },
    "claude-sonnet": {
        "endpoints": [
            {
                "name": "anthropic",
                "url": f"http://127.0.0.1:{MOCK_PORT}",
                "dialect": "anthropic",
                "model": "mock-claude",
                "api_key_env": "ANTHROPIC_API_KEY",
            }
        ]
    },
}
KEYS = {"OPENAI_API_KEY": "sk-test-openai-0123456789", "ANTHROPIC_API_KEY": "sk-test-anthropic-0123456789"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def _unshare_works() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _unshare_works(), reason="needs `unshare --net` (root or user namespaces)")


def run_pod(
    helm: str,
    tmp_path: Path,
    *,
    annotations: dict[str, str] | None = None,
    helm_args: tuple[str, ...] = (),
    keys: dict[str, str] = KEYS,
    app_ports: tuple[int, ...] = (),
    calls: tuple[tuple[str, Any], ...] = (),
    gets: tuple[str, ...] = (),
    kube_version: str = "1.30",
    term_calls: tuple[tuple[str, Any], ...] = (),
) -> dict[str, Any]:
    """Render, inject and run one pod; ``calls`` are (path under the proxy, body); ``gets`` admin paths;
    ``term_calls`` are made after the pod's SIGTERM, as an app's own shutdown makes them."""
    rendered = docs(render(helm, "--set-json", f"config.modelGroups={json.dumps(MODEL_GROUPS)}", *helm_args).stdout)
    configmaps = {d["metadata"]["name"]: d["data"] for d in rendered if d["kind"] == "ConfigMap"}
    config = tmp_path / "sidecar.yaml"
    config.write_text(configmaps["llm-sidecar-config"]["sidecar.yaml"])
    settings = tmp_path / "injector.yaml"
    settings.write_text(next(v["injector.yaml"] for v in configmaps.values() if "injector.yaml" in v))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "app",
            "namespace": "demo-app",
            "annotations": {"llm-sidecar.io/inject": "enabled", **(annotations or {})},
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    injected = subprocess.run(
        [EXE, "inject", "-f", str(tmp_path / "pod.yaml"), "--settings", str(settings), "--kube-version", kube_version],
        capture_output=True,
        text=True,
        check=True,
    )
    spec = yaml.safe_load(injected.stdout)["spec"]
    sidecar = next(c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == "llm-sidecar")
    app_env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    env = {e["name"]: e.get("value", "x") for e in sidecar["env"]}
    env |= {"PATH": os.environ["PATH"], **keys}
    probe = sidecar["startupProbe"]["httpGet"]
    run_spec = {
        "exe": EXE,
        "mock_port": MOCK_PORT,
        "sidecar_argv": [str(config) if a == "/etc/llm-sidecar/sidecar.yaml" else a for a in sidecar["args"]],
        "env": env,
        "probe_url": f"http://127.0.0.1:{probe['port']}{probe['path']}",
        "app_ports": list(app_ports),
        "calls": [[app_env["OPENAI_BASE_URL"].removesuffix("/v1") + path, body] for path, body in calls],
        "gets": {path: f"http://127.0.0.1:{probe['port']}{path}" for path in gets},
        "term_calls": [[app_env["OPENAI_BASE_URL"].removesuffix("/v1") + path, body] for path, body in term_calls],
        "readiness_url": f"http://127.0.0.1:{sidecar['readinessProbe']['httpGet']['port']}"
        f"{sidecar['readinessProbe']['httpGet']['path']}",
    }
    (tmp_path / "spec.json").write_text(json.dumps(run_spec))
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "tests.kube.netns_pod", str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    result["container"] = sidecar
    return result


def test_an_app_on_8080_and_9090_keeps_working_next_to_the_sidecar(helm: str, tmp_path: Path) -> None:
    """Apps listen on 8080/9090 without declaring it; the sidecar (started first) must leave them free."""
    result = run_pod(helm, tmp_path, app_ports=(8080, 9090), calls=(("/v1/chat/completions", CHAT),))
    assert result["startup_probe"] == 200, result["sidecar_log"]
    assert result["app_ports"] == {"8080": "listening", "9090": "listening"}
    assert result["calls"][0]["status"] == 200, result["calls"]
    ports = {p["name"]: p["containerPort"] for p in result["container"]["ports"]}
    assert ports == {"llm-proxy": 15180, "llm-admin": 15190}


def test_ports_move_per_pod_by_annotation(helm: str, tmp_path: Path) -> None:
    """An app that needs 15180/15190 moves the sidecar with two annotations; probes and base URLs follow."""
    result = run_pod(
        helm,
        tmp_path,
        annotations={"llm-sidecar.io/proxy-port": "15280", "llm-sidecar.io/admin-port": "15290"},
        app_ports=(15180, 15190),
        calls=(("/v1/chat/completions", CHAT),),
    )
    assert result["startup_probe"] == 200, result["sidecar_log"]
    assert result["app_ports"] == {"15180": "listening", "15190": "listening"}
    assert result["calls"][0]["status"] == 200, result["calls"]
    assert result["container"]["startupProbe"]["httpGet"]["port"] == 15290


def test_chart_values_move_the_ports(helm: str, tmp_path: Path) -> None:
    result = run_pod(
        helm,
        tmp_path,
        helm_args=("--set", "sidecar.proxyPort=16080", "--set", "sidecar.adminPort=16090"),
        app_ports=(15180, 15190),
        calls=(("/v1/chat/completions", CHAT),),
    )
    assert result["startup_probe"] == 200, result["sidecar_log"]
    assert result["calls"][0]["status"] == 200, result["calls"]
    assert {p["containerPort"] for p in result["container"]["ports"]} == {16080, 16090}


def test_a_missing_key_still_lets_the_pod_start(helm: str, tmp_path: Path) -> None:
    """The chart's NOTES example: a Secret with OPENAI_API_KEY only. The native sidecar must get
    ready (else the kubelet never starts the app), and only Anthropic calls fail, saying why."""
    messages = {"model": "claude-sonnet", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    result = run_pod(
        helm,
        tmp_path,
        keys={"OPENAI_API_KEY": KEYS["OPENAI_API_KEY"]},
        calls=(("/v1/chat/completions", CHAT), ("/anthropic/v1/messages", messages)),
    )
    assert result["startup_probe"] == 200, result["sidecar_log"]
    openai_call, anthropic_call = result["calls"]
    assert openai_call["status"] == 200, openai_call
    assert anthropic_call["status"] == 500
    error = json.loads(anthropic_call["body"])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "ANTHROPIC_API_KEY is not set" in error["error"]["message"]
    assert KEYS["OPENAI_API_KEY"] not in result["sidecar_log"] + anthropic_call["body"]


@pytest.mark.parametrize("kube_version, mode", [("1.27", "container"), ("1.30", "native")])
def test_shutdown_keeps_serving_a_plain_container_pods_app_until_it_is_idle(
    helm: str, tmp_path: Path, kube_version: str, mode: str
) -> None:
    """Before native sidecars the kubelet sends SIGTERM to the app and the sidecar at once: the app's own
    shutdown calls must still be served (readiness turns 503 at once), and the sidecar then ends by itself
    once the app is idle, long before its 30 s drain timeout. A native sidecar is stopped after the app."""
    result = run_pod(
        helm,
        tmp_path,
        kube_version=kube_version,
        calls=(("/v1/chat/completions", CHAT),),
        term_calls=(("/v1/chat/completions", CHAT),) * 3,
    )
    assert result["startup_probe"] == 200, result["sidecar_log"]
    if mode == "container":
        assert result["readiness_after_term"] == 503
        assert {"name": "LLM_SIDECAR_MODE", "value": "container"} in result["container"]["env"]
        assert result["term_calls"] == [200, 200, 200], result["sidecar_log"]
        assert result["exited_after_term_s"] < 20
    else:
        assert result["container"]["restartPolicy"] == "Always"
        assert result["readiness_after_term"] in (503, "closed")
        assert all(status != 200 for status in result["term_calls"])  # nobody is left to call
    assert result["sidecar_exit"] == 0, result["sidecar_log"]
