"""Endpoints from a Service's EndpointSlices: list, watch, bookmarks, 410 Gone, drain and join.

No API server runs here: ``tests.kube.apiserver`` serves the EndpointSlice list and watch
calls with the API's JSON shapes and resourceVersion rules, over HTTPS with a test CA; the
sidecar reads the service account (token, CA, namespace) as in a pod.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.discovery.kube import ready_addresses
from proxy.discovery.sources import Address
from tests.discovery.conftest import ApiServer, endpoint_slice, pod
from tests.router.helpers import QUICK
from tests.servers import MockProvider, ServerLoop, Sidecar
from tests.test_reload import SidecarProcess
from tests.waiting import wait_until


def discovering_config(**discover: Any) -> dict[str, Any]:
    return {
        "server": {"port": 0, "admin_port": 0, "admin_host": "127.0.0.1", "drain_timeout": 5},
        "model_groups": {
            "llama": {
                "discover": {
                    "service": "vllm",
                    "namespace": "models",
                    "port": "http",
                    "endpoint": {"model": "llama-3", "api_key": "sk-vllm-key-0123456789"},
                    **discover,
                },
            }
        },
        "router": {**QUICK, "zone": "zone-a"},
        "telemetry": {"access_log": False},
    }


def vllm(port: int, *pods: dict[str, Any]) -> dict[str, Any]:
    """The vllm Service's one EndpointSlice, with these pods."""
    return endpoint_slice("vllm-abc12", "vllm", port, list(pods))


def discovered(sidecar: Sidecar | SidecarProcess) -> dict[str, dict[str, Any]]:
    status = httpx.get(sidecar.admin_url + "/status").json()
    return {e["name"]: e for e in status["groups"]["llama"]["endpoints"]}


def ask(sidecar: Sidecar, text: str = "hello", **extra: Any) -> str:
    answer = sidecar.openai().chat.completions.create(
        model="llama", messages=[{"role": "user", "content": text}], **extra
    )
    return answer.choices[0].message.content or ""


def test_slices_are_listed_watched_and_followed_across_410_gone(
    server_loop: ServerLoop, api_server: ApiServer, replicas: Callable[[int], list[MockProvider]]
) -> None:
    one, two, three = replicas(3)
    port = one.port
    api = api_server.slices
    api_server.run(
        lambda: api.put(
            vllm(port, pod(one.host, "zone-a"), pod(two.host, "zone-b"), pod(three.host, "zone-b", ready=False))
        )
    )
    # Another Service's slice in the same namespace is not ours.
    api_server.run(lambda: api.put(endpoint_slice("other-xyz", "other", port, [pod("127.0.0.99", "zone-a")])))
    sidecar = Sidecar(server_loop, discovering_config())
    try:
        names = wait_until(lambda: set(discovered(sidecar)) or None, what="the first list")
        assert names == {f"vllm@{one.host}:{port}", f"vllm@{two.host}:{port}"}
        shown = discovered(sidecar)[f"vllm@{two.host}:{port}"]
        assert shown["zone"] == "zone-b" and shown["locality"] == "elsewhere"
        assert shown["url"] == f"http://{two.host}:{port}/v1"
        assert "sk-vllm" not in httpx.get(sidecar.admin_url + "/status").text

        # Calls go to the zone's own replica, and arrive with the template's model and key.
        for i in range(5):
            assert ask(sidecar, f"call {i}")
        assert one.calls("llama-3") == 5 and two.calls() == 0
        assert one.requests()[-1]["headers"]["authorization"] == "Bearer sk-vllm-key-0123456789"

        # The watch: the third pod becomes ready and joins, without a restart.
        api_server.run(
            lambda: api.put(vllm(port, pod(one.host, "zone-a"), pod(two.host, "zone-b"), pod(three.host, "zone-a")))
        )
        wait_until(lambda: len(discovered(sidecar)) == 3, what="the third pod joined")
        assert [kind for kind, _, _ in api.requests] == ["list", "watch"]

        # A bookmark moves the version on; when the server ends the watch, it resumes from there.
        api_server.run(api.bookmark)
        bookmarked = str(api.version)
        api_server.run(api.end_watches)
        wait_until(lambda: api.requests[-1] == ("watch", bookmarked, 200), what="the watch resumed from the bookmark")

        # A change made while no watch was open, then the history compacted (etcd): resuming
        # from the last version seen gets 410 Gone, so the sidecar lists again and sees it.
        def missed_then_compacted() -> None:
            api.end_watches()
            api.put(
                vllm(port, pod(one.host, "zone-a"), pod(two.host, "zone-b", ready=False), pod(three.host, "zone-a"))
            )
            api.expire()

        api_server.run(missed_then_compacted)
        wait_until(lambda: len(discovered(sidecar)) == 2, what="the missed change, from a re-list")
        assert ("watch", bookmarked, 410) in api.requests
        assert [kind for kind, _, _ in api.requests[-2:]] == ["list", "watch"]

        # A pod that goes away is drained: its call in flight finishes, new calls skip it.
        one.set_behaviour("llama-3", latency_ms=4000)  # still in flight whatever the machine's load
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            prefer = {"x-llm-sidecar-prefer": f"vllm@{one.host}:{port}"}
            slow = pool.submit(ask, sidecar, "in flight while the pod goes", extra_headers=prefer)
            wait_until(lambda: discovered(sidecar)[f"vllm@{one.host}:{port}"]["in_flight"] == 1)
            api_server.run(
                lambda: api.put(
                    vllm(port, pod(one.host, "zone-a", ready=False), pod(two.host, "zone-b"), pod(three.host, "zone-a"))
                )
            )
            draining = f"vllm@{one.host}:{port}"
            wait_until(lambda: discovered(sidecar)[draining]["draining"], what="the pod draining")
            assert discovered(sidecar)[draining]["in_flight"] == 1 and not discovered(sidecar)[draining]["usable"]
            before = one.calls()
            for i in range(4):
                assert ask(sidecar, f"after {i}")
            assert slow.result(10)  # the call in flight finished
        wait_until(lambda: draining not in discovered(sidecar), what="the drained pod gone from /status")
        assert one.calls() == before
        assert three.calls() == 4  # the zone's remaining replica took them all
    finally:
        sidecar.stop()


def test_without_rbac_the_last_addresses_stay_and_the_watch_recovers(
    server_loop: ServerLoop, api_server: ApiServer, replicas: Callable[[int], list[MockProvider]], caplog: Any
) -> None:
    one, two = replicas(2)
    api = api_server.slices
    api_server.run(lambda: api.put(vllm(one.port, pod(one.host, "zone-a"))))
    sidecar = Sidecar(server_loop, discovering_config())
    try:
        wait_until(lambda: len(discovered(sidecar)) == 1)

        def revoke() -> None:
            api.forbidden = True
            api.end_watches()

        api_server.run(revoke)
        wait_until(lambda: ("forbidden", None, 403) in api.requests, what="the re-list refused")
        assert ask(sidecar, "still served")  # the last addresses stay
        errors = [getattr(r, "fields", {}).get("error", "") for r in caplog.records]
        assert any(e.startswith("403 endpointslices.discovery.k8s.io is forbidden") and "RBAC" in e for e in errors)
        api_server.run(lambda: api.put(vllm(one.port, pod(one.host, "zone-a"), pod(two.host, "zone-a"))))
        api_server.run(lambda: setattr(api, "forbidden", False))
        wait_until(lambda: len(discovered(sidecar)) == 2, timeout=30, what="listed again after the backoff")
    finally:
        sidecar.stop()


def test_the_installed_command_discovers_as_in_a_pod(
    tmp_path: Path, api_server: ApiServer, replicas: Callable[[int], list[MockProvider]]
) -> None:
    """``llm-sidecar serve`` as the pod runs it, its environment the kubelet's (the API server's
    address, the service account's directory), discovering and routing to the Service's pods."""
    one, two = replicas(2)
    api = api_server.slices
    api_server.run(lambda: api.put(vllm(one.port, pod(one.host, "zone-b"), pod(two.host, "zone-a"))))
    (tmp_path / "config").mkdir()
    sidecar = SidecarProcess(tmp_path / "config", discovering_config())
    try:
        wait_until(
            lambda: len(discovered(sidecar)) == 2,
            what="the pods discovered",
        )
        assert sidecar.ask("llama")
        assert (one.calls("llama-3"), two.calls("llama-3")) == (0, 1)  # the sidecar's own zone
    finally:
        sidecar.stop()


def test_ready_addresses_follow_the_api_rules() -> None:
    item = endpoint_slice(
        "s",
        "vllm",
        8000,
        [
            pod("10.0.0.1", "a"),
            pod("10.0.0.2", "b", ready=None),  # no conditions: ready, as the API documents
            pod("10.0.0.3", "b", ready=False),  # terminating
            pod("10.0.0.4", "c", for_zones=["a"]),
        ],
    )
    assert ready_addresses(item, "http") == [
        Address("10.0.0.1", 8000, "a"),
        Address("10.0.0.2", 8000, "b"),
        Address("10.0.0.4", 8000, "c", ("a",)),
    ]
    assert ready_addresses(item, 8000) == ready_addresses(item, None) == ready_addresses(item, "http")
    assert ready_addresses(item, "grpc") == []  # no such port on this slice


def test_a_port_the_service_lacks_is_named_in_the_log(
    server_loop: ServerLoop, api_server: ApiServer, caplog: Any
) -> None:
    api_server.run(lambda: api_server.slices.put(vllm(8000, pod("127.0.0.2", "zone-a"))))
    sidecar = Sidecar(server_loop, discovering_config(port="grpc"))
    try:
        wait_until(lambda: [r for r in caplog.records if "no such port" in r.getMessage()], what="the warning")
        (record,) = [r for r in caplog.records if "no such port" in r.getMessage()]
        assert record.fields == {"service": "vllm", "port": "grpc", "ports": ["8000", "http"]}  # type: ignore[attr-defined]
        with pytest.raises(openai.InternalServerError, match="no discovered endpoint ready"):
            ask(sidecar)
    finally:
        sidecar.stop()
