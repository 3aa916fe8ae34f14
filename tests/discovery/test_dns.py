"""Endpoints from a DNS name (a headless Service), looked up again on the records' TTL, against
a real DNS server (dnsmasq) whose records change during the test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.discovery.conftest import Dnsmasq
from tests.router.helpers import QUICK
from tests.servers import MockProvider, ServerLoop, Sidecar
from tests.test_reload import SidecarProcess
from tests.waiting import wait_until

NAME = "vllm-headless.models.svc.cluster.local"


def discovering(dnsmasq: Dnsmasq, port: int) -> dict[str, Any]:
    """The model group ``llama``: the pods behind NAME, asked of the test's DNS server."""
    return {
        "discover": {
            "dns": NAME,
            "nameservers": [dnsmasq.nameserver],
            "port": port,
            "min_ttl": 0.2,
            "max_ttl": 600,  # far beyond any wait here: a change seen in time was seen on the TTL (1 s)
            "endpoint": {"model": "llama-3", "api_key": "sk-vllm-key-0123456789"},
        }
    }


def names(sidecar: Sidecar | SidecarProcess) -> set[str]:
    status = httpx.get(sidecar.admin_url + "/status").json()
    return {e["name"] for e in status["groups"]["llama"]["endpoints"]}


def test_dns_records_are_followed_on_their_ttl(
    server_loop: ServerLoop, dnsmasq: Dnsmasq, replicas: Callable[[int], list[MockProvider]]
) -> None:
    one, two, three = replicas(3)
    dnsmasq.set(NAME, [one.host, two.host])
    config: dict[str, Any] = {
        "server": {"port": 0, "admin_port": 0, "admin_host": "127.0.0.1", "drain_timeout": 2},
        "model_groups": {"llama": discovering(dnsmasq, one.port)},
        "router": QUICK,
        "telemetry": {"access_log": False},
    }
    sidecar = Sidecar(server_loop, config)
    try:
        port = one.port
        wait_until(lambda: names(sidecar) == {f"vllm-headless@{one.host}:{port}", f"vllm-headless@{two.host}:{port}"})
        client = sidecar.openai()
        for i in range(6):
            client.chat.completions.create(model="llama", messages=[{"role": "user", "content": f"call {i}"}])
        assert one.calls("llama-3") + two.calls("llama-3") == 6

        # The records change: one pod goes, another comes; the TTL is 1 s.
        dnsmasq.set(NAME, [two.host, three.host])
        wait_until(lambda: names(sidecar) == {f"vllm-headless@{two.host}:{port}", f"vllm-headless@{three.host}:{port}"})
        before = one.calls()
        for i in range(6):
            client.chat.completions.create(model="llama", messages=[{"role": "user", "content": f"after {i}"}])
        assert one.calls() == before and two.calls("llama-3") + three.calls("llama-3") > 0

        # No records (a headless Service without ready pods): calls get a 503 in their dialect.
        dnsmasq.set(NAME, [])
        wait_until(lambda: not names(sidecar))
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "nobody home"}])
        assert caught.value.status_code == 503 and "llama" in caught.value.message
    finally:
        sidecar.stop()


def test_discovered_endpoints_outlive_a_config_reload(
    tmp_path: Path, dnsmasq: Dnsmasq, replicas: Callable[[int], list[MockProvider]]
) -> None:
    """``llm-sidecar serve`` on a ConfigMap-like file: a reload that changes the routing policy
    (so the new router starts with fresh endpoint state) keeps serving the discovered pods, and
    the watch goes on feeding the new router."""
    one, two = replicas(2)
    dnsmasq.set(NAME, [one.host])
    group = discovering(dnsmasq, one.port)
    config = {
        "server": {"port": 0, "admin_port": 0, "admin_host": "127.0.0.1", "drain_timeout": 2, "reload_interval": 0.1},
        "model_groups": {"llama": group},
        "router": {"queue_timeout": 2.0},
        "telemetry": {"access_log": False},
    }
    (tmp_path / "config").mkdir()
    sidecar = SidecarProcess(tmp_path / "config", config)
    try:
        wait_until(lambda: names(sidecar) == {f"vllm-headless@{one.host}:{one.port}"})
        assert sidecar.ask("llama")
        sidecar.rewrite(lambda c: c["router"].update(queue_timeout=3.0))
        sidecar.wait_reloads("ok", 1)
        assert names(sidecar) == {f"vllm-headless@{one.host}:{one.port}"}  # no gap after the swap
        assert sidecar.ask("llama")
        dnsmasq.set(NAME, [one.host, two.host])
        wait_until(lambda: len(names(sidecar)) == 2, what="the watch feeds the new router")
    finally:
        sidecar.stop()
