"""The cluster side of the end-to-end run, ready for tests that need injected pods.

:func:`stage` (the ``kube_e2e`` fixture in ``tests/kube/conftest.py``) builds the
images once, renders the chart with the kind example's values, and starts what a
cluster would run before any app: the API server stand-in, Redis, the example
mock provider and the injector Deployment's pod (exact command, args, env,
mounted files). A test then asks :meth:`Stage.admit` for the pod of any
workload, runs the patched pod with :meth:`Stage.run` and looks inside with
``RunningPod.exec`` / ``logs`` / ``terminate`` / ``complete``. See
:mod:`tests.kube.cluster` for what stands in for the kubelet and the network.
Pods that bind the same ports (every injected sidecar does) run one at a time.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonpatch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.kube.cluster import Cluster, RunningPod, Timer, base_image, pod_of
from tests.kube.conftest import CHART, ROOT
from tests.kube.pods import containers, documents, make_ca, workloads

EXAMPLES = ROOT / "k8s" / "examples"
RELEASE, NAMESPACE, APP_NAMESPACE = "llm-sidecar", "llm-sidecar", "demo-app"
APP_IMAGE = "localhost/llm-sidecar-e2e-app:test"
# The app image: the project's base image plus the official SDKs (what an app using them would ship).
APP_DOCKERFILE = """\
FROM {base}
RUN python3 -m pip install --no-cache-dir openai anthropic
USER 10001:10001
"""
# A sample app Deployment: it waits for SIGTERM; the harness runs the calls in it (kubectl exec).
SAMPLE_APP = f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: sdk-app, namespace: {APP_NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: sdk-app}}}}
  template:
    metadata: {{labels: {{app: sdk-app}}}}
    spec:
      containers:
        - name: app
          image: {APP_IMAGE}
          command: [python3, -c]
          args: ["import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); signal.pause()"]
          securityContext: {{runAsNonRoot: true, runAsUser: 10001, readOnlyRootFilesystem: true,
                             allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
"""
# The app's calls: the SDKs find the sidecar through OPENAI_BASE_URL / ANTHROPIC_BASE_URL only.
CALLS = """
import json, os
import anthropic, openai

seen = {"env": {k: os.environ.get(k) for k in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")}}
oa = openai.OpenAI(api_key="unused", max_retries=0)
ask = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "e2e: hello"}])
first = oa.chat.completions.with_raw_response.create(**ask)
stream = oa.chat.completions.create(model="gpt-4o-mini", stream=True,
                                    messages=[{"role": "user", "content": "e2e: stream"}])
streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
again = oa.chat.completions.with_raw_response.create(**ask)
seen["openai"] = {"plain": first.headers.get("x-llm-sidecar-cache"), "streamed": bool(streamed),
                  "repeated": again.headers.get("x-llm-sidecar-cache"),
                  "same": first.parse().choices[0].message.content == again.parse().choices[0].message.content}

an = anthropic.Anthropic(api_key="unused", max_retries=0)
ask = dict(model="claude-sonnet", max_tokens=64, messages=[{"role": "user", "content": "e2e: hello"}])
first = an.messages.with_raw_response.create(**ask)
with an.messages.stream(model="claude-sonnet", max_tokens=64,
                        messages=[{"role": "user", "content": "e2e: stream"}]) as s:
    streamed = "".join(s.text_stream)
again = an.messages.with_raw_response.create(**ask)
seen["anthropic"] = {"plain": first.headers.get("x-llm-sidecar-cache"), "streamed": bool(streamed),
                     "repeated": again.headers.get("x-llm-sidecar-cache"),
                     "same": first.parse().content[0].text == again.parse().content[0].text}
print(json.dumps(seen))
"""


def review(pod: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": APP_NAMESPACE,
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
            },
        }
    ).encode()


def _review(
    cluster: Cluster, docs: list[dict[str, Any]], obj: dict[str, Any], spec: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod created for ``obj`` (by its controller, or ``obj`` itself for a Pod) and the webhook's
    AdmissionReview response, called as the API server calls it: the Service name and port the
    webhook configuration names, trusting its caBundle."""
    if obj["kind"] == "Pod":
        meta = {k: v for k, v in obj["metadata"].items() if k != "namespace"}
    else:
        meta = {"generateName": obj["metadata"]["name"] + "-", **obj["spec"]["template"].get("metadata", {})}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": json.loads(json.dumps(spec))}
    hook = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["webhooks"][0]
    svc = hook["clientConfig"]["service"]
    ca = cluster.dir / "webhook-ca.crt"
    ca.write_bytes(base64.b64decode(hook["clientConfig"]["caBundle"]))
    url = f"https://{svc['name']}.{svc['namespace']}.svc:{svc['port']}{svc['path']}"
    status, body = cluster.net.http(url, method="POST", body=review(pod), cafile=str(ca))
    assert status == 200, body[:500]
    return pod, json.loads(body)["response"]


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    template = obj.get("spec", {}).get("template")
    return (template or obj).get("metadata", {}).get("labels") or {}


def total(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


class Stage:
    """The running cluster side; see the module doc."""

    def __init__(
        self, cluster: Cluster, docs: list[dict[str, Any]], examples: dict[str, list[dict[str, Any]]], timer: Timer
    ) -> None:
        self.cluster, self.docs, self.examples, self.timer = cluster, docs, examples, timer

    def review(self, obj: dict[str, Any], spec: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict]:
        """The pod created for ``obj`` and the webhook's AdmissionReview response for it."""
        return _review(self.cluster, self.docs, obj, spec if spec is not None else next(s for _, s in workloads([obj])))

    def admit(self, obj: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """The pod created for ``obj`` with the webhook's JSON Patch applied (it must have sent one)."""
        pod, resp = self.review(obj, spec)
        assert resp["allowed"] and resp.get("patchType") == "JSONPatch", resp
        return jsonpatch.apply_patch(pod, json.loads(base64.b64decode(resp["patch"])))

    def namespace_objects(self, namespace: str = APP_NAMESPACE) -> list[dict[str, Any]]:
        """The sidecar's ConfigMap and keys Secret in ``namespace``, as the injector copied them there."""
        return [
            self.cluster.api_get(f"/api/v1/namespaces/{namespace}/configmaps/llm-sidecar-config"),
            self.cluster.api_get(f"/api/v1/namespaces/{namespace}/secrets/llm-sidecar-keys"),
        ]

    def run(self, name: str, obj: dict[str, Any], pod: dict[str, Any], namespace: str = APP_NAMESPACE) -> RunningPod:
        """Run a patched pod (from :meth:`admit`) in ``namespace`` with that namespace's copies mounted."""
        meta = {**pod["metadata"], "name": name, "namespace": namespace}
        return self.cluster.run_pod(name, {**obj, "metadata": meta}, pod["spec"], self.namespace_objects(namespace))

    def metrics_text(self, port: int) -> str:
        status, body = self.cluster.net.http(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        return body.decode()

    def metrics(self, port: int) -> dict[tuple[str, tuple], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(self.metrics_text(port))
            for s in f.samples
        }

    def mock_stats(self) -> dict[str, Any]:
        status, body = self.cluster.net.http("http://mock-provider.llm-sidecar.svc:8000/_mock/stats")
        return json.loads(body)


@contextmanager
def stage(helm: str, timer: Timer | None = None) -> Iterator[Stage]:
    """Build, render and start the cluster side (see the module doc); everything is removed afterwards.

    ``E2E_STORE=/some/dir`` keeps the image store there between runs: an image is rebuilt only when
    what it is built from changed.
    """
    timer = timer or Timer()
    rendered = subprocess.run(
        [
            helm,
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            "1.30.0",
            "-f",
            str(EXAMPLES / "values-kind.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = documents(rendered)
    timer.phase("helm template")
    examples = {f.stem: documents(f.read_text()) for f in EXAMPLES.glob("*.yaml") if f.stem != "values-kind"}
    services = [d for d in docs + examples["mock-provider"] if d["kind"] == "Service"]
    store = Path(os.environ["E2E_STORE"]) if os.environ.get("E2E_STORE") else None
    cluster = Cluster(
        hosts=[f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc" for s in services], store=store
    )
    try:
        injector_obj, injector_spec = pod_of(docs, "Deployment", f"{RELEASE}-injector")
        # The injector's image (the Dockerfile's injector target) and the one it injects (the default target).
        cluster.build_project_image(injector_spec["containers"][0]["image"], target="injector")
        settings = next(d for d in docs if "injector.yaml" in (d.get("data") or {}))["data"]["injector.yaml"]
        cluster.build_project_image(yaml.safe_load(settings)["sidecar"]["image"])
        timer.phase("build images (buildah)")
        (cluster.dir / "app").mkdir()
        base = base_image()
        base_id = cluster.podman("image", "inspect", "--format", "{{.Id}}", base).stdout.strip()
        # The base image's id in the context: a kept store rebuilds the app image when the base changed.
        (cluster.dir / "app" / "Dockerfile").write_text(f"# base {base_id}\n" + APP_DOCKERFILE.format(base=base))
        cluster.build(APP_IMAGE, cluster.dir / "app")
        timer.phase("build app image (SDKs)")

        # API server stand-in, kube-proxy's Service ports, Redis, the mock provider, the injector.
        (cluster.dir / "api-tls").mkdir()
        tls = make_ca(cluster.dir / "api-tls", [])
        ns_objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            *examples["namespace"],
        ]
        cluster.start_apiserver(docs + ns_objects, tls)
        for s in services:
            _, spec = next(
                (o, sp)
                for o, sp in workloads(docs + examples["mock-provider"])
                if o["metadata"]["namespace"] == s["metadata"]["namespace"]
                and s["spec"]["selector"].items() <= pod_labels(o).items()
            )
            for p in s["spec"]["ports"]:
                port = next(
                    q["containerPort"]
                    for c in containers(spec)
                    for q in c.get("ports") or []
                    if p["targetPort"] in (q.get("name"), q["containerPort"])
                )
                cluster.service_port(p["port"], port)
        _, redis_spec = pod_of(docs, "StatefulSet", f"{RELEASE}-redis")
        # No redis image here: this machine's redis-server runs the StatefulSet's args.
        cluster.start_process("redis", ["redis-server", *redis_spec["containers"][0]["args"]])
        cluster.run_pod("mock", *pod_of(examples["mock-provider"], "Deployment", "mock-provider"), docs=[])
        cluster.net.http("http://mock-provider.llm-sidecar.svc:8000/_mock/stats")
        injector = cluster.run_pod("injector", injector_obj, injector_spec, docs)
        injector.await_probe(injector_spec["containers"][0], "readinessProbe")
        timer.phase("start injector, mock, redis")
        yield Stage(cluster, docs, examples, timer)
    finally:
        cluster.close()
        timer.phase("clean up")
