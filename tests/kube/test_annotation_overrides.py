"""Per-pod overrides are checked before they reach a patch: the installed ``llm-sidecar webhook``
(TLS, settings rendered by the chart) answers AdmissionReviews for pods with bad annotations.

A resource annotation that is not a quantity, or a limit below its request, would give a
patch the API server rejects, so the app's Deployment could create no pod at all: no
injection, and an admission warning naming the annotation. The image annotation is honoured
only where the chart allows it (the sidecar receives the provider keys).
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from tests.kube.test_chart import docs, render
from tests.kube.test_webhook import review_for
from tests.servers import start_webhook

PREFIX = "llm-sidecar.io/"


@pytest.fixture
def webhook(helm: str, test_ca: dict[str, Path], tmp_path: Path) -> Iterator[Callable[..., dict[str, Any]]]:
    """``webhook(annotations, chart=(helm args))``: the webhook's answer for a pod with those annotations."""
    started: dict[tuple[str, ...], str] = {}
    processes: list[subprocess.Popen[bytes]] = []
    ctx = ssl.create_default_context(cafile=str(test_ca["ca"]))

    def url_for(chart: tuple[str, ...]) -> str:
        if chart in started:
            return started[chart]
        rendered = docs(render(helm, *chart).stdout)
        settings = tmp_path / f"injector-{len(started)}.yaml"
        settings.write_text(
            next(
                d["data"]["injector.yaml"]
                for d in rendered
                if d["kind"] == "ConfigMap" and "injector.yaml" in d["data"]
            )
        )
        process, url = start_webhook(
            test_ca["cert"],
            test_ca["key"],
            test_ca["ca"],
            tmp_path / f"injector-{len(started)}.log",
            "--settings",
            str(settings),
        )
        processes.append(process)
        started[chart] = url
        return url

    def ask(annotations: dict[str, str], chart: tuple[str, ...] = (), ports: tuple[int, ...] = ()) -> dict[str, Any]:
        app: dict[str, Any] = {"name": "app", "image": "app:1"}
        if ports:
            app["ports"] = [{"containerPort": port} for port in ports]
        pod = {
            "metadata": {"generateName": "app-", "annotations": {PREFIX + "inject": "enabled", **annotations}},
            "spec": {"containers": [app]},
        }
        body = json.dumps(review_for(pod, "demo-app")).encode()
        request = urllib.request.Request(f"{url_for(chart)}/mutate", body, {"content-type": "application/json"})
        response = json.load(urllib.request.urlopen(request, context=ctx, timeout=10))["response"]
        assert response["allowed"] is True  # never block the pod
        if "patch" in response:
            response["pod"] = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
        return response

    yield ask
    for process in processes:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize(
    ("annotations", "named"),
    [
        ({"memory-limit": "lots"}, "memory-limit"),
        ({"cpu-request": "1 core"}, "cpu-request"),
        ({"memory-request": "64mb"}, "memory-request"),
        ({"memory-limit": "32Mi"}, "memory-limit"),  # below the chart's request, 64Mi
        ({"memory-request": "512Mi"}, "memory-request"),  # above the chart's limit, 256Mi
        ({"cpu-request": "2", "cpu-limit": "500m"}, "cpu-request and llm-sidecar.io/cpu-limit"),
    ],
)
def test_a_bad_resource_override_means_no_injection_and_a_warning(
    webhook, annotations: dict[str, str], named: str
) -> None:
    answer = webhook({PREFIX + k: v for k, v in annotations.items()})
    assert "patch" not in answer
    (warning,) = answer["warnings"]
    assert warning.startswith("llm-sidecar not injected: annotation " + PREFIX + named), warning


def test_good_resource_overrides_are_applied(webhook) -> None:
    answer = webhook({PREFIX + "memory-request": "128Mi", PREFIX + "memory-limit": "0.5Gi", PREFIX + "cpu-limit": "1"})
    sidecar = answer["pod"]["spec"]["initContainers"][0]
    assert sidecar["resources"] == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"memory": "0.5Gi", "cpu": "1"},
    }


def test_the_image_annotation_needs_the_chart_to_allow_it(webhook) -> None:
    canary = {PREFIX + "image": "registry.example/llm-sidecar:canary"}
    refused = webhook(canary)
    assert "patch" not in refused
    assert "annotation llm-sidecar.io/image: not allowed" in refused["warnings"][0]
    allowed = webhook(canary, chart=("--set", "sidecar.allowImageOverride=true"))
    assert allowed["pod"]["spec"]["initContainers"][0]["image"] == "registry.example/llm-sidecar:canary"


def test_a_declared_port_clash_means_no_injection_and_a_warning_that_says_how_to_move(webhook) -> None:
    clash = webhook({}, ports=(8080, 15190))
    assert "patch" not in clash
    (warning,) = clash["warnings"]
    assert "port(s) [15190]" in warning and "llm-sidecar.io/admin-port" in warning, warning
    moved = webhook({PREFIX + "admin-port": "15290"}, ports=(8080, 15190))
    sidecar = moved["pod"]["spec"]["initContainers"][0]
    assert sidecar["args"][-4:] == ["--port", "15180", "--admin-port", "15290"]
    assert moved["pod"]["metadata"]["annotations"]["prometheus.io/port"] == "15290"
    bad = webhook({PREFIX + "proxy-port": "15190"})  # the same port twice
    assert (
        "patch" not in bad
        and "llm-sidecar.io/proxy-port and llm-sidecar.io/admin-port: the two ports must differ" in bad["warnings"][0]
    )
