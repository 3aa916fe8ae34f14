"""The webhook over real HTTPS on loopback, driven with AdmissionReview objects as the API server sends them."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import jsonpatch
import pytest
import yaml
from aiohttp import web

from proxy.kube.webhook import StaticView, build_app
from tests.kube import cases
from tests.kube.conftest import GOLDEN, ROOT
from tests.servers import LLM_SIDECAR, answers, listening_port, start_webhook
from tests.waiting import wait_until


def review_for(pod: dict, namespace: str) -> dict:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


@pytest.fixture
async def webhook_url(test_ca: dict[str, Path]):
    view = StaticView(labels=cases.NAMESPACE_LABELS, objects=cases.OBJECTS, kube_version=cases.KUBE_VERSION)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(test_ca["cert"], test_ca["key"])
    runner = web.AppRunner(build_app(cases.SETTINGS, view))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound ephemeral port
    yield f"https://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
def client_ssl(test_ca: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(test_ca["ca"]))


@pytest.mark.parametrize("pod_file", sorted(GOLDEN.glob("pod-*.yaml")), ids=lambda p: p.stem)
async def test_admission_review_matches_golden(webhook_url: str, client_ssl: ssl.SSLContext, pod_file: Path) -> None:
    pod = yaml.safe_load(pod_file.read_text())
    namespace = pod["metadata"].pop("namespace")  # controllers' pods arrive without one
    review = review_for(pod, namespace)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{webhook_url}/mutate", json=review, ssl=client_ssl) as r:
            assert r.status == 200
            answer = await r.json()
    resp = answer["response"]
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert resp["uid"] == review["request"]["uid"]
    assert resp["allowed"] is True
    golden = json.loads(pod_file.with_name(pod_file.name[4:-5] + ".patch.json").read_text())
    if "patch" in golden:
        assert resp["patchType"] == "JSONPatch"
        patch = json.loads(base64.b64decode(resp["patch"]))
        assert patch == golden["patch"]
        mutated = jsonpatch.apply_patch(pod, patch)
        assert mutated["metadata"]["annotations"]["llm-sidecar.io/status"] == "injected"
    else:
        assert "patch" not in resp
        if "opted" not in pod_file.name:  # the user asked and did not get it: say why
            assert any("not injected" in w for w in resp.get("warnings", []))


async def test_non_pod_and_bad_bodies(webhook_url: str, client_ssl: ssl.SSLContext) -> None:
    review = review_for({"metadata": {}}, "demo-app")
    review["request"]["kind"]["kind"] = "Deployment"
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{webhook_url}/mutate", json=review, ssl=client_ssl) as r:
            assert (await r.json())["response"] == {"uid": review["request"]["uid"], "allowed": True}
        async with s.post(f"{webhook_url}/mutate", data=b"{not json", ssl=client_ssl) as r:
            assert r.status == 400
        async with s.get(f"{webhook_url}/readyz", ssl=client_ssl) as r:
            assert r.status == 200


@pytest.mark.parametrize(
    "body",
    [
        [],
        "x",
        {"kind": "AdmissionReview", "request": {"uid": "u", "kind": "Pod"}},
        {"kind": "AdmissionReview", "request": {"uid": "u", "kind": {"kind": "Pod"}, "object": {"metadata": "x"}}},
    ],
    ids=["array", "string", "kind-a-string", "metadata-a-string"],
)
async def test_a_body_of_the_wrong_shape_is_a_400_naming_what_is_wanted(
    webhook_url: str, client_ssl: ssl.SSLContext, body
) -> None:
    # Valid JSON that is not an AdmissionReview's shape was aiohttp's text 500, where bad JSON is a 400.
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{webhook_url}/mutate", json=body, ssl=client_ssl) as r:
            assert r.status == 400
            assert "AdmissionReview" in (await r.json())["error"]


async def test_own_bug_never_blocks_pod_creation(webhook_url: str, client_ssl: ssl.SSLContext, monkeypatch) -> None:
    def boom(*_a, **_k):
        raise RuntimeError("bug")

    monkeypatch.setattr("proxy.kube.webhook.plan", boom)
    review = review_for({"metadata": {}, "spec": {"containers": []}}, "demo-app")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{webhook_url}/mutate", json=review, ssl=client_ssl) as r:
            resp = (await r.json())["response"]
    assert resp["allowed"] is True and "patch" not in resp and resp["warnings"]


def test_webhook_command_serves_tls_and_reloads_certificate(test_ca: dict[str, Path], tmp_path: Path) -> None:
    """`llm-sidecar webhook --no-kube` as a process: TLS on loopback, then a certificate rotation."""
    import shutil

    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(test_ca["cert"], cert)
    shutil.copy(test_ca["key"], key)
    ctx = ssl.create_default_context(cafile=str(test_ca["ca"]))
    proc, url = start_webhook(
        cert, key, test_ca["ca"], tmp_path / "webhook.log", "--cert-reload-interval", "0.2", cwd=ROOT
    )
    try:
        pod = yaml.safe_load((GOLDEN / "pod-plain-container.yaml").read_text())
        req = urllib.request.Request(
            f"{url}/mutate", json.dumps(review_for(pod, "other")).encode(), {"content-type": "application/json"}
        )
        resp = json.load(urllib.request.urlopen(req, context=ctx, timeout=5))["response"]
        assert resp["patchType"] == "JSONPatch"
        # Rotation: a new self-signed cert replaces the files; new handshakes must present it.
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=rotated",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        new_ctx = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", context=new_ctx, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("rotated certificate was not picked up")
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("head", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"], ids=["idle", "half-handshake"])
def test_a_connection_flood_does_not_starve_the_webhook(test_ca: dict[str, Path], tmp_path: Path, head: bytes) -> None:
    """1,100 connections held on `llm-sidecar webhook` with 1,024 descriptors: the API server still gets in."""
    import resource
    import socket

    def nofile_1024() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    ctx = ssl.create_default_context(cafile=str(test_ca["ca"]))
    proc, url = start_webhook(
        test_ca["cert"], test_ca["key"], test_ca["ca"], tmp_path / "webhook.log", preexec_fn=nofile_1024
    )
    healthz, port = f"{url}/healthz", int(url.rsplit(":", 1)[1])
    flood: list[socket.socket] = []
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
        for _ in range(1100):
            sock = socket.socket()
            sock.settimeout(5)
            try:
                sock.connect(("127.0.0.1", port))
                if head:
                    sock.sendall(head)
            except OSError:
                sock.close()
                continue
            flood.append(sock)
        assert len(flood) >= 1000
        for _ in range(5):
            assert urllib.request.urlopen(healthz, context=ctx, timeout=10).status == 200
        pod = yaml.safe_load((GOLDEN / "pod-plain-container.yaml").read_text())
        request = urllib.request.Request(
            f"{url}/mutate",
            json.dumps(review_for(pod, "other")).encode(),
            {"content-type": "application/json"},
        )
        assert json.load(urllib.request.urlopen(request, context=ctx, timeout=10))["response"]["allowed"]
    finally:
        for sock in flood:
            sock.close()
        proc.terminate()
        proc.wait(15)


def test_a_review_whose_body_stops_coming_is_answered_408(test_ca: dict[str, Path], tmp_path: Path) -> None:
    """The header timeout ends with the head: a body that then stalled held its connection for good, and such
    connections are never evicted past the cap, so 256 of them from anywhere in the cluster locked the API
    server out."""
    import http.client
    import socket

    ctx = ssl.create_default_context(cafile=str(test_ca["ca"]))
    proc, url = start_webhook(test_ca["cert"], test_ca["key"], test_ca["ca"], tmp_path / "webhook.log")
    try:
        raw = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(
                b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            response = http.client.HTTPResponse(sock)
            response.begin()  # within the webhook's 15 s header timeout, not never
            assert response.status == 408
            assert "not received" in json.loads(response.read())["error"]
    finally:
        proc.terminate()
        proc.wait(15)


def test_webhook_on_a_busy_port_is_one_line_naming_the_flag(test_ca: dict[str, Path]) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        result = subprocess.run(
            [
                LLM_SIDECAR,
                "webhook",
                "--host",
                "127.0.0.1",
                "--port",
                str(busy),
                "--tls-cert-file",
                str(test_ca["cert"]),
                "--tls-key-file",
                str(test_ca["key"]),
                "--no-kube",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"llm-sidecar: cannot listen on 127.0.0.1:{busy}: address already in use; "
        "change webhook --port or stop what holds the port"
    )
    assert "Traceback" not in result.stderr


def test_webhook_logs_the_address_it_bound_even_for_port_0(test_ca: dict[str, Path], tmp_path: Path) -> None:
    """``--port 0`` takes any free port; the ``listening`` line says which, and the webhook answers there."""
    log = tmp_path / "webhook.log"
    flags = ["--tls-cert-file", str(test_ca["cert"]), "--tls-key-file", str(test_ca["key"]), "--no-kube"]
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [LLM_SIDECAR, "webhook", "--host", "127.0.0.1", "--port", "0", *flags],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        port = wait_until(lambda: listening_port(log) or proc.poll() is not None, 30, what="the listening line")
        assert proc.poll() is None, log.read_text()
        assert port > 0
        ctx = ssl.create_default_context(cafile=str(test_ca["ca"]))
        assert answers(f"https://127.0.0.1:{port}/healthz", ctx)
    finally:
        proc.terminate()
        proc.wait(10)
