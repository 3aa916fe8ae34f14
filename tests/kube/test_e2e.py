"""End to end, as on a cluster: the images built, the chart rendered, the injector run, pods injected and run.

``make e2e`` runs this module (it is skipped in the default suite: 2-3
minutes here, half of it building the images). The steps,
in the order a cluster runs them (the set-up is :mod:`tests.kube.e2e`):

1. build the sidecar and injector images from the Dockerfile (buildah), and an
   app image: the base image with the official openai and anthropic SDKs;
2. ``helm template`` the chart with the kind example's values
   (``k8s/examples/values-kind.yaml``), as ``k8s/kind/e2e.sh`` installs it;
3. start the injector Deployment's pod with its exact command, args, env and
   mounted files (its TLS Secret as helm generated it), against the API server
   stand-in, plus the example mock provider and Redis;
4. POST the injector an AdmissionReview for a sample app Deployment's pod and
   for the example Job's pod, at the Service name and port the webhook
   configuration names, trusting its caBundle; apply the JSON Patch (jsonpatch);
5. run the patched pods (see :mod:`tests.kube.cluster` for what stands in for
   the kubelet): the app, with only the env the patch gave it, calls through
   the official SDKs (plain, streamed, repeated); the sidecar's /metrics must
   show the calls and the cache hits; the Job's pod must complete.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from tests.kube.cluster import pod_of
from tests.kube.conftest import ROOT
from tests.kube.e2e import CALLS, SAMPLE_APP, Stage, total
from tests.kube.pods import documents

pytestmark = pytest.mark.e2e


def test_injected_app_pod_calls_through_the_sidecar(kube_e2e: Stage) -> None:
    app_obj = documents(SAMPLE_APP)[0]
    app_pod = kube_e2e.admit(app_obj)
    assert app_pod["metadata"]["annotations"]["llm-sidecar.io/status"] == "injected"
    sidecar = app_pod["spec"]["initContainers"][0]
    assert sidecar["name"] == "llm-sidecar" and sidecar["restartPolicy"] == "Always"
    kube_e2e.timer.phase("admission")

    app = kube_e2e.run("sdk-app", app_obj, app_pod)
    res = app.exec("app", ["python3", "-c", CALLS])
    assert res.returncode == 0, res.stdout + res.stderr + app.logs("llm-sidecar")
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"[e2e] app saw: {seen}")
    assert seen["env"]["OPENAI_BASE_URL"].startswith("http://127.0.0.1:")
    for dialect in ("openai", "anthropic"):
        assert seen[dialect] == {"plain": "miss", "streamed": True, "repeated": "hit", "same": True}, seen
    admin = next(p["containerPort"] for p in sidecar["ports"] if p["name"] == "llm-admin")
    samples = kube_e2e.metrics(admin)
    for group in ("gpt-4o-mini", "claude-sonnet"):
        assert total(samples, "llm_sidecar_calls_total", model_group=group) == 3, samples
        assert total(samples, "llm_sidecar_cache_calls_total", model_group=group, cache_status="hit") == 1
    # The kind recipe's own final check, on these metrics.
    check = re.findall(r"grep -Eq '([^']+)' <<<\"\$metrics\"", (ROOT / "k8s/kind/e2e.sh").read_text())[-1]
    assert re.search(check, kube_e2e.metrics_text(admin), re.M), f"k8s/kind/e2e.sh would fail: {check}"
    stats = kube_e2e.mock_stats()
    print(f"[e2e] mock provider saw: {stats}")
    assert stats["total_calls"] == 4  # the repeated calls never left the pod
    assert app.terminate() == {"app": 0, "llm-sidecar": 0}
    kube_e2e.timer.phase("app pod: SDK calls, metrics")


def test_injected_job_pod_completes(kube_e2e: Stage) -> None:
    job_obj, job_spec = pod_of(kube_e2e.examples["app"], "Job", "batch-summarize")
    job = kube_e2e.run("batch-summarize", job_obj, kube_e2e.admit(job_obj, job_spec))
    codes = job.complete()
    assert codes == {"summarize": 0, "llm-sidecar": 0}, (codes, job.logs("summarize"), job.logs("llm-sidecar"))
    assert job.logs("summarize").strip().endswith("200")
    kube_e2e.timer.phase("job pod: completes")


# An app that listens on 8080 and 9090 without declaring them, as many do.
PORTS_APP = SAMPLE_APP.replace("sdk-app", "ports-app").replace(
    '["import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); signal.pause()"]',
    json.dumps(
        [
            "import http.server as h, signal, sys, threading\n"
            "for port in (8080, 9090):\n"
            "    server = h.ThreadingHTTPServer(('0.0.0.0', port), h.SimpleHTTPRequestHandler)\n"
            "    threading.Thread(target=server.serve_forever, daemon=True).start()\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
            "signal.pause()\n"
        ]
    ),
)
ASK_APP_PORTS = """
import json, time, urllib.request
import openai
deadline, seen = time.monotonic() + 30, {}
for port in (8080, 9090):
    while True:
        try:
            seen[port] = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                seen[port] = str(exc)
                break
            time.sleep(0.2)
oa = openai.OpenAI(api_key="unused", max_retries=0)
reply = oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "ports"}])
print(json.dumps({"app": seen, "proxied": bool(reply.choices[0].message.content)}))
"""


def test_an_app_on_8080_and_9090_runs_beside_its_sidecar(kube_e2e: Stage) -> None:
    """The native sidecar starts (and binds) first; an app on the ports it used to take must still start."""
    app_obj = documents(PORTS_APP)[0]
    pod = kube_e2e.admit(app_obj)
    sidecar = pod["spec"]["initContainers"][0]
    assert {p["containerPort"] for p in sidecar["ports"]}.isdisjoint({8080, 9090})
    app = kube_e2e.run("ports-app", app_obj, pod)
    res = app.exec("app", ["python3", "-c", ASK_APP_PORTS])
    assert res.returncode == 0, res.stdout + res.stderr + app.logs("app") + app.logs("llm-sidecar")
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert seen == {"app": {"8080": 200, "9090": 200}, "proxied": True}, (seen, app.logs("app"))
    assert app.terminate() == {"app": 0, "llm-sidecar": 0}
    kube_e2e.timer.phase("app pod on 8080/9090")


ASK_BOTH = """
import json
import anthropic, openai
seen = {}
oa = openai.OpenAI(api_key="unused", max_retries=0)
seen["openai"] = bool(oa.chat.completions.create(model="gpt-4o-mini",
                      messages=[{"role": "user", "content": "keys"}]).choices[0].message.content)
try:
    anthropic.Anthropic(api_key="unused").messages.create(
        model="claude-sonnet", max_tokens=16, messages=[{"role": "user", "content": "keys"}])
    seen["anthropic"] = "answered"
except anthropic.InternalServerError as exc:
    seen["anthropic"] = exc.body["error"]["message"]
print(json.dumps(seen))
"""


def test_a_pod_whose_secret_lacks_one_key_starts_and_serves_the_other_group(kube_e2e: Stage) -> None:
    """The chart's NOTES case: the config names ANTHROPIC_API_KEY, the Secret has no such key.
    The native sidecar must pass its startup probe (else the kubelet never starts the app)."""
    app_obj = documents(SAMPLE_APP.replace("sdk-app", "keys-app"))[0]
    pod = kube_e2e.admit(app_obj)
    configmap, secret = kube_e2e.namespace_objects()
    config = yaml.safe_load(configmap["data"]["sidecar.yaml"])
    config["model_groups"]["claude-sonnet"]["endpoints"][0]["api_key_env"] = "ANTHROPIC_API_KEY"
    assert "ANTHROPIC_API_KEY" not in secret.get("data", {})
    configmap = {**configmap, "data": {**configmap["data"], "sidecar.yaml": yaml.safe_dump(config)}}
    meta = {**pod["metadata"], "name": "keys-app", "namespace": "demo-app"}
    app = kube_e2e.cluster.run_pod("keys-app", {**app_obj, "metadata": meta}, pod["spec"], [configmap, secret])
    res = app.exec("app", ["python3", "-c", ASK_BOTH])
    assert res.returncode == 0, res.stdout + res.stderr + app.logs("llm-sidecar")
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert seen["openai"] is True
    assert "claude-sonnet" in seen["anthropic"] and "ANTHROPIC_API_KEY is not set" in seen["anthropic"], seen
    admin = next(p["containerPort"] for p in pod["spec"]["initContainers"][0]["ports"] if p["name"] == "llm-admin")
    assert total(kube_e2e.metrics(admin), "llm_sidecar_endpoint_key_missing", model_group="claude-sonnet") == 1
    assert "provider key missing" in app.logs("llm-sidecar")
    assert app.terminate() == {"app": 0, "llm-sidecar": 0}
    kube_e2e.timer.phase("pod with a key missing")


def test_the_example_app_gets_cache_hits_and_the_opted_out_pod_no_sidecar(kube_e2e: Stage) -> None:
    """The kind recipe's app (k8s/examples/app.yaml): its own loop logs a hit; debug-shell stays as it is.

    debug-shell runs the sidecar image with the example's command, and a shell in it answers (what
    ``kubectl exec -it debug-shell -- sh`` gives): the image keeps /bin/sh, not coreutils.
    """
    chat_obj = next(d for d in kube_e2e.examples["app"] if d["metadata"]["name"] == "chat-app")
    chat = kube_e2e.run("chat-app", chat_obj, kube_e2e.admit(chat_obj))
    # It calls every 10 s and prints the status and the cache header of each answer.
    deadline = time.monotonic() + 120
    while "200 hit" not in (logs := chat.logs("app")):
        assert time.monotonic() < deadline, logs + chat.logs("llm-sidecar")
        time.sleep(1)
    assert logs.split()[:2] == ["200", "miss"], logs
    # The app's loop has no SIGTERM handler (it would be killed after the grace period): only the sidecar's code.
    assert chat.terminate(app_grace=1)["llm-sidecar"] == 0
    shell = next(d for d in kube_e2e.examples["app"] if d["metadata"]["name"] == "debug-shell")
    pod, resp = kube_e2e.review(shell)
    assert resp["allowed"] and "patch" not in resp, resp
    running = kube_e2e.run("debug-shell", shell, pod)
    res = running.exec("shell", ["sh", "-c", "echo $((6 * 7))"])
    assert (res.returncode, res.stdout) == (0, "42\n"), res
    assert running.terminate() == {"shell": 0}
    kube_e2e.timer.phase("example app, opted-out pod")


def test_helm_test_pod_passes(kube_e2e: Stage) -> None:
    """`helm test`: the chart's test pod reaches the injector through its Service, trusting the chart's CA."""
    obj = next(
        d
        for d in kube_e2e.docs
        if d["kind"] == "Pod" and d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    )
    test = kube_e2e.cluster.run_pod("helm-test", obj, obj["spec"], kube_e2e.docs)
    codes = test.complete()
    assert set(codes.values()) == {0}, (codes, test.logs(obj["spec"]["containers"][0]["name"]))
    kube_e2e.timer.phase("helm test pod")
