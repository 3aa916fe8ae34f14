"""A stand-in API server serving EndpointSlices over HTTPS, a real DNS server, and replicas of the mock provider."""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import pytest
from aiohttp import web

from tests.kube.apiserver import EndpointSlices, Store, build_app
from tests.kube.pods import make_ca
from tests.servers import ServerLoop, free_port
from tests.waiting import wait_until


class ApiServer:
    """``tests.kube.apiserver`` on a free loopback port, and a service account that trusts it."""

    def __init__(self, loop: ServerLoop, tmp: Path) -> None:
        self.slices = EndpointSlices()
        tls = make_ca(tmp, [])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls["cert"], tls["key"])
        self.port = free_port()
        self.account = tmp / "serviceaccount"
        self.account.mkdir()
        (self.account / "token").write_text("test-token")
        (self.account / "namespace").write_text("apps")
        (self.account / "ca.crt").write_bytes(Path(tls["ca"]).read_bytes())
        self._loop = loop

        async def start() -> web.AppRunner:
            runner = web.AppRunner(build_app(Store([]), self.slices), access_log=None, shutdown_timeout=0.2)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=context).start()
            return runner

        self._runner = loop.run(start())

    def env(self) -> dict[str, str]:
        """What the kubelet gives a pod (the service account at its own path here)."""
        return {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.port),
            "LLM_SIDECAR_SERVICEACCOUNT_DIR": str(self.account),
        }

    def run(self, change: Callable[[], Any]) -> None:
        """Change the slices on the server's own loop (where its watches read them)."""

        async def apply() -> None:
            change()

        self._loop.run(apply())

    def stop(self) -> None:
        self.run(self.slices.end_watches)  # a watch handler would otherwise wait out its timeout
        self._loop.run(self._runner.cleanup())


@pytest.fixture
def api_server(server_loop: ServerLoop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    server = ApiServer(server_loop, tmp_path)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


def endpoint_slice(
    name: str,
    service: str,
    port: int,
    endpoints: list[dict[str, Any]],
    namespace: str = "models",
    port_name: str = "http",
) -> dict[str, Any]:
    """An EndpointSlice as the EndpointSlice controller writes it (discovery.k8s.io/v1)."""
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service, "uid": f"uid-{service}"}],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": port_name, "protocol": "TCP", "port": port}],
    }


def pod(
    address: str, zone: str, ready: bool | None = True, for_zones: list[str] | None = None, name: str | None = None
) -> dict[str, Any]:
    """One entry of an EndpointSlice's ``endpoints``: a pod's address, conditions and zone."""
    entry: dict[str, Any] = {
        "addresses": [address],
        "nodeName": f"node-{zone}",
        "zone": zone,
        "targetRef": {"kind": "Pod", "namespace": "models", "name": name or f"vllm-{address.rsplit('.', 1)[1]}"},
    }
    if ready is not None:
        entry["conditions"] = {"ready": ready, "serving": ready, "terminating": not ready}
    if for_zones is not None:
        entry["hints"] = {"forZones": [{"name": z} for z in for_zones]}
    return entry


class Dnsmasq:
    """A real DNS server (Debian's dnsmasq) on a free loopback port, answering from a hosts file
    that the test rewrites (``set``: the file, then SIGHUP, as dnsmasq re-reads it on that)."""

    def __init__(self, tmp: Path, ttl: int) -> None:
        binary = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")  # not on a user's PATH
        if binary is None:
            raise RuntimeError("dnsmasq is not installed: run `make test` (it installs it)")
        self.port = free_port()
        self.hosts = tmp / "hosts"
        self.hosts.write_text("")
        self.process = subprocess.Popen(
            [
                binary,
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                f"--port={self.port}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--local=/cluster.local/",  # answers for the domain like cluster DNS: NXDOMAIN, no-data
                "--no-hosts",
                f"--addn-hosts={self.hosts}",
                f"--local-ttl={ttl}",
                "--pid-file=",
                "--user=root",  # stays able to read the test's hosts file when it reloads
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.nameserver = f"127.0.0.1:{self.port}"
        wait_until(self._answers, what="dnsmasq answers")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {self.process.stderr.read().decode() if self.process.stderr else ''}")
        query = dns.message.make_query("probe.invalid", "A")
        try:
            dns.query.udp(query, "127.0.0.1", timeout=0.5, port=self.port)
        except (dns.exception.Timeout, OSError):
            return False
        return True

    def set(self, name: str, addresses: list[str]) -> None:
        self.hosts.write_text("".join(f"{a} {name}\n" for a in addresses))
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path, ttl=1)
    yield server
    server.stop()
