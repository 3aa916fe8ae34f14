"""Passive health (the circuit), active probes, /readyz and /status."""

from __future__ import annotations

import time

import httpx
from aiohttp import web

from proxy.router.circuit import Circuit
from proxy.router.config import CircuitConfig
from proxy.router.cooldown import requested_rest
from tests.router.helpers import config, endpoint
from tests.servers import MockProvider, RefusedPort
from tests.waiting import wait_until

HELLO = [{"role": "user", "content": "hello"}]


def endpoints(sidecar, group: str = "chat") -> dict[str, dict]:
    status = httpx.get(sidecar.admin_url + "/status").json()
    return {e["name"]: e for e in status["groups"][group]["endpoints"]}


def test_circuit_opens_half_opens_and_closes(make_sidecar, mock_provider: MockProvider) -> None:
    mock_provider.set_behaviour("mock-a", status=500)
    sidecar = make_sidecar(
        config(
            mock_provider,
            {
                "chat": {
                    "endpoints": [
                        endpoint(mock_provider, "mock-a", priority=0),
                        endpoint(mock_provider, "mock-b", priority=1),
                    ]
                }
            },
            circuit={"failures": 2, "open_for": 1.0},
        )
    )
    client = sidecar.openai()
    for _ in range(2):
        client.chat.completions.create(model="chat", messages=HELLO)
    assert endpoints(sidecar)["mock-a"]["circuit"] == "open"
    for _ in range(3):  # an open circuit takes no calls; every call is answered by mock-b
        client.chat.completions.create(model="chat", messages=HELLO)
    assert mock_provider.calls("mock-a") == 2
    wait_until(lambda: endpoints(sidecar)["mock-a"]["circuit"] == "half_open", what="half-open after open_for")
    # The trial fails: open again, for another open_for.
    client.chat.completions.create(model="chat", messages=HELLO)
    assert (mock_provider.calls("mock-a"), endpoints(sidecar)["mock-a"]["circuit"]) == (3, "open")
    mock_provider.set_behaviour("mock-a")
    wait_until(lambda: endpoints(sidecar)["mock-a"]["circuit"] == "half_open", what="half-open again")
    client.chat.completions.create(model="chat", messages=HELLO)
    state = endpoints(sidecar)["mock-a"]
    assert (mock_provider.calls("mock-a"), state["circuit"], state["circuit_times_opened"]) == (4, "closed", 2)


def test_no_endpoint_503_says_when_to_retry(make_sidecar, mock_provider: MockProvider) -> None:
    # The SDKs retry a 503 at once unless told to wait; the open circuit will refuse them until it half-opens.
    mock_provider.set_behaviour("mock-a", status=500)
    open_for = 30.0
    sidecar = make_sidecar(
        config(
            mock_provider,
            {"chat": {"endpoints": [endpoint(mock_provider, "mock-a")]}},
            circuit={"failures": 2, "open_for": open_for},
        )
    )
    body = {"model": "chat", "messages": HELLO}
    wait_until(
        lambda: httpx.post(sidecar.openai_base + "/chat/completions", json=body).status_code == 503,
        what="the circuit to open",
    )
    answer = httpx.post(sidecar.openai_base + "/chat/completions", json=body)
    assert answer.status_code == 503, answer.text
    assert 1 <= int(answer.headers["retry-after"]) <= open_for
    assert endpoints(sidecar)["mock-a"]["circuit"] == "open"


def test_circuit_error_rate_and_single_trial() -> None:
    circuit = Circuit(CircuitConfig(failures=100, error_rate=0.5, min_calls=4, window=10, open_for=5))
    assert circuit.success(0.0) is None and circuit.failure(0.1) is None and circuit.success(0.2) is None
    assert circuit.failure(0.3) == "open"  # 2 of 4 failed
    assert not circuit.allows(4.9)
    assert circuit.allows(5.3) and circuit.begin(5.3)
    assert not circuit.allows(5.4)  # one trial at a time
    circuit.abandon()
    assert circuit.allows(5.5)


def test_requested_rest_headers() -> None:
    assert requested_rest({"retry-after": "2"}, 0) == 2
    assert requested_rest({"retry-after-ms": "1500"}, 0) == 1.5
    assert requested_rest({"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "20ms"}, 0) == 360
    assert requested_rest({"anthropic-ratelimit-requests-reset": "1970-01-01T00:00:30Z"}, 10) == 20
    assert requested_rest({"retry-after": "soon"}, 0) is None


def test_active_probes_mark_a_dead_endpoint_without_calls(
    make_sidecar, mock_provider: MockProvider, server_loop, refused_port: RefusedPort
) -> None:
    dead = refused_port.url
    sidecar = make_sidecar(
        config(
            mock_provider,
            {
                "chat": {"endpoints": [endpoint(dead, "later", model="mock-a"), endpoint(mock_provider, "mock-b")]},
                "solo": {"endpoints": [endpoint(dead, "later", model="mock-a")]},
            },
            health={"enabled": True, "interval": 0.1, "timeout": 0.5, "unhealthy_after": 2},
        )
    )
    deadline = time.monotonic() + 5
    # Each group's endpoint has its own probe: wait for both to have found the port dead.
    while any(endpoints(sidecar, group)["later"]["health"] != "unhealthy" for group in ("chat", "solo")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Upstream health is in /status (readiness is the sidecar's own: tests/test_readiness.py).
    groups = httpx.get(sidecar.admin_url + "/status").json()["groups"]
    assert {name: group["ready"] for name, group in groups.items()} == {"chat": True, "solo": False}
    # Its only endpoint unhealthy, "solo" answers 503, to be retried once the next probe is due (0.1 s: 1 s).
    answer = httpx.post(sidecar.openai_base + "/chat/completions", json={"model": "solo", "messages": HELLO})
    assert (answer.status_code, answer.headers.get("retry-after")) == (503, "1"), answer.text
    # Calls skip it: the probes found it dead, not a call.
    assert sidecar.openai().chat.completions.create(model="chat", messages=HELLO).choices[0].message.content
    refused_port.release()
    revived = MockProvider(server_loop, refused_port.port)
    try:
        deadline = time.monotonic() + 5
        while any(endpoints(sidecar, group)["later"]["health"] != "healthy" for group in ("chat", "solo")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(sidecar.admin_url + "/status").json()["groups"]["solo"]["ready"] is True
        assert revived.calls() == 0  # probes GET the models list; never a completion
    finally:
        revived.stop()


def test_status_shows_slots_and_never_a_key(make_sidecar, mock_provider: MockProvider) -> None:
    sidecar = make_sidecar(
        config(mock_provider, {"chat": {"endpoints": [endpoint(mock_provider, "mock-a", max_concurrent=7)]}})
    )
    sidecar.openai().chat.completions.create(model="chat", messages=HELLO)
    text = httpx.get(sidecar.admin_url + "/status").text
    state = endpoints(sidecar)["mock-a"]
    assert (state["slots_limit"], state["in_flight"], state["attempts"], state["health"]) == (7, 0, 1, "unknown")
    assert state["ewma_ttfb_ms"] is not None
    assert "sk-test" not in text


def test_a_probe_reads_only_the_status_not_an_endless_body(make_sidecar, mock_provider: MockProvider, server_loop):
    """Only the status counts: a probe URL serving an endless 200 must neither be buffered nor hold the probe."""
    sent: list[int] = []
    ended: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"x" * 65536
        sent.append(0)
        try:
            while True:
                await response.write(chunk)
                sent[-1] += len(chunk)
        except ConnectionError:  # the probe went away: its connection closed
            ended.append(sent[-1])
        return response

    app = web.Application()
    app.router.add_get("/models", endless)
    with server_loop.serving(app) as url:
        sidecar = make_sidecar(
            config(
                mock_provider,
                {"chat": {"endpoints": [endpoint(mock_provider, "mock-a", probe_url=url + "/models")]}},
                # A timeout no test waits for: reading the body until it fired was the bug.
                health={"enabled": True, "interval": 600, "timeout": 300, "healthy_after": 1},
            )
        )
        wait_until(lambda: endpoints(sidecar)["mock-a"]["health"] == "healthy", timeout=10, what="a healthy probe")
        wait_until(lambda: ended, timeout=10, what="the probe's connection closed")
    # What the kernel's socket buffers took, not the endless body (gigabytes a second on loopback).
    assert len(sent) == 1 and ended[0] < 64 * 1024 * 1024
